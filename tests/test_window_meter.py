"""Window arithmetic on recorded batches: lag percentiles, ordering inversions, loss rate."""
import numpy as np

from migrator.dataplane.frames import HDR_DTYPE
from migrator.dataplane.windows import ChannelMeter
from migrator.shared.records import ChannelWindow


def batch(seqs, lags_ns, now=10_000_000_000):
    b = np.zeros(len(seqs), dtype=HDR_DTYPE)
    b["seq"] = seqs
    b["ktime_ns"] = [now - x for x in lags_ns]
    return b, now


def test_inversions_count_records_below_the_running_max_across_batches():
    m = ChannelMeter("perf")
    b, now = batch([0, 1, 5, 2, 3, 6], [1000] * 6)
    m.add(b, now)
    assert m.inversions == 2  # 2 and 3 arrive after 5
    b, now = batch([4, 7, 8], [1000] * 3)
    m.add(b, now)
    assert m.inversions == 3  # 4 arrives after 6 (carried over)
    assert (m.delivered, m.seq_min, m.seq_max) == (9, 0, 8)
    m.reset()
    b, now = batch([5], [1000])
    m.add(b, now)
    assert m.inversions == 1  # the stream's order survives a window close


def test_lag_percentiles_within_bin_resolution():
    m = ChannelMeter("ring")
    lags = [1_000_000] * 98 + [50_000_000, 100_000_000]  # 1 ms mostly, two slow
    b, now = batch(list(range(100)), lags)
    m.add(b, now)
    p50, p99, pmax = m.lag_summary()
    assert 1.0 <= p50 <= 1.1
    assert 50.0 <= p99 <= 55.0
    assert pmax == 100.0


def test_empty_meter_reports_no_lag():
    assert ChannelMeter("ring").lag_summary() == (None, None, None)


def test_loss_rate_counts_drops_and_perf_loss():
    w = ChannelWindow(host="h", channel="perf", index=0, start=0, end=1, attempts=1000, delivered=990,
                      dropped_other=4, lost=6)
    assert w.loss_rate == 0.01 and w.dropped == 4
    assert ChannelWindow(host="h", channel="ring", index=0, start=0, end=1).loss_rate == 0.0
    assert w.to_dict()["loss_rate"] == 0.01


def test_native_bins_equal_the_formula_at_every_edge():
    """The native meter finds a lag's bin by octave and edges (native.c lag_bin); the bins must be
    those of trunc(8 * log2(lag)) in doubles, at each bin's edges and between them."""
    import time

    from migrator.dataplane.frames import HDR_DTYPE
    from migrator.dataplane.windows import _NBINS, _lag_bins

    edges = np.unique(np.floor(2.0 ** (np.arange(8 * 46) / 8)).astype(np.int64))
    rng = np.random.default_rng(7)
    lags = np.concatenate([np.arange(0, 4096), edges - 1, edges, edges + 1, rng.integers(1, 1 << 46, 50_000),
                           (1 << np.arange(1, 47)) - 1])
    now = time.monotonic_ns() + (1 << 47)
    hdr = np.zeros(len(lags), HDR_DTYPE)
    hdr["ktime_ns"], hdr["seq"] = now - lags, np.arange(len(lags))
    m = ChannelMeter("perf")
    m.add_batches(hdr, [len(hdr)], [now])
    assert np.array_equal(m.hist, np.bincount(_lag_bins(lags.astype(np.int64)), minlength=_NBINS))
