"""The window meter: what one channel's consumer saw between two window closes (count, lag, order)."""
from __future__ import annotations

import numpy as np

from migrator.dataplane.native import addr, lib

# Lag histogram: 8 bins per power of two of nanoseconds (about 9 % resolution), bounded memory
# however many events a window holds.
_BINS_PER_OCTAVE = 8
_NBINS = _BINS_PER_OCTAVE * 44  # up to ~4.9 hours


def _lag_bins(lag_ns: np.ndarray) -> np.ndarray:
    return _bins_of(np.maximum(lag_ns, 1).astype(np.float64))


def _bins_of(lag: np.ndarray) -> np.ndarray:
    """Histogram bins of lags given as float64 ns, already at least 1 (the array is reused)."""
    np.log2(lag, out=lag)
    lag *= _BINS_PER_OCTAVE
    idx = lag.astype(np.int64)  # >= 0: every lag is at least 1
    return np.minimum(idx, _NBINS - 1, out=idx)


def _le_bins() -> np.ndarray:
    """Per LAG_BUCKETS_LE bound, how many histogram bins lie wholly at or below it."""
    from migrator.shared.records import LAG_BUCKETS_LE

    return np.array([_NBINS if le == float("inf") else min(_NBINS, max(0, int(np.floor(
        _BINS_PER_OCTAVE * np.log2(le * 1e9) + 1e-9)))) for le in LAG_BUCKETS_LE], dtype=np.int64)


_LE_BINS = _le_bins()
# Each bin's geometric centre in seconds: the window's lag sum for the exported histogram.
_CENTRES_S = 2 ** ((np.arange(_NBINS) + 0.5) / _BINS_PER_OCTAVE) / 1e9


def lag_buckets(hist: np.ndarray) -> tuple[list[int], float]:
    """(cumulative counts at LAG_BUCKETS_LE, lag sum in s) of a lag histogram, at its ~9 % resolution."""
    cum = np.concatenate(([0], np.cumsum(hist)))
    return cum[_LE_BINS].tolist(), float((hist * _CENTRES_S).sum())  # not `@`: BLAS threads spin after it


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
        self._state = np.zeros(6, np.int64)  # add_batches' exchange with the native pass
        self._state_at = addr(self._state)
        self.reset()

    def reset(self) -> None:
        """Start a new window: clear counts, lag histogram and CPU time (ordering carries over)."""
        if hasattr(self, "hist"):  # the closing window's lag histogram, for the metrics export
            self.closed_lag = lag_buckets(self.hist)
        self.delivered = 0
        self.inversions = 0
        self.cpu_s = 0.0
        self.hist = np.zeros(_NBINS, dtype=np.int64)
        self.lag_max_ns = 0
        self.seq_min: int | None = None
        self.seq_max: int | None = None

    def add(self, batch: np.ndarray, now_ns: int) -> None:
        """Fold one decoded batch in: count, lag (consume time - ktime), ordering inversions."""
        self.add_batches(batch, [len(batch)], [now_ns])

    def add_batches(self, hdr: np.ndarray, counts: list[int], now_ns: list[int],
                    by_epoch: np.ndarray | None = None) -> None:
        """Fold several consumed batches in at once, exactly as add() on each in turn: `hdr` their
        headers joined, counts[i] records of batch i, consumed at now_ns[i] (its lag's reference).
        `by_epoch` (int64, EPOCHS long), when given, counts each record's epoch as well. One
        native pass (native.c mg_meter) for all of it."""
        if not len(hdr):
            return
        st = self._state
        st[:] = (self.max_seq, self.inversions, self.lag_max_ns, -1 if self.seq_min is None else self.seq_min,
                 -1 if self.seq_max is None else self.seq_max, self.delivered)
        c, t = np.asarray(counts, np.int64), np.asarray(now_ns, np.int64)
        lib().mg_meter(addr(hdr), hdr.strides[0], len(hdr), addr(c), addr(t), len(c), addr(self.hist), _NBINS,
                       self._state_at, None if by_epoch is None else addr(by_epoch))
        self.max_seq, self.inversions, self.lag_max_ns, lo, hi, self.delivered = st.tolist()
        self.seq_min, self.seq_max = (lo, hi) if lo >= 0 else (None, None)

    def add_lags(self, seq: np.ndarray, lag: np.ndarray) -> None:
        """Fold records in given their seq and lag in ns, in consumption order."""
        n = len(seq)
        if n == 0:
            return
        self.hist += np.bincount(_lag_bins(lag), minlength=_NBINS)
        self.lag_max_ns = max(self.lag_max_ns, int(lag.max()))
        self._order(seq)

    def _order(self, seq: np.ndarray) -> None:
        """Count the records and the ordering inversions among them (and against earlier batches)."""
        n = len(seq)
        self.delivered += n
        lo, hi = int(seq[0]), int(seq[-1])
        if lo >= self.max_seq and (n == 1 or bool((seq[1:] >= seq[:-1]).all())):
            # In order (a ring's stream): no inversion, and the ends are the extremes.
            self.max_seq = hi
            self.seq_min = lo if self.seq_min is None else min(self.seq_min, lo)
            self.seq_max = hi if self.seq_max is None else max(self.seq_max, hi)
            return
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
