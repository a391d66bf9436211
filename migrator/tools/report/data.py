"""The report's data: one migration, its hosts, transitions, windows and verdicts, read in one
read-only transaction."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator.control.moves import snapshot_config
from migrator.control.phases import label, slice_count
from migrator.control.story import window_name
from migrator.errors import StoreError
from migrator.store import api
from migrator.store.models import Migration, Verdict
from migrator.store.retention import rollups


@dataclass
class ReportData:
    """Everything the page shows, read in one read-only transaction."""

    migration: dict
    hosts: list[dict]
    transitions: list[dict]
    windows: list[dict]
    streak: list[dict]  # slice-scope verdicts: the group verdict and streak after each judged index
    deciding: dict[int, dict] = field(default_factory=dict)  # window id -> window, for transitions' window_ids
    generated_at: float = 0.0
    rollups: list[dict] = field(default_factory=list)  # what `migrator prune` kept of deleted windows
    advice: dict | None = None  # `migrator advise` (control/advise.py) on the same windows
    story: dict | None = None  # the streak every view shows, windows named (control/story.py)
    first_index: int | None = None  # the migration's first window index: windows are named #n from it
    # per host: what the operator's consumer acted on, by channel, and the drops the kernel counted
    # (control/story.consumer_account; the packets sent are known to `lab run` only)
    consumer: dict[str, dict] = field(default_factory=dict)

    @property
    def t0(self) -> float:
        """Time zero of every chart: the start (first transition), else the first window."""
        if self.transitions:
            t = self.transitions[0]
            return t["confirmed_at"] or t["at"]
        return min(w["start"] for w in self.windows)

    @property
    def rollback(self) -> dict | None:
        """The transition into ROLLED_BACK, if the migration ended that way."""
        return next((t for t in self.transitions if t["to"] == "ROLLED_BACK"), None)


def _migration(session: Session, migration_id: int | None) -> Migration:
    ids = session.scalars(select(Migration.id).order_by(Migration.id)).all()
    if not ids:
        raise StoreError("no migration in this database (fix: run `migrator init` and `migrator start` first, "
                         "or pass -c with the canary.toml of the run to report)")
    if migration_id is None:
        return session.get(Migration, ids[-1])
    m = session.get(Migration, migration_id)
    if m is None:
        shown = ", ".join(str(i) for i in ids[-10:]) + (" ..." if len(ids) > 10 else "")
        raise StoreError(f"no migration {migration_id} in this database (fix: pass -m with one of {shown}, "
                         "or leave -m out for the newest)")
    return m


def _cpu_per_event_us(cpu_s: float | None, delivered: int | None) -> float | None:
    return cpu_s / delivered * 1e6 if cpu_s and delivered else None


def collect(session: Session, migration_id: int | None = None) -> ReportData:
    """Read one migration (default: the newest) for the report; StoreError when it is missing or has no windows."""
    m = _migration(session, migration_id)
    cfg = snapshot_config(m)
    slices = slice_count(session, m.id)
    host_verdicts = {wid: (v, rule) for wid, v, rule in session.execute(
        select(Verdict.window_id, Verdict.verdict, Verdict.rule)
        .where(Verdict.migration_id == m.id, Verdict.scope == "host", Verdict.window_id.is_not(None)))}
    windows = []
    for w in api.iter_window_rows(session, m.id):
        v, rule = host_verdicts.get(w.id, (None, None))
        windows.append({"id": w.id, "phase": w.phase, "slice": w.slice, "host": w.host, "channel": w.channel,
                        "index": w.index, "start": w.start, "end": w.end, "mode": w.mode, "attempts": w.attempts,
                        "delivered": w.delivered, "lost": w.lost, "dropped": w.dropped_full + w.dropped_other,
                        "filled_from_ring": w.filled_from_ring, "producer_ns": w.producer_ns,
                        "peak_bytes": w.peak_bytes,
                        "loss_rate": w.loss_rate, "lag_p99_ms": w.lag_p99_ms, "consumer_cpu_s": w.consumer_cpu_s,
                        "cpu_per_event_us": _cpu_per_event_us(w.consumer_cpu_s, w.delivered),
                        "parse_errors": w.parse_errors, "payload_mismatches": w.payload_mismatches,
                        "residual": w.residual, "verdict": v, "rule": rule})
    from migrator.control.story import first_index

    first = first_index(session, m.id)
    rolled = rollups(session, m.id)
    if rolled:  # pruned: one summary row per host, channel and phase position stands for its windows
        windows = sorted(windows + [_rollup_window(r, first) for r in rolled], key=lambda w: (w["start"], w["index"]))
    if not windows:
        raise StoreError(f"migration {m.id} ({m.phase}) has no windows yet, so there is nothing to report "
                         "(fix: run `migrator start` and one `migrator agent` per host until windows are "
                         "recorded, or pass -m with a migration that ran)")
    transitions = api.history(session, m.id)
    for t in transitions:
        t["from_label"] = label(t["from"], t["from_slice"], slices)
        t["to_label"] = label(t["to"], t["to_slice"], slices)
    by_id = {w["id"]: w for w in windows}
    deciding = {i: by_id[i] for t in transitions for i in t["window_ids"] if i in by_id}
    streak = [{"index": v.index, "phase": v.phase, "slice": v.slice, "verdict": v.verdict, "rule": v.rule,
               "streak": v.streak, "window_id": v.window_id}
              for v in session.scalars(select(Verdict).where(Verdict.migration_id == m.id, Verdict.scope == "slice")
                                       .order_by(Verdict.id))]
    th = cfg.thresholds
    mig = {"id": m.id, "name": m.name, "phase": m.phase, "slice": m.slice, "label": label(m.phase, m.slice, slices),
           "created_at": m.created_at, "config_path": m.config_path, "config_hash": m.config_hash,
           "schema_fingerprint": m.schema_fingerprint, "slices": slices, "slice_specs": list(cfg.slices),
           "rollback_after": cfg.rollback_after, "no_data": cfg.no_data, "window_seconds": cfg.window_seconds,
           "thresholds": {"max_loss_rate": th.max_loss_rate, "max_lag_p99_ms": th.max_lag_p99_ms,
                          "max_parse_errors": th.max_parse_errors, "max_payload_mismatch": th.max_payload_mismatch,
                          "min_events": th.min_events}}
    from migrator.control.advise import advise

    from migrator.control.story import consumer_account, streak_story, transition_windows

    transition_windows(session, m.id, transitions)
    hosts = api.hosts(session, m.id)
    return ReportData(mig, hosts, transitions, windows, streak, deciding, time.time(), rolled,
                      advise(session, m.id).to_dict(), streak_story(session, m, cfg.rollback_after), first,
                      consumer_account(session, m.id, [h["name"] for h in hosts]))


def _rollup_window(r: dict, first: int | None) -> dict:
    """A rollup as a window of the report: its span, summed counts, worst lag p99, and as verdict the
    worst of its host verdicts (id negative: no window row has it)."""
    dropped = r["dropped_full"] + r["dropped_other"]
    verdict = "breach" if r["breaches"] else ("no-data" if r["no_data"] else ("pass" if r["passes"] else None))
    return {"id": -r["id"], "phase": r["phase"], "slice": r["slice"], "host": r["host"], "channel": r["channel"],
            "index": r["last_index"], "start": r["first_start"], "end": r["last_end"], "mode": "rollup",
            "attempts": r["attempts"], "delivered": r["delivered"], "lost": r["lost"], "dropped": dropped,
            "filled_from_ring": r["filled_from_ring"],
            "loss_rate": (dropped + r["lost"]) / r["attempts"] if r["attempts"] else 0.0,
            "lag_p99_ms": r["lag_p99_max_ms"], "consumer_cpu_s": r["consumer_cpu_s"],
            "cpu_per_event_us": _cpu_per_event_us(r["consumer_cpu_s"], r["delivered"]),
            "parse_errors": r["parse_errors"], "payload_mismatches": r["payload_mismatches"],
            "residual": r["residual"], "verdict": verdict,
            "rule": (f"rollup of {r['windows']} windows {window_name(r['first_index'], first)}.."
                     f"{window_name(r['last_index'], first)}: {r['passes']} pass, "
                     f"{r['breaches']} breach, {r['no_data']} no-data"),
            "rollup": r["windows"]}


# ---- charts ----------------------------------------------------------------------------------
