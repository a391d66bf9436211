"""Operator operations the CLI commands call: each takes explicit arguments and knows nothing of typer."""
from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from migrator.config import Config, config_from_snapshot
from migrator.dataplane.source import source_hash
from migrator.errors import ConfigChanged, OptionError, SourceChanged, TransitionNotAllowed
from migrator.control.phases import FINAL, DbApplier, ModeApplier, Phase, label, next_step, slice_count, transition
from migrator.control.policy import what_if as replay
from migrator.store import api
from migrator.store.models import Host, Lease, Migration, Transition, Verdict, Window


def default_fingerprint() -> str:
    """The data plane's event schema fingerprint (migrator.dataplane.schema), 'unknown' if it cannot be computed."""
    try:
        from migrator.dataplane.schema import fingerprint
        return fingerprint()
    except Exception:  # the data plane may be absent on a controller-only host
        return "unknown"


def init_migration(session: Session, config: Config, *, name: str = "", now: float | None = None) -> tuple[Migration, bool]:
    """Record the plan as a PLANNED migration with its config hash and, for an operator's bcc
    program, its source hash; (migration, created). The same config and program again is a no-op."""
    digest = source_hash(config)
    active = api.active_migration(session)
    if active is not None:
        if active.config_hash != config.hash:
            raise ConfigChanged(active.id, config.path, config.hash, active.config_hash, phase=active.phase)
        if active.source_hash != digest:
            raise SourceChanged(active.id, config.source.file or config.path, digest, active.source_hash,
                                phase=active.phase)
        return active, False
    return api.create_migration(session, config, name=name, now=now, source_hash=digest), True


def snapshot_config(m: Migration) -> Config:
    """The config a migration was initialised with (the controller never re-reads the file)."""
    return config_from_snapshot(m.config_json, "", f"migration {m.id} config snapshot")


def check_same_config(m: Migration, config: Config) -> None:
    """Refuse to drive a migration with a canary.toml, or an operator's program, that changed since `init`."""
    if m.config_hash != config.hash:
        raise ConfigChanged(m.id, config.path, config.hash, m.config_hash)
    check_same_source(m, config)


def check_same_source(m: Migration, config: Config) -> None:
    """Refuse an operator's program (C file, cflags, migrator.h) that changed since `init`."""
    digest = source_hash(config)
    if digest != m.source_hash:
        raise SourceChanged(m.id, config.source.file or config.path, digest, m.source_hash)


MOVES = ("advance", "pause", "resume", "rollback", "abort", "undo")
# Moves that stop a migration: a changed plan never blocks them (stopping must always be possible).
STOPS = ("rollback", "abort", "undo")


def check_plan(m: Migration, config: Config, op: str) -> str | None:
    """A manual move checks canary.toml and the operator's program against the migration's recorded
    plan, as `start` does. Changed: advance, pause and resume are refused (ConfigChanged,
    SourceChanged); rollback and abort go ahead and this returns the warning to show. None when
    the plan is unchanged or the migration is final (its own refusal says more)."""
    if op not in MOVES:
        raise OptionError("move", op, "is not a manual move", f"use one of {', '.join(MOVES)}")
    if m.phase in FINAL:
        return None
    try:
        check_same_config(m, config)
    except (ConfigChanged, SourceChanged) as exc:
        if op not in STOPS:
            raise
        return f"{exc}; {op} goes ahead anyway (stopping is always allowed)"
    return None


def manual_move(session_factory: sessionmaker[Session], migration_id: int, op: str, *, reason: str = "",
                applier: ModeApplier | None = None, schema_fingerprint: str | None = None) -> dict:
    """advance | pause | resume | rollback | abort | undo, by an operator; returns the transition as a dict.

    undo is the only move out of COMPLETE: COMPLETE -> ROLLED_BACK, every host back on PERF (the
    channel header still writes perf after COMPLETE), one transition row like any other move.
    `rollback` from COMPLETE is refused and names `undo`.

    An advance out of PLANNED freezes `schema_fingerprint` as `start` does (default: the data
    plane's, default_fingerprint())."""
    if op not in MOVES:
        raise OptionError("move", op, "is not a manual move", f"use one of {', '.join(MOVES)}")
    with session_factory() as s:
        m = api.get_migration(s, migration_id)
        slices = slice_count(s, m.id)
        cfg = snapshot_config(m)
        phase, slice_ = m.phase, m.slice
        paused_phase, paused_slice = m.paused_phase, m.paused_slice
    kw: dict = {}
    if op == "advance":
        target, to_slice = next_step(phase, slice_, slices)
        if phase in ("DUAL_INSTRUMENT", "SHADOW", "CANARY"):
            kw["min_clean"] = cfg.phase_rule(phase).min_clean_windows
        if phase == Phase.PLANNED:
            fp = schema_fingerprint or default_fingerprint()
            kw.update(schema_fingerprint=fp, evidence={"schema_fingerprint": fp})
    elif op == "pause":
        target, to_slice = Phase.PAUSED, 0
    elif op == "resume":
        if phase != Phase.PAUSED:
            raise TransitionNotAllowed(label(phase, slice_, slices), "resume", f"{phase} is not PAUSED")
        target, to_slice = Phase(paused_phase), paused_slice or 0
    elif op == "rollback":
        if phase == Phase.COMPLETE:
            raise TransitionNotAllowed(label(phase, slice_, slices), str(Phase.ROLLED_BACK),
                                       "COMPLETE is final; `migrator undo` puts every host back on PERF")
        target, to_slice = Phase.ROLLED_BACK, 0
    elif op == "undo":
        target, to_slice = Phase.ROLLED_BACK, 0
        kw["undo"] = True
    else:  # abort
        target, to_slice = Phase.ABORTED, 0
    t = transition(session_factory, migration_id, target, to_slice=to_slice, actor="manual",
                   reason=reason or f"operator {op}", applier=applier or DbApplier(), **kw)
    with session_factory() as s:
        d = api.transition_dict(s.get(type(t), t.id))
        d["label"] = f"{label(d['from'], d['from_slice'], slices)} -> {label(d['to'], d['to_slice'], slices)}"
        return d


def status_report(session: Session, migration_id: int | None = None, now: float | None = None) -> dict:
    """Phase, slice, last judged window, streak k/N, clean windows, hosts, lease, last window per channel."""
    m = api.get_migration(session, migration_id)
    cfg = snapshot_config(m)
    slices = slice_count(session, m.id)
    eff = m.paused_phase if m.phase == "PAUSED" else m.phase
    rule = cfg.phase_rule(eff) if eff in ("DUAL_INSTRUMENT", "SHADOW", "CANARY") else None
    last = {}
    for ch in ("perf", "ring"):
        wid = session.scalar(select(func.max(Window.id)).where(Window.migration_id == m.id, Window.channel == ch))
        if wid is not None:
            w = session.get(Window, wid)
            last[ch] = {"id": w.id, "host": w.host, "index": w.index, "mode": w.mode, "attempts": w.attempts,
                        "loss_rate": w.loss_rate, "lag_p99_ms": w.lag_p99_ms, "producer_ns": w.producer_ns,
                        "peak_bytes": w.peak_bytes, "end": w.end}
    gv = session.scalars(select(Verdict).where(Verdict.migration_id == m.id, Verdict.scope == "slice")
                         .order_by(Verdict.id.desc()).limit(1)).first()
    lease = session.get(Lease, m.id)
    ts = time.time() if now is None else now
    from migrator.control.stall import stall_of

    stall = stall_of(session, m, cfg, ts, label(m.phase, m.slice, slices))
    from migrator.control.story import first_index, streak_story, window_name

    # The one streak every view shows (control/story.py): a rollback's once rolled back, else the controller's.
    story = streak_story(session, m, cfg.rollback_after)
    pending = None
    if m.pending_transition_id:
        t = api.transition_dict(session.get(Transition, m.pending_transition_id))
        pending = {"id": t["id"], "to": t["to"], "to_slice": t["to_slice"]}
    return {
        "migration_id": m.id, "name": m.name, "phase": m.phase, "slice": m.slice, "slices": slices,
        "label": label(m.phase, m.slice, slices), "paused_phase": m.paused_phase, "pause": pause_of(session, m),
        "phase_since": m.phase_since, "config_hash": m.config_hash, "schema_fingerprint": m.schema_fingerprint,
        "reported_fingerprint": m.reported_fingerprint, "window": m.judged_index,
        "window_name": window_name(m.judged_index, first_index(session, m.id)) if m.judged_index >= 0 else "-",
        "streak": story["streak"], "streak_by": story["by"], "streak_window_ids": story["window_ids"],
        "streak_windows": story["windows"], "rollback_after": cfg.rollback_after, "no_data": cfg.no_data,
        "clean_windows": m.clean_windows, "min_clean_windows": rule.min_clean_windows if rule else None,
        "manual_gate": rule.manual_gate if rule else None, "pending": pending,
        "last_verdict": ({"index": gv.index, "name": window_name(gv.index, first_index(session, m.id)),
                          "verdict": gv.verdict, "rule": gv.rule} if gv else None),
        "last_window": last,
        "lease": ({"holder": lease.holder, "expires_at": lease.expires_at, "live": lease.expires_at > ts}
                  if lease else None),
        "hosts": api.hosts(session, m.id),
        "stall": stall.to_dict() if stall else None,  # why it cannot advance now (control/stall.py)
    }


def pause_of(session: Session, m: Migration) -> dict | None:
    """While PAUSED: when the pause began (its transition's confirmation, not the phase's start), by
    whom and why; None otherwise."""
    if m.phase != Phase.PAUSED:
        return None
    t = session.scalars(select(Transition).where(Transition.migration_id == m.id, Transition.to_phase == Phase.PAUSED,
                                                 Transition.status == "confirmed")
                        .order_by(Transition.id.desc()).limit(1)).first()
    if t is None:
        return None
    return {"transition_id": t.id, "at": t.confirmed_at or t.created_at, "actor": t.actor, "reason": t.reason}


def what_if_report(session: Session, migration_id: int | None = None, **overrides) -> dict:
    """Replay a migration's stored windows under other thresholds / rollback_after (read-only)."""
    m = api.get_migration(session, migration_id)
    hosts = [(h, s) for h, s in session.execute(select(Host.name, Host.slice).where(Host.migration_id == m.id)
                                                .order_by(Host.position))]
    from migrator.control.story import describe, first_index, is_automatic_rollback, named_windows

    # Automatic rollbacks: the controller's streak (actor auto) and a host's own breaker (actor host X).
    actual = [t for t in api.history(session, m.id) if is_automatic_rollback(t)]
    report = replay(snapshot_config(m), hosts, api.iter_window_rows(session, m.id), **overrides)
    report["migration_id"] = m.id
    report["slices"] = slice_count(session, m.id)
    # After `migrator prune` the replay sees only the windows kept (the deciding ones); what the
    # controller decided on the rest is in the rollups: their host verdicts per phase position.
    from migrator.store.retention import rollups

    rolled = rollups(session, m.id)
    report["rolled_up"] = ({"windows": sum(r["windows"] for r in rolled),
                            "recorded_verdicts": _recorded_verdicts(rolled)} if rolled else None)
    first = first_index(session, m.id)
    for f in report["firings"]:
        f["windows"] = named_windows(session, m.id, f["window_ids"], first)
        f["describe"] = describe(f["windows"])
    report["actual_rollback"] = None
    if actual:
        ws = named_windows(session, m.id, actual[0]["window_ids"], first)
        report["actual_rollback"] = {"transition_id": actual[0]["id"], "by": actual[0]["actor"],
                                     "window_ids": actual[0]["window_ids"], "windows": ws, "describe": describe(ws)}
    return report


def _recorded_verdicts(rolled: list[dict]) -> list[dict]:
    """Per phase position of the rollups (in order), the host verdicts the pruned windows got."""
    out: dict[tuple[str, int], dict] = {}
    for r in rolled:
        d = out.setdefault((r["phase"], r["slice"]), {"phase": r["phase"], "slice": r["slice"], "windows": 0,
                                                      "pass": 0, "breach": 0, "no-data": 0})
        d["windows"] += r["windows"]
        d["pass"] += r["passes"]
        d["breach"] += r["breaches"]
        d["no-data"] += r["no_data"]
    return list(out.values())


__all__ = ["init_migration", "manual_move", "check_plan", "status_report", "what_if_report", "default_fingerprint",
           "check_same_config", "check_same_source", "snapshot_config"]
