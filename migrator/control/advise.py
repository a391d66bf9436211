"""`migrator advise`: what a migration's stored windows say about the ring's size, its wakeup policy,
and whether to move off perf at all (issue 16, item 4). Read-only.

Three answers, each naming the windows it rests on:

- ring size: the smallest power of two (at least a page) that holds the worst burst seen (the highest
  ring `peak_bytes` of a DUAL_INSTRUMENT, SHADOW or CANARY window) twice over; the reservation
  failures the configured size caused that it would have avoided; and the memory of each choice
  against what perf pins (pages x CPUs x page size, plus a metadata page per CPU).
- wakeup policy: the one with the lowest producer cost (what the emit costs the traced code) whose
  lag stays within the budget (buffers.max_delay_ms + thresholds.max_lag_p99_ms), from the ring
  windows' `producer_ns` under the configured policy, scaled by the ratios measured on this machine
  (WAKEUP_EMIT_NS) for the others.
- go / no-go per host ("keep perf unless a clear KPI upside justifies it"): on the same events (the
  DUAL windows where both channels carried them), what the ring changed: loss, lag, ordering
  inversions, memory pinned, consumer CPU per event and producer cost. Go when the ring is no worse
  on loss and lag and clearly better on at least one of the others.

The core (`advise`) takes a session and a migration id and returns an `Advice`; the CLI
(migrator/cli/advise.py), the HTML report and `plan`'s ring-size warning all call it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator.config import MAX_RING_BYTES, Config
from migrator.shared.vocab import PAGE_SIZE
from migrator.control.moves import snapshot_config
from migrator.control.story import first_index, window_name
from migrator.store import api
from migrator.store.models import Migration, Window

MEASURED_PHASES = ("DUAL_INSTRUMENT", "SHADOW", "CANARY")
HEADROOM = 2  # the recommended ring holds the worst burst seen twice over

# Ring emit cost per event in the traced context, by wakeup policy: measured on this machine at
# 2k ev/s (synthetic probe, `migrator bench producer`). adaptive pays an irq_work (and in a VM an
# IPI) for nearly every record at low rates; no_wakeup and batched almost never wake the reader;
# force_wakeup wakes it for every record. Only the ratios between them are used: the windows'
# own producer_ns under the configured policy sets the scale.
WAKEUP_EMIT_NS = {"adaptive": 1500.0, "no_wakeup": 65.0, "batched": 65.0, "force_wakeup": 7000.0}
PERF_EMIT_NS = (600.0, 900.0)  # perf's emit per event, same runs: for context only
# The consumer's CPU with no events, % of a core, same runs: no_wakeup's reader polls on its
# max_delay_ms clock; batched's sleeps on its epoll with the sleeping-reader protocol, as adaptive's.
# force_wakeup: not measured idle (with no record it is never woken, so it sleeps as adaptive).
IDLE_CONSUMER_PCT = {"adaptive": 0.22, "no_wakeup": 1.3, "batched": 0.22, "force_wakeup": None}
# The policies whose reader may hold a record for one batch clock (max_delay_ms) before it drains:
# no wakeup brings it forward. adaptive and force_wakeup wake the reader as records arrive.
CLOCKED_WAKEUPS = ("no_wakeup", "batched")

# A window "reached" the configured ring when its peak came within this of the size: a reservation
# fails as soon as the free space is less than the record plus its 8-byte header, so a full ring
# peaks a record short of its size. One page (or 1/16 of a ring smaller than 64 KiB).
def full_slack(ring_bytes: int) -> int:
    """How close to `ring_bytes` a window's peak must come to count as the ring having been full."""
    return min(PAGE_SIZE, ring_bytes // 16)


# Go / no-go: a clear upside is at least 10 % better (producer cost, consumer CPU per event, memory)
# or fewer ordering inversions; the ring's lag p99 is "no worse" within 10 % of perf's (two consumers
# reading the same events differ by that much run to run); loss is compared exactly.
CLEAR_GAIN = 0.9
LAG_SLACK = 1.10


@dataclass
class RingAdvice:
    """The ring size the windows call for, the drops the configured size caused, and memory."""

    configured_bytes: int
    recommended_bytes: int | None  # None: no ring window measured its peak
    worst_peak_bytes: int | None
    evidence: list[dict]  # the window(s) of the worst peak: id, host, index, phase, peak_bytes
    saturated: bool  # the worst peak reached the configured size: the burst may have been bigger
    capped: bool  # 2 x peak exceeds the largest ring canary.toml accepts (MAX_RING_BYTES)
    drops_caused: int  # ring dropped_full in windows whose peak reached the configured size
    drops_avoided: int  # of them, what the recommended size would have avoided
    drop_windows: list[dict]  # those windows: id, host, index, phase, peak_bytes, dropped_full
    drops_not_size: int  # ring dropped_full in windows that never reached the configured size
    cpus: int
    cpus_from: str  # "windows" | "this machine (os.cpu_count())" | "given"
    perf_pages: int
    memory: dict  # bytes: configured_ring, recommended_ring, perf (pages x CPUs x page + metadata)
    ring_windows: int  # ring windows with a measured peak


@dataclass
class WakeupAdvice:
    """The wakeup policy that costs the traced code least within the lag budget."""

    configured: str
    recommended: str | None
    budget_ms: float  # buffers.max_delay_ms + thresholds.max_lag_p99_ms
    observed_ns: float | None  # ring producer_ns under the configured policy, attempts-weighted
    observed_lag_p99_ms: float | None  # the worst ring lag p99 of the same windows
    perf_ns: float | None  # perf's producer_ns on the same migration, attempts-weighted (context)
    saving_ns: float | None  # observed_ns - the recommended policy's predicted cost
    policies: list[dict]  # per policy: predicted_ns, predicted_lag_p99_ms, fits, idle_consumer_pct, basis
    evidence: list[dict]  # the costliest ring windows: id, host, index, phase, producer_ns, lag_p99_ms
    evidence_windows: int  # how many ring windows measured producer_ns


@dataclass
class HostSummary:
    """Per host, on the same events (DUAL windows with both channels): what the ring changed."""

    host: str
    verdict: str  # go | no-go | no-data
    reasons: list[str]
    upsides: list[str]
    windows: int  # paired window indexes
    window_ids: list[int]
    ring: dict
    perf: dict


@dataclass
class Advice:
    """Everything `migrator advise` says about one migration."""

    migration_id: int
    phase: str
    config_path: str
    source_hash: str | None
    ring: RingAdvice
    wakeup: WakeupAdvice
    hosts: list[HostSummary]
    go: str  # go | no-go | no-data, over every host with data
    summary: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The advice as plain JSON-able data (what --json prints)."""
        return asdict(self)


# ---- arithmetic ----------------------------------------------------------------------------------

def ring_size_for(peak_bytes: int, headroom: int = HEADROOM) -> int:
    """The smallest power of two, at least a page, that holds `peak_bytes` x `headroom`."""
    need = max(PAGE_SIZE, int(peak_bytes) * headroom)
    return 1 << (need - 1).bit_length()


def perf_bytes(perf_pages: int, cpus: int) -> int:
    """What perf pins: perf_pages data pages per CPU plus its metadata page, on every CPU."""
    return (perf_pages + 1) * cpus * PAGE_SIZE


def _mib(n: int | float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n / 1024:.0f} KiB"


def _ref(w, **more) -> dict:
    return {"id": w.id, "host": w.host, "index": w.index, "phase": w.phase, **more}


def _weighted(ws, attr: str) -> float | None:
    pairs = [(getattr(w, attr), w.attempts) for w in ws if getattr(w, attr) is not None and w.attempts > 0]
    total = sum(a for _, a in pairs)
    return sum(v * a for v, a in pairs) / total if total else None


def _cpus_of(ws) -> int | None:
    """The CPU count the windows report (extra["cpus"]), the largest if they differ; None if none does."""
    seen = []
    for w in ws:
        try:
            n = json.loads(w.extra or "{}").get("cpus")
        except (ValueError, AttributeError):
            continue
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            seen.append(n)
    return max(seen) if seen else None


# ---- the three answers ---------------------------------------------------------------------------

def ring_advice(cfg: Config, windows: list, cpus: int | None = None) -> RingAdvice:
    """Ring size, the drops the configured size caused, memory of each choice (see the module doc)."""
    size = cfg.buffers.ring_bytes
    if cpus is not None:
        n_cpus, cpus_from = cpus, "given"
    else:
        from_windows = _cpus_of(windows)
        n_cpus, cpus_from = ((from_windows, "windows") if from_windows
                             else (os.cpu_count() or 1, "this machine (os.cpu_count())"))
    ring = [w for w in windows if w.channel == "ring" and w.peak_bytes is not None]
    worst = max((w.peak_bytes for w in ring), default=None)
    rec = capped = None
    if worst is not None:
        rec = ring_size_for(worst)
        capped = rec > MAX_RING_BYTES
        rec = min(rec, MAX_RING_BYTES)
    slack = full_slack(size)
    full = [w for w in ring if w.peak_bytes + slack >= size]
    full_ids = {w.id for w in full}
    caused = sum(w.dropped_full for w in full)
    not_size = sum(w.dropped_full for w in windows if w.channel == "ring" and w.id not in full_ids)
    avoided = caused if rec is not None and rec > size else 0
    return RingAdvice(
        configured_bytes=size, recommended_bytes=rec, worst_peak_bytes=worst,
        evidence=[_ref(w, peak_bytes=w.peak_bytes) for w in ring if w.peak_bytes == worst],
        saturated=bool(worst is not None and worst + slack >= size), capped=bool(capped),
        drops_caused=caused, drops_avoided=avoided,
        drop_windows=[_ref(w, peak_bytes=w.peak_bytes, dropped_full=w.dropped_full) for w in full if w.dropped_full],
        drops_not_size=not_size, cpus=n_cpus, cpus_from=cpus_from, perf_pages=cfg.buffers.perf_pages,
        memory={"configured_ring": size, "recommended_ring": rec, "perf": perf_bytes(cfg.buffers.perf_pages, n_cpus)},
        ring_windows=len(ring))


def wakeup_advice(cfg: Config, windows: list, policies: tuple[str, ...] | None = None) -> WakeupAdvice:
    """The policy with the lowest predicted producer cost whose predicted lag fits the budget."""
    from migrator.config import WAKEUPS

    conf = cfg.buffers.wakeup
    names = [p for p in WAKEUP_EMIT_NS if p in (policies or WAKEUPS)]
    if conf not in names:
        names.insert(0, conf)
    budget = cfg.buffers.max_delay_ms + cfg.thresholds.max_lag_p99_ms
    ev = [w for w in windows if w.channel == "ring" and w.producer_ns is not None and w.attempts > 0]
    observed = _weighted(ev, "producer_ns")
    lags = [w.lag_p99_ms for w in ev if w.lag_p99_ms is not None]
    obs_lag = max(lags) if lags else None
    perf_ns = _weighted([w for w in windows if w.channel == "perf"], "producer_ns")
    base = WAKEUP_EMIT_NS.get(conf)
    delay = cfg.buffers.max_delay_ms

    def extra_delay(p: str) -> float:
        return delay if p in CLOCKED_WAKEUPS else 0.0

    rows = []
    for p in names:
        if observed is not None and p == conf:
            ns, basis = observed, "measured in the windows"
        elif observed is not None and base and p in WAKEUP_EMIT_NS:
            ns, basis = observed * WAKEUP_EMIT_NS[p] / base, f"windows' {conf} cost x {WAKEUP_EMIT_NS[p]:g}/{base:g} (measured ratio)"
        else:
            ns, basis = WAKEUP_EMIT_NS.get(p), "measured on this machine at 2k ev/s (no window measured it)"
        lag = (obs_lag if obs_lag is not None else 0.0) + max(0.0, extra_delay(p) - extra_delay(conf))
        rows.append({"policy": p, "predicted_ns": None if ns is None else round(ns, 1),
                     "predicted_lag_p99_ms": round(lag, 3), "fits": lag <= budget,
                     "idle_consumer_pct": IDLE_CONSUMER_PCT.get(p), "basis": basis})
    order = {p: i for i, p in enumerate(names)}

    def key(r):
        idle = r["idle_consumer_pct"]
        return (r["predicted_ns"] if r["predicted_ns"] is not None else float("inf"),
                idle if idle is not None else float("inf"), order[r["policy"]])

    fitting = [r for r in rows if r["fits"] and r["predicted_ns"] is not None]
    best = min(fitting, key=key) if fitting else None
    rec = best["policy"] if best else None
    saving = None if best is None or observed is None else round(observed - best["predicted_ns"], 1)
    costly = sorted(ev, key=lambda w: (-w.producer_ns, w.index, w.host))[:5]
    return WakeupAdvice(
        configured=conf, recommended=rec, budget_ms=budget,
        observed_ns=None if observed is None else round(observed, 1), observed_lag_p99_ms=obs_lag,
        perf_ns=None if perf_ns is None else round(perf_ns, 1), saving_ns=saving, policies=rows,
        evidence=[_ref(w, producer_ns=w.producer_ns, lag_p99_ms=w.lag_p99_ms) for w in costly],
        evidence_windows=len(ev))


def _side(ws, memory: int) -> dict:
    attempts = sum(w.attempts for w in ws)
    delivered = sum(w.delivered for w in ws)
    lost = sum(w.dropped_full + w.dropped_other + w.lost for w in ws)
    lags = [w.lag_p99_ms for w in ws if w.lag_p99_ms is not None]
    cpu = sum(w.consumer_cpu_s for w in ws)
    ns = _weighted(ws, "producer_ns")
    return {"attempts": attempts, "delivered": delivered, "lost": lost,
            "loss_rate": lost / attempts if attempts else 0.0, "lag_p99_ms": max(lags) if lags else None,
            "inversions": sum(w.inversions for w in ws),
            "cpu_us_per_event": round(cpu / delivered * 1e6, 4) if delivered else None,
            "producer_ns": None if ns is None else round(ns, 1), "memory_bytes": memory}


def host_summaries(cfg: Config, windows: list, cpus: int) -> list[HostSummary]:
    """Per host, go / no-go from the DUAL windows where both channels carried the same events."""
    by: dict[tuple[str, int], dict[str, object]] = {}
    for w in windows:
        if w.mode == "DUAL" and w.attempts > 0:
            by.setdefault((w.host, w.index), {})[w.channel] = w
    hosts: dict[str, list[dict]] = {}
    for (host, _), pair in sorted(by.items()):
        hosts.setdefault(host, [])
        if "ring" in pair and "perf" in pair:
            hosts[host].append(pair)
    ring_mem, perf_mem = cfg.buffers.ring_bytes, perf_bytes(cfg.buffers.perf_pages, cpus)
    out = []
    for host, pairs in hosts.items():
        r = _side([p["ring"] for p in pairs], ring_mem)
        f = _side([p["perf"] for p in pairs], perf_mem)
        ids = sorted(p[c].id for p in pairs for c in ("perf", "ring"))
        if not pairs:
            out.append(HostSummary(host, "no-data", ["no DUAL window with both channels"], [], 0, [], r, f))
            continue
        reasons, upsides = [], []
        if r["loss_rate"] > f["loss_rate"]:
            reasons.append(f"loss: ring {100 * r['loss_rate']:.3f}% ({r['lost']}) > perf "
                           f"{100 * f['loss_rate']:.3f}% ({f['lost']})")
        if r["lag_p99_ms"] is not None and f["lag_p99_ms"] is not None and r["lag_p99_ms"] > f["lag_p99_ms"] * LAG_SLACK:
            reasons.append(f"lag p99: ring {r['lag_p99_ms']:.2f} ms > perf {f['lag_p99_ms']:.2f} ms (+10 %)")
        if r["producer_ns"] is not None and f["producer_ns"] is not None and r["producer_ns"] <= CLEAR_GAIN * f["producer_ns"]:
            upsides.append(f"producer cost: ring {r['producer_ns']:.0f} ns vs perf {f['producer_ns']:.0f} ns per event")
        if (r["cpu_us_per_event"] is not None and f["cpu_us_per_event"] is not None
                and r["cpu_us_per_event"] <= CLEAR_GAIN * f["cpu_us_per_event"]):
            upsides.append(f"consumer CPU: ring {r['cpu_us_per_event']:.3f} µs vs perf {f['cpu_us_per_event']:.3f} µs per event")
        if ring_mem <= CLEAR_GAIN * perf_mem:
            upsides.append(f"memory: ring {_mib(ring_mem)} vs perf {_mib(perf_mem)} pinned")
        if r["inversions"] < f["inversions"]:
            upsides.append(f"ordering: ring {r['inversions']} inversions vs perf {f['inversions']}")
        if not upsides:
            reasons.append("no clear upside: producer cost, consumer CPU per event and memory not 10 % better, "
                           "no fewer ordering inversions")
        out.append(HostSummary(host, "no-go" if reasons else "go", reasons, upsides, len(pairs), ids, r, f))
    return out


# ---- the whole advice ----------------------------------------------------------------------------

def _windows(session: Session, migration_id: int) -> list:
    return list(session.scalars(select(Window).where(Window.migration_id == migration_id,
                                                     Window.phase.in_(MEASURED_PHASES))
                                .order_by(Window.index, Window.host, Window.channel)))


def advise(session: Session, migration_id: int | None = None, *, cpus: int | None = None) -> Advice:
    """The advice for one migration (default: the newest), from its stored DUAL_INSTRUMENT, SHADOW and
    CANARY windows and its config snapshot. Read-only."""
    m = api.get_migration(session, migration_id)
    cfg = snapshot_config(m)
    ws = _windows(session, m.id)
    ring = ring_advice(cfg, ws, cpus)
    wake = wakeup_advice(cfg, ws)
    first = first_index(session, m.id)
    for w in (*ring.evidence, *ring.drop_windows, *wake.evidence):
        w["name"] = window_name(w["index"], first)  # `#n`, as every view names a window
    hosts = host_summaries(cfg, ws, ring.cpus)
    judged = [h for h in hosts if h.verdict != "no-data"]
    go = "no-data" if not judged else ("go" if all(h.verdict == "go" for h in judged) else "no-go")
    if go == "go":
        summary = f"go: on the same events the ring is no worse on loss and lag and better on {len(judged)} host(s)"
    elif go == "no-go":
        bad = [h.host for h in judged if h.verdict == "no-go"]
        summary = f"no-go: keep perf ({', '.join(bad)}: {'; '.join(next(h for h in judged if h.verdict == 'no-go').reasons)})"
    else:
        summary = "no-data: no DUAL window carried the same events on both channels"
    notes = []
    if ring.saturated:
        notes.append(f"the worst peak reached the configured {_mib(ring.configured_bytes)} ring: the burst may have "
                     "been larger than recorded; measure again with the recommended size")
    if ring.capped:
        notes.append(f"2 x the worst peak is above the largest ring accepted ({_mib(MAX_RING_BYTES)}): capped")
    if ring.drops_not_size:
        notes.append(f"{ring.drops_not_size} ring reservation failure(s) happened in windows that never filled the "
                     "ring: not caused by its size")
    if not ws:
        notes.append("no DUAL_INSTRUMENT, SHADOW or CANARY window recorded yet")
    return Advice(m.id, m.phase, m.config_path, m.source_hash, ring, wake, hosts, go, summary, notes)


def newest_for(session: Session, config: Config) -> Migration | None:
    """The newest migration of the same program (source hash) or, for the demo probes, the same config path."""
    from migrator.dataplane.source import source_hash

    digest = source_hash(config)
    q = select(Migration).order_by(Migration.id.desc())
    if digest:
        return session.scalars(q.where(Migration.source_hash == digest).limit(1)).first()
    here = os.path.realpath(config.path)  # `init -c ./canary.toml` and `plan -c /abs/canary.toml` are one file
    for m in session.scalars(q.where(Migration.source_hash.is_(None)).limit(100)):
        if m.config_path == config.path or os.path.realpath(m.config_path) == here:
            return m
    return None


def ring_warning(session: Session, config: Config) -> str | None:
    """`plan`'s warning: the configured ring is smaller than the last advice for this source; else None."""
    m = newest_for(session, config)
    if m is None:
        return None
    cfg = snapshot_config(m)
    rec = ring_advice(cfg, _windows(session, m.id), cpus=1).recommended_bytes
    if rec is None or config.buffers.ring_bytes >= rec:
        return None
    return (f"warning: buffers.ring_bytes = {config.buffers.ring_bytes} is below the {rec} bytes `migrator advise` "
            f"recommends from migration {m.id} (worst ring burst seen x {HEADROOM}); see `migrator advise -m {m.id}`")


__all__ = ["Advice", "RingAdvice", "WakeupAdvice", "HostSummary", "advise", "ring_advice", "wakeup_advice",
           "host_summaries", "ring_size_for", "perf_bytes", "ring_warning", "newest_for", "WAKEUP_EMIT_NS",
           "IDLE_CONSUMER_PCT", "PERF_EMIT_NS"]
