"""The window meter: what one channel's consumer saw between two window closes (count, lag, order)."""
from __future__ import annotations

import numpy as np

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
        """Start a new window: clear counts, lag histogram and CPU time (ordering carries over)."""
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
