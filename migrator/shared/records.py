"""The window record: the plain type the data plane produces and the store persists, and its
fixed-width text form (the same line in `shadow`, `wrap` and the library's report).

It depends on nothing but the standard library, so the store does not depend on the data plane.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TypedDict

# Upper bounds (`le`, seconds) of the lag histogram a window carries in extra["lag_buckets"]
# (cumulative counts of the delivered records, one per bound, the last being +Inf so it is their
# number) with extra["lag_sum_s"]: what `--metrics-addr` exports as migrator_lag_seconds.
# Fixed once here so every window, host and process adds up into the same buckets.
LAG_BUCKETS_LE: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class WindowExtra(TypedDict, total=False):
    """The declared schema of a window's `extra` (the `windows.extra` JSON column): every key any
    layer writes, with who writes it. tests/test_window_extra.py fails on a key written anywhere in
    the package that is not declared here."""

    # the pipeline (dataplane/pipeline.py), every window
    seq_min: int | None  # lowest and highest seq delivered in the window
    seq_max: int | None
    backlog_age_ms: float  # age of the oldest record still waiting at close
    epoch: int  # the channel epoch the window was (bpf/migrator.h EPOCHS)
    pending: int  # records of later epochs already in the buffer at close
    cpus: int  # CPUs with a perf buffer (what `advise` prices perf's memory with)
    late: int  # records of an earlier epoch that arrived after their window closed
    before_start: int  # in a first window: records emitted before the pipeline started
    bpf_stats: str  # why bpf_run_ns is unknown
    lost_reported: int  # perf only: PERF_RECORD_LOST counts read in the window
    # the router (dataplane/router.py)
    acted: int  # cumulative records delivered to the operator from this channel (per feed)
    payload_compared: int  # SHADOW: ring payloads compared with perf's
    payload_mismatch_seqs: list[int]  # the first seqs whose payloads differed
    payload_skipped: int  # pairs not compared (no room in the window's budget)
    # the feed (agent/feed.py)
    lag_buckets: list[int]  # cumulative counts at LAG_BUCKETS_LE
    lag_sum_s: float
    schema_fingerprint: str  # the payload layouts the feed decoded with
    mode_switch: dict  # the switch made in the window: from, to, at, read_back, first_perf_at
    db_gap_since: float  # the database link has been down since (wall time)
    self_protect: dict  # the host's own rollback (agent/selfprotect.py Protection.as_dict)
    # the agent loop (agent/loop.py): the operator's sink
    sink_total: int
    sink_errors: int
    sink_events: int
    # merges (merge_windows, agent/wrap.py)
    reloaded: bool  # a probe reload inside the window
    lost_in_reload: int
    channels: dict  # wrap: each migrator channel's own extra, by channel name
    modes: dict  # wrap: each channel's mode when they differ


EXTRA_KEYS = frozenset(WindowExtra.__annotations__)


@dataclass
class ChannelWindow:
    """Everything measured for one channel of one host over one closed window.

    Counts are deltas over the window. `lost` is perf's kernel-side overflow (the BPF program saw
    -ENOSPC from bpf_perf_event_output, which is also what PERF_RECORD_LOST reports); `dropped_*`
    are other refusals, by cause. A window is one epoch of the channel: its records carry it, so
    `in_flight` is what of this window's records still sat in a buffer at close, and `residual`
    = attempts - delivered - dropped - lost - in_flight is 0 whenever the books balance, also under
    load. `settled` is False when the close could not wait for the epoch's writers to finish
    (the residual is then a best effort). `bpf_run_ns`/`bpf_run_cnt` are None when the kernel
    refused run-time statistics (unknown, not zero).
    """

    host: str
    channel: str  # "perf" | "ring"
    index: int  # window number on this host, from 0
    start: float  # unix seconds
    end: float  # unix seconds
    mode: str = "DUAL"  # the host's mode map value when the window closed
    attempts: int = 0
    delivered: int = 0  # records decoded by our consumer
    dropped_full: int = 0
    dropped_other: int = 0
    lost: int = 0
    parse_errors: int = 0
    payload_mismatches: int = 0  # SHADOW: ring payloads that differ from perf's for the same seq
    # perf row, DUAL: records perf lost (refused) that the operator got from their ring copy instead
    filled_from_ring: int = 0
    in_flight: int = 0
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_max_ms: float | None = None
    inversions: int = 0
    consumer_cpu_s: float = 0.0
    bpf_run_ns: int | None = 0
    bpf_run_cnt: int | None = 0
    residual: int = 0
    settled: bool = True
    # What this channel's emit cost the traced code, mean ns per event (None: not measured), and
    # the highest occupancy of its buffer in the window (ring: one buffer; perf: the fullest CPU's).
    producer_ns: float | None = None
    peak_bytes: int | None = None
    extra: WindowExtra = field(default_factory=dict)  # type: ignore[assignment]

    @property
    def dropped(self) -> int:
        """Refused records of both causes together (buffer full and other)."""
        return self.dropped_full + self.dropped_other

    @property
    def loss_rate(self) -> float:
        """Share of attempts the channel did not deliver (refused or lost); 0.0 with no attempts."""
        if self.attempts <= 0:
            return 0.0
        return (self.dropped + self.lost) / self.attempts

    @property
    def lag_buckets(self) -> tuple[int, ...] | None:
        """Cumulative counts of delivered records at each LAG_BUCKETS_LE bound, None when not measured."""
        b = self.extra.get("lag_buckets")
        return None if b is None else tuple(b)

    def to_dict(self) -> dict:
        """The window as a plain dict, dropped and loss_rate included, for --json output."""
        d = asdict(self)
        d["dropped"] = self.dropped
        d["loss_rate"] = self.loss_rate
        return d


# The counts a merged window adds up over its parts (in both kinds of merge).
SUMMED = ("attempts", "delivered", "dropped_full", "dropped_other", "lost", "parse_errors", "payload_mismatches",
          "filled_from_ring", "inversions", "consumer_cpu_s", "residual")


def merge_windows(parts: list[ChannelWindow], *, side_by_side: bool = False) -> ChannelWindow:
    """One window from parts of it (it takes the host, index and mode of the last part in time,
    of the first side by side):

    - consecutive parts of one channel's window (a probe reload inside it; the default): records
      still in an earlier part's buffers died with its maps and count as lost (extra
      "lost_in_reload"), `in_flight` is the last part's, run-time statistics add up;
    - side by side (`side_by_side`): the same window of several migrator channels of one host
      (wrap): `in_flight` adds up, run-time statistics take the largest (the channels share
      their programs' statistics), and the caller sets `extra` (each channel's own is its own).

    Either way counts add up; lag percentiles take the worst part (percentiles of parts cannot be
    combined exactly, and the worse one is the safe reading) while the lag histogram adds up when
    every part has one; the emit cost is the parts' mean weighted by attempts and the peak
    occupancy the highest.
    """
    if len(parts) == 1:
        return parts[0]

    def worst(xs):
        xs = [x for x in xs if x is not None]
        return max(xs) if xs else None

    def known(xs, how):  # unknown if any part's is
        xs = list(xs)
        return None if any(x is None for x in xs) else how(xs)

    last = parts[-1]
    head = parts[0] if side_by_side else last
    total = {f: sum(getattr(w, f) for w in parts) for f in SUMMED}
    timed = [(w.producer_ns, w.attempts) for w in parts if w.producer_ns is not None]
    weight = sum(n for _, n in timed)
    extra: dict = {}
    if all(w.lag_buckets is not None for w in parts):  # every part's delivered records
        extra = {"lag_buckets": [sum(b) for b in zip(*(w.lag_buckets for w in parts))],
                 "lag_sum_s": sum(w.extra.get("lag_sum_s", 0.0) for w in parts)}
    if side_by_side:
        total["in_flight"] = sum(w.in_flight for w in parts)
        run = {"bpf_run_ns": known((w.bpf_run_ns for w in parts), max),
               "bpf_run_cnt": known((w.bpf_run_cnt for w in parts), max)}
    else:
        died = sum(w.in_flight for w in parts[:-1])
        total["lost"] += died
        total["in_flight"] = last.in_flight
        run = {"bpf_run_ns": known((w.bpf_run_ns for w in parts), sum),
               "bpf_run_cnt": known((w.bpf_run_cnt for w in parts), sum)}
        merged_extra: dict = {}
        for w in parts:
            merged_extra.update(w.extra)
        extra = {**merged_extra, **extra, "reloaded": True, "lost_in_reload": died}
    return ChannelWindow(
        host=head.host, channel=head.channel, index=head.index, start=min(w.start for w in parts),
        end=max(w.end for w in parts), mode=head.mode, **total, **run,
        lag_p50_ms=worst(w.lag_p50_ms for w in parts), lag_p99_ms=worst(w.lag_p99_ms for w in parts),
        lag_max_ms=worst(w.lag_max_ms for w in parts), settled=all(w.settled for w in parts),
        producer_ns=None if not weight else round(sum(ns * n for ns, n in timed) / weight, 1),
        peak_bytes=worst(w.peak_bytes for w in parts), extra=extra)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


WINDOW_HEADER = (
    f"{'host':<8} {'win':>4} {'chan':<4} {'mode':<4} {'attempts':>9} {'deliver':>9} {'dropped':>7} {'lost':>7} "
    f"{'filled':>7} {'loss%':>6} {'p50ms':>6} {'p99ms':>6} {'inv':>5} {'cpu_s':>6} {'resid':>5}"
)


def window_line(w: ChannelWindow) -> str:
    """One closed window as a fixed-width line under WINDOW_HEADER (`~` marks an unsettled residual;
    `filled`: records perf lost that were delivered from their ring copy instead)."""
    resid = str(w.residual) + ("" if w.settled else "~")
    return (
        f"{w.host:<8} {w.index:>4} {w.channel:<4} {w.mode:<4} {w.attempts:>9} {w.delivered:>9} {w.dropped:>7} "
        f"{w.lost:>7} {w.filled_from_ring:>7} {100 * w.loss_rate:>6.2f} {_ms(w.lag_p50_ms):>6} {_ms(w.lag_p99_ms):>6} {w.inversions:>5} "
        f"{w.consumer_cpu_s:>6.3f} {resid:>5}"
    )
