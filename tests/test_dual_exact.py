"""DUAL mode: every synthetic event arrives exactly once on each channel, and the books balance."""
import numpy as np
import pytest

from kernel_util import collect, needs_root, records
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline

pytestmark = [pytest.mark.kernel, needs_root]
N = 100_000


def test_dual_mode_delivers_each_event_once_per_channel():
    with Probe("synthetic") as probe:
        # 1 MiB per CPU: exactly-once is under test here, not perf's tolerance of a busy CI machine
        pipe = Pipeline(probe, keep_records=True, perf_pages=256)
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(N, rate=500_000)  # within what perf's 64 pages per CPU absorb
            probe.set_target(gen.pid)
            gen.start()
            collect(pipe, lambda: not gen.running())
            assert gen.wait(timeout=10) == 0

            def drained():  # a refusal ends the wait too, and fails below with its count
                c = probe.counters()
                return all(c[ch].attempts == N and pipe.delivered_total[ch] + c[ch].full + c[ch].other == N
                           for ch in c)

            collect(pipe, drained)
            windows = {w.channel: w for w in pipe.close_window()}
            perf, ring = records(pipe, "perf"), records(pipe, "ring")
        finally:
            pipe.close()

    for ch, recs in (("perf", perf), ("ring", ring)):
        w = windows[ch]
        assert (w.attempts, w.delivered, w.dropped, w.lost, w.in_flight) == (N, N, 0, 0, 0), ch
        assert (w.residual, w.settled, w.parse_errors) == (0, True, 0), ch
        assert len(recs) == N
        # exactly once: the seq values are 0..N-1 with no duplicate and no gap
        assert np.array_equal(np.sort(recs["seq"]), np.arange(N, dtype=np.uint64)), ch
        assert (w.extra["seq_min"], w.extra["seq_max"]) == (0, N - 1)
        assert set(np.unique(recs["kind"])) == {1}
        assert set(np.unique(recs["flags"] & 3)) == {1}  # stamped DUAL
    # the same events on both channels: identical (seq, ktime, value) sets
    key = lambda r: np.sort(r[["seq", "ktime_ns"]])  # noqa: E731
    assert np.array_equal(key(perf), key(ring))
    # one ring shared by all CPUs: a single-threaded producer's events arrive in seq order
    assert windows["ring"].inversions == 0
