"""Window records: one per host, channel and window, balancing kernel counters against consumers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

MODES = ("PERF", "DUAL", "RING")


@dataclass
class ChannelWindow:
    """Everything measured for one channel of one host over one closed window.

    Counts are deltas over the window. `lost` is perf's kernel-side overflow (the BPF program saw
    -ENOSPC from bpf_perf_event_output, which is also what PERF_RECORD_LOST reports); `dropped_*`
    are other refusals, by cause. `in_flight` is what sat in the buffer at close. `residual` is
    attempts - delivered - dropped - lost - in_flight change, taken from a consistent snapshot
    (`settled` True) or from a best effort under continuous load (`settled` False).
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
    in_flight: int = 0
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_max_ms: float | None = None
    inversions: int = 0
    consumer_cpu_s: float = 0.0
    bpf_run_ns: int = 0
    bpf_run_cnt: int = 0
    residual: int = 0
    settled: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_other

    @property
    def loss_rate(self) -> float:
        """Share of attempts the channel did not deliver (refused or lost); 0.0 with no attempts."""
        if self.attempts <= 0:
            return 0.0
        return (self.dropped + self.lost) / self.attempts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dropped"] = self.dropped
        d["loss_rate"] = self.loss_rate
        return d


def merge_windows(a: ChannelWindow, b: ChannelWindow) -> ChannelWindow:
    """One window from two consecutive parts of it (a probe reload inside a window).

    Counts add up; lag figures take the worse part (percentiles of two parts cannot be combined
    exactly, and the worse one is the safe reading); the residual adds the two pipelines' books.
    Records still in the first part's buffers died with its maps: they count as lost.
    """
    def worse(x, y):
        return y if x is None else x if y is None else max(x, y)

    return ChannelWindow(
        host=b.host, channel=b.channel, index=b.index, start=a.start, end=b.end, mode=b.mode,
        attempts=a.attempts + b.attempts, delivered=a.delivered + b.delivered,
        dropped_full=a.dropped_full + b.dropped_full, dropped_other=a.dropped_other + b.dropped_other,
        lost=a.lost + b.lost + a.in_flight, parse_errors=a.parse_errors + b.parse_errors, in_flight=b.in_flight,
        lag_p50_ms=worse(a.lag_p50_ms, b.lag_p50_ms), lag_p99_ms=worse(a.lag_p99_ms, b.lag_p99_ms),
        lag_max_ms=worse(a.lag_max_ms, b.lag_max_ms), inversions=a.inversions + b.inversions,
        consumer_cpu_s=a.consumer_cpu_s + b.consumer_cpu_s, bpf_run_ns=a.bpf_run_ns + b.bpf_run_ns,
        bpf_run_cnt=a.bpf_run_cnt + b.bpf_run_cnt, residual=a.residual + b.residual,
        settled=a.settled and b.settled, extra={**a.extra, **b.extra, "reloaded": True, "lost_in_reload": a.in_flight},
    )


# Lag histogram: 8 bins per power of two of nanoseconds (about 9 % resolution), bounded memory
# however many events a window holds.
_BINS_PER_OCTAVE = 8
_NBINS = _BINS_PER_OCTAVE * 44  # up to ~4.9 hours


def _lag_bins(lag_ns: np.ndarray) -> np.ndarray:
    idx = (np.log2(np.maximum(lag_ns, 1).astype(np.float64)) * _BINS_PER_OCTAVE).astype(np.int64)
    return np.clip(idx, 0, _NBINS - 1)


def _percentile_ms(hist: np.ndarray, q: float) -> float | None:
    total = int(hist.sum())
    if total == 0:
        return None
    rank = max(1, int(np.ceil(total * q)))
    i = int(np.searchsorted(np.cumsum(hist), rank))
    return float(2 ** ((i + 1) / _BINS_PER_OCTAVE)) / 1e6  # upper edge of the bin


class ChannelMeter:
    """Accumulates one channel's consumed batches between window closes."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.max_seq = -1  # carried across windows: ordering is a property of the stream
        self.reset()

    def reset(self) -> None:
        self.delivered = 0
        self.inversions = 0
        self.cpu_s = 0.0
        self.hist = np.zeros(_NBINS, dtype=np.int64)
        self.lag_max_ns = 0
        self.seq_min: int | None = None
        self.seq_max: int | None = None

    def add(self, batch: np.ndarray, now_ns: int) -> None:
        """Fold one decoded batch in: count, lag (consume time - ktime), ordering inversions."""
        if len(batch):
            self.add_lags(batch["seq"], now_ns - batch["ktime_ns"].astype(np.int64))

    def add_lags(self, seq: np.ndarray, lag: np.ndarray) -> None:
        """Fold records in given their seq and lag in ns, in consumption order."""
        n = len(seq)
        if n == 0:
            return
        self.delivered += n
        self.hist += np.bincount(_lag_bins(lag), minlength=_NBINS)
        self.lag_max_ns = max(self.lag_max_ns, int(lag.max()))
        seq = seq.astype(np.int64)
        run_max = np.maximum.accumulate(seq)
        prev = np.empty_like(run_max)
        prev[0] = self.max_seq
        prev[1:] = np.maximum(run_max[:-1], self.max_seq)
        self.inversions += int((seq < prev).sum())
        self.max_seq = max(self.max_seq, int(run_max[-1]))
        lo, hi = int(seq.min()), int(seq.max())
        self.seq_min = lo if self.seq_min is None else min(self.seq_min, lo)
        self.seq_max = hi if self.seq_max is None else max(self.seq_max, hi)

    def lag_summary(self, backlog_age_ms: float = 0.0, backlog: int = 0) -> tuple[float | None, float | None, float | None]:
        """(p50, p99, max) in ms. `backlog` records still waiting are at least `backlog_age_ms`
        old: they count at that age, so a stalled consumer reads as growing lag."""
        if self.delivered == 0 and backlog == 0:
            return None, None, None
        hist = self.hist
        if backlog:
            hist = hist.copy()
            hist[_lag_bins(np.array([int(backlog_age_ms * 1e6)]))[0]] += backlog
        return (_percentile_ms(hist, 0.50), _percentile_ms(hist, 0.99),
                max(self.lag_max_ns / 1e6, backlog_age_ms))
