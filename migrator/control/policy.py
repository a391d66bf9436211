"""Breach policy: host window verdicts, the judged group of an index, the streak, and what-if replays.

Definitions (the controller and what-if use exactly these):

* Judged hosts. DUAL_INSTRUMENT and SHADOW: every host. CANARY slice k: the hosts of slices 1..k
  (the ones on RING); the other hosts are the PERF baseline.
* Host verdict for window index i (all windows compared share the index, i.e. the same interval):
  - DUAL_INSTRUMENT: the host's ring window (ring path written, counters watched): loss rate.
  - SHADOW: ring vs perf of the same host: loss rate, lag p99, and the optional relative rules.
  - CANARY: the host's ring window vs the baseline hosts' perf windows (summed counts, mean
    lag p99, CPU per delivered event): loss rate, lag p99, optional relative rules.
  - Every phase, on the ring window: parse errors (records no registered payload layout reads)
    and payload mismatches (DUAL only: ring payload != perf payload of the same seq), each
    against its own absolute limit (rules `parse_errors`, `payload_mismatch`).
  - Every phase, what the ring's emit costs the traced code (producer_ns, ns per event) against
    `max_producer_ns`; SHADOW and CANARY also against the perf baseline's (`max_producer_ratio`):
    rule `producer_cost` (a window that timed no emit is not judged by it).
  - Every phase, the host's books on both its windows (ring, and perf when reported): a settled
    window whose residual (attempts - delivered - dropped - lost - in flight) is not 0 breaches
    (rule `books`), whatever its event count: evidence that does not add up is never a pass.
  no-data when a needed window is missing, was closed in another mode than the phase sets
  (the agent had not switched yet), was not settled (its books could not be closed: rule
  `unsettled`), or saw fewer than `min_events` attempts.
  breach when any limit is exceeded (`rule` lists every exceeded rule, `values` the numbers).
* Group (slice window) verdict for index i: breach if any judged host breaches; otherwise
  no-data if any judged host has no data; otherwise pass.
* Streak: consecutive breaching groups. pass -> 0 (and one more clean window, unless the window
  overlaps a pause: windows measured while PAUSED never count toward `min_clean_windows`);
  breach -> +1 (clean windows restart from 0); no-data -> `hold` leaves both, `breach` counts as a breach,
  `reset` sets the streak to 0. Rollback fires on the group that brings the streak to N, and
  lists every judged host's ring window of each group of the streak (group_window_ids).
* A streak lives within one phase position: the windows that started at or after its confirmation
  (phase_since). The host's own breaker (HostBreaker, agent/selfprotect.py) counts the same
  windows: its ring windows of the position, absolute rules only. what-if replays both.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from migrator.config import Config, Thresholds

PASS, BREACH, NO_DATA = "pass", "breach", "no-data"


@dataclass(frozen=True)
class HostVerdict:
    """One judged host's pass/breach/no-data for one window index, with the rules and numbers behind it."""

    host: str
    window_id: int | None
    verdict: str
    rule: str
    values: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GroupVerdict:
    """The verdict of one window index over all judged hosts: what the breach streak counts."""

    index: int
    verdict: str
    rule: str
    hosts: tuple[HostVerdict, ...]
    window_id: int | None  # representative window of this group (for streak evidence)
    values: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StreakState:
    """Where a phase position stands: consecutive breaches, their window ids, and clean windows so far."""

    streak: int = 0
    window_ids: tuple[int | None, ...] = ()
    clean: int = 0


def _g(w: Any, name: str, default: Any = None) -> Any:
    return getattr(w, name, default) if w is not None else default


def _loss(w: Any) -> float:
    att = _g(w, "attempts", 0) or 0
    if att <= 0:
        return 0.0
    return ((_g(w, "dropped_full", 0) or 0) + (_g(w, "dropped_other", 0) or 0) + (_g(w, "lost", 0) or 0)) / att


def _cpu_per_event(cpu: float, delivered: int) -> float | None:
    return cpu / delivered if delivered > 0 and cpu > 0 else None


@dataclass(frozen=True)
class Baseline:
    """What the perf side did in the same window: one host (SHADOW) or the PERF hosts (CANARY)."""

    loss_rate: float
    lag_p99_ms: float | None
    cpu_per_event: float | None
    hosts: int
    producer_ns: float | None = None  # mean of the perf windows' emit cost, where measured

    @classmethod
    def of(cls, perf_windows: Iterable[Any]) -> "Baseline | None":
        """The perf baseline of one window index from its perf windows; None when there are none."""
        # One pass, each field read once: in SHADOW every judged host has a baseline of its own
        # perf window, so this runs once per host per round.
        n = att = bad = delivered = 0
        cpu = 0.0
        lags: list[float] = []
        costs: list[float] = []
        for w in perf_windows:
            if w is None:
                continue
            n += 1
            att += getattr(w, "attempts", 0)
            bad += getattr(w, "dropped_full", 0) + getattr(w, "dropped_other", 0) + getattr(w, "lost", 0)
            cpu += getattr(w, "consumer_cpu_s", 0.0)
            delivered += getattr(w, "delivered", 0)
            lag, cost = getattr(w, "lag_p99_ms", None), getattr(w, "producer_ns", None)
            if lag is not None:
                lags.append(lag)
            if cost is not None:
                costs.append(cost)
        if not n:
            return None
        return cls(bad / att if att > 0 else 0.0, sum(lags) / len(lags) if lags else None,
                   _cpu_per_event(cpu, delivered), n, sum(costs) / len(costs) if costs else None)


def books(ring: Any, perf: Any = None) -> tuple[list[str], dict[str, int]]:
    """The host's own books in one window: (channels not settled, {channel: residual != 0} of the settled)."""
    unsettled, residuals = [], {}
    for ch, w in (("ring", ring), ("perf", perf)):
        if w is None:
            continue
        if not _g(w, "settled", True):
            unsettled.append(ch)
        elif _g(w, "residual", 0):
            residuals[ch] = int(_g(w, "residual", 0))
    return unsettled, residuals


def judge_host(host: str, ring: Any, baseline: Baseline | None, th: Thresholds, *, expected_mode: str,
               relative: bool, need_baseline: bool = False, perf: Any = None) -> HostVerdict:
    """One judged host's verdict for one window index (see module docstring); `perf` is the host's
    own perf window of the same index, whose books are judged too."""
    wid = _g(ring, "id")
    if ring is None:
        return HostVerdict(host, None, NO_DATA, "no_report", {"missing": "ring"})
    if need_baseline and baseline is None:
        return HostVerdict(host, wid, NO_DATA, "no_report", {"missing": "perf"})
    if ring.mode != expected_mode:
        return HostVerdict(host, wid, NO_DATA, "mode", {"mode": ring.mode, "expected": expected_mode})
    unsettled, residuals = books(ring, perf)
    if unsettled:
        return HostVerdict(host, wid, NO_DATA, "unsettled", {"unsettled": unsettled})
    if ring.attempts < th.min_events and not residuals:
        return HostVerdict(host, wid, NO_DATA, "min_events", {"attempts": ring.attempts, "min_events": th.min_events})
    loss = _loss(ring)
    values: dict[str, Any] = {"attempts": ring.attempts, "loss_rate": loss}
    broken: list[str] = []
    if residuals:
        broken.append("books")
        values["residual"] = residuals
    if loss > th.max_loss_rate:
        broken.append("max_loss_rate")
    values["max_loss_rate"] = th.max_loss_rate
    # Correctness of what the ring delivered, in every phase: a ring that loses nothing but
    # carries records nobody can read, or bytes other than perf's, is not a ring to move to.
    parse_errors, mismatches = _g(ring, "parse_errors", 0) or 0, _g(ring, "payload_mismatches", 0) or 0
    values["parse_errors"], values["max_parse_errors"] = parse_errors, th.max_parse_errors
    if parse_errors > th.max_parse_errors:
        broken.append("parse_errors")
    values["payload_mismatches"], values["max_payload_mismatch"] = mismatches, th.max_payload_mismatch
    if mismatches > th.max_payload_mismatch:
        broken.append("payload_mismatch")
    cost = _g(ring, "producer_ns")
    if cost is not None and th.max_producer_ns is not None:
        values["producer_ns"], values["max_producer_ns"] = cost, th.max_producer_ns
        if cost > th.max_producer_ns:
            broken.append("producer_cost")
    if (relative and cost is not None and baseline is not None and baseline.producer_ns
            and th.max_producer_ratio is not None):
        ratio = cost / baseline.producer_ns
        values["producer_ratio"], values["max_producer_ratio"] = ratio, th.max_producer_ratio
        values["baseline_producer_ns"] = baseline.producer_ns
        if ratio > th.max_producer_ratio and "producer_cost" not in broken:
            broken.append("producer_cost")
    lag = _g(ring, "lag_p99_ms")
    if relative:  # DUAL_INSTRUMENT only watches the ring's counters; lag comes from consumers
        values["lag_p99_ms"], values["max_lag_p99_ms"] = lag, th.max_lag_p99_ms
        if lag is not None and lag > th.max_lag_p99_ms:
            broken.append("max_lag_p99_ms")
        if th.max_inversions is not None:
            values["inversions"], values["max_inversions"] = ring.inversions, th.max_inversions
            if ring.inversions > th.max_inversions:
                broken.append("max_inversions")
        if baseline is not None:
            values["baseline"] = {"loss_rate": baseline.loss_rate, "lag_p99_ms": baseline.lag_p99_ms,
                                  "cpu_per_event": baseline.cpu_per_event, "hosts": baseline.hosts}
            if th.max_loss_delta is not None:
                delta = loss - baseline.loss_rate
                values["loss_delta"], values["max_loss_delta"] = delta, th.max_loss_delta
                if delta > th.max_loss_delta:
                    broken.append("max_loss_delta")
            if th.max_lag_ratio is not None and lag is not None and baseline.lag_p99_ms:
                ratio = lag / baseline.lag_p99_ms
                values["lag_ratio"], values["max_lag_ratio"] = ratio, th.max_lag_ratio
                if ratio > th.max_lag_ratio:
                    broken.append("max_lag_ratio")
            cpe = _cpu_per_event(_g(ring, "consumer_cpu_s", 0.0), _g(ring, "delivered", 0))
            if th.max_cpu_ratio is not None and cpe is not None and baseline.cpu_per_event:
                ratio = cpe / baseline.cpu_per_event
                values["cpu_ratio"], values["max_cpu_ratio"] = ratio, th.max_cpu_ratio
                if ratio > th.max_cpu_ratio:
                    broken.append("max_cpu_ratio")
    if broken:
        return HostVerdict(host, wid, BREACH, ",".join(broken), values)
    return HostVerdict(host, wid, PASS, "ok", values)


def judge_group(phase: str, index: int, judged: list[str], by_host: Mapping[str, Mapping[str, Any]],
                th: Thresholds) -> GroupVerdict:
    """The verdict of window index `index` over the judged hosts; `by_host[host][channel]` is a window."""
    if phase == "DUAL_INSTRUMENT":
        hv = [judge_host(h, by_host.get(h, {}).get("ring"), None, th, expected_mode="DUAL", relative=False,
                         perf=by_host.get(h, {}).get("perf")) for h in judged]
    elif phase == "SHADOW":
        hv = [judge_host(h, by_host.get(h, {}).get("ring"), Baseline.of([by_host.get(h, {}).get("perf")]), th,
                         expected_mode="DUAL", relative=True, need_baseline=True, perf=by_host.get(h, {}).get("perf"))
              for h in judged]
    elif phase == "CANARY":
        judged_set = set(judged)
        base = Baseline.of(chans.get("perf") for h, chans in by_host.items() if h not in judged_set)
        hv = [judge_host(h, by_host.get(h, {}).get("ring"), base, th, expected_mode="RING", relative=True,
                         perf=by_host.get(h, {}).get("perf")) for h in judged]
    else:
        raise ValueError(f"phase {phase} is not judged")
    breaching = [v for v in hv if v.verdict == BREACH]
    missing = [v for v in hv if v.verdict == NO_DATA]
    values = {"hosts": len(hv), "breaching": [v.host for v in breaching][:20], "no_data": [v.host for v in missing][:20],
              "n_breaching": len(breaching), "n_no_data": len(missing)}
    if breaching:
        first = breaching[0]
        return GroupVerdict(index, BREACH, f"{first.host}: {first.rule}", tuple(hv), first.window_id, values)
    any_id = next((v.window_id for v in hv if v.window_id is not None), None)
    if not any_id:
        any_id = next((w.id for chans in by_host.values() for w in chans.values() if _g(w, "id")), None)
    if missing:
        first = missing[0]
        return GroupVerdict(index, NO_DATA, f"{first.host}: {first.rule}", tuple(hv),
                            first.window_id if first.window_id is not None else any_id, values)
    return GroupVerdict(index, PASS, "ok", tuple(hv), any_id, values)


def next_streak(state: StreakState, verdict: str, window_id: int | None, no_data: str, *,
                counts_clean: bool = True) -> StreakState:
    """The streak after one more group verdict (see module docstring); counts_clean=False for a
    window that overlaps a pause: a pass still ends the breach streak but adds no clean window."""
    if verdict == NO_DATA:
        if no_data == "hold":
            return state
        if no_data == "reset":
            return replace(state, streak=0, window_ids=())
        verdict = BREACH
    if verdict == PASS:
        return StreakState(0, (), state.clean + 1 if counts_clean else state.clean)
    return StreakState(state.streak + 1, state.window_ids + (window_id,), 0)


class HostBreaker:
    """The host's own breaker (agent/selfprotect.py), the one rule `what-if` replays too: one host's
    ring windows of ONE phase position, in index order, judged with judge_host on the absolute rules
    (no baseline: the host does not see other hosts' windows), counted with next_streak. A window
    closed in another mode than RING restarts the streak; it fires on the window that brings the
    streak to N and starts again from 0."""

    def __init__(self, host: str, thresholds: Thresholds, rollback_after: int, no_data: str) -> None:
        self.host, self.thresholds, self.rollback_after, self.no_data = host, thresholds, rollback_after, no_data
        self.reset()

    def reset(self) -> None:
        self.state = StreakState()
        self.counted: list[tuple[int, str, int | None]] = []  # (index, rule, window id) of the streak's windows

    def step(self, ring: Any) -> tuple[HostVerdict | None, list[tuple[int, str, int | None]] | None]:
        """Count one ring window; (its verdict, the N windows of the streak when it fires, else None)."""
        if ring.mode != "RING":
            self.reset()
            return None, None
        v = judge_host(self.host, ring, None, self.thresholds, expected_mode="RING", relative=True)
        before = self.state.streak
        self.state = next_streak(self.state, v.verdict, _g(ring, "id"), self.no_data)
        if self.state.streak == 0:
            self.counted = []
        elif self.state.streak > before:
            self.counted.append((ring.index, v.rule if v.verdict == BREACH else f"no data ({v.rule})", _g(ring, "id")))
        if self.state.streak < self.rollback_after:
            return v, None
        fired = self.counted[-self.rollback_after:]
        self.reset()
        return v, fired


def overlaps_pause(start: float, end: float, pauses: Iterable[tuple[float, float]]) -> bool:
    """True when the interval [start, end] meets one of the (began, ended) pauses."""
    return any(start < ended and end > began for began, ended in pauses)


def judged_hosts(phase: str, slice_: int, hosts: list[tuple[str, int]]) -> list[str]:
    """Hosts whose windows are judged in a phase position; `hosts` are (name, first slice on RING)."""
    if phase == "CANARY":
        return [h for h, s in hosts if s <= slice_]
    return [h for h, _ in hosts]


def needed(phase: str, judged: list[str], hosts: list[tuple[str, int]]) -> set[tuple[str, str]]:
    """The (host, channel) windows that make an index complete, so it can be judged without waiting."""
    if phase == "DUAL_INSTRUMENT":
        return {(h, "ring") for h in judged}
    if phase == "SHADOW":
        return {(h, c) for h in judged for c in ("ring", "perf")}
    js = set(judged)
    return {(h, "ring") for h in judged} | {(h, "perf") for h, _ in hosts if h not in js}


def what_if(config: Config, hosts: list[tuple[str, int]], windows: Iterable[Any], *,
            rollback_after: int | None = None, no_data: str | None = None, **threshold_overrides: Any) -> dict:
    """Replay stored windows under other thresholds / N and report where a rollback would have fired.

    Windows are regrouped by the (phase, slice, index) they were recorded in; each phase position
    starts with a fresh streak, as the controller does. The first firing is `rollback_at`; later
    data could not have existed after a real rollback, so later firings are only listed.
    """
    th = replace(config.thresholds, **{k: v for k, v in threshold_overrides.items() if v is not None})
    n = rollback_after or config.rollback_after
    nd = no_data or config.no_data
    groups: dict[tuple[str, int], dict[int, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    order: list[tuple[str, int]] = []
    for w in windows:
        key = (w.phase, w.slice)
        if w.phase not in ("DUAL_INSTRUMENT", "SHADOW", "CANARY"):
            continue
        if key not in groups:
            order.append(key)
        groups[key][w.index].setdefault(w.host, {})[w.channel] = w
    firings, counts = [], {PASS: 0, BREACH: 0, NO_DATA: 0}
    for phase, slice_ in order:
        judged = judged_hosts(phase, slice_, hosts)
        state = StreakState()
        deciding: list[list[int]] = []  # per group of the streak: every judged host's window id
        for index in sorted(groups[(phase, slice_)]):
            gv = judge_group(phase, index, judged, groups[(phase, slice_)][index], th)
            counts[gv.verdict] += 1
            before = state.streak
            state = next_streak(state, gv.verdict, gv.window_id, nd)
            if state.streak == 0:
                deciding = []
            elif state.streak > before:
                deciding.append(group_window_ids(gv))
            if state.streak >= n:
                firings.append({"by": "controller", "phase": phase, "slice": slice_, "index": index,
                                "window_ids": [i for ids in deciding[-n:] for i in ids]})
                state, deciding = StreakState(), []
        # Each host's own breaker (agent/selfprotect.py) on its ring windows of this position.
        by_host: dict[str, list[Any]] = defaultdict(list)
        for index, chans in groups[(phase, slice_)].items():
            for h, ws in chans.items():
                if "ring" in ws:
                    by_host[h].append(ws["ring"])
        for h, _ in hosts:
            breaker = HostBreaker(h, th, n, nd)
            for ring in sorted(by_host.get(h, []), key=lambda w: w.index):
                _, fired = breaker.step(ring)
                if fired:
                    firings.append({"by": f"host {h}", "phase": phase, "slice": slice_, "index": ring.index,
                                    "indexes": [i for i, _, _ in fired],
                                    "window_ids": [w for _, _, w in fired if w is not None]})
    # In time order; on the same window a host's own rollback is the one recorded (the controller
    # turns its report into THE transition, control/controller.py: _on_host_protected).
    firings.sort(key=lambda f: (f["index"], f["by"] == "controller"))
    return {"rollback_after": n, "no_data": nd, "thresholds": {k: v for k, v in vars(th).items()},
            "verdicts": counts, "would_roll_back": bool(firings),
            "rollback_at": firings[0] if firings else None, "firings": firings}


def group_window_ids(gv: GroupVerdict) -> list[int]:
    """The windows a judged group counted: every judged host's ring window of the index."""
    return [hv.window_id for hv in gv.hosts if hv.window_id is not None]
