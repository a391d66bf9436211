"""The ring's in-flight walk (RingConsumer._walk, used by every window close) counts a run of
records of one size in one strided pass: the same counts, per epoch, as walking them one by one,
across the wrap and resumed after more records arrive."""
import pytest

from kernel_util import needs_root
from migrator.dataplane.readers import RingConsumer
from migrator.dataplane.frames import EPOCHS
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen

pytestmark = [pytest.mark.kernel, needs_root]


def _one_by_one(ring: RingConsumer) -> tuple[int, list[int]]:
    """in_flight and its epochs with the strided pass switched off (the record-by-record walk)."""
    run = ring._run_epochs
    ring._run_epochs = lambda *a: 0
    ring._count_from = -1  # forget the resumable walk
    try:
        n = ring.in_flight()
        return n, list(ring._count_epochs)
    finally:
        ring._run_epochs = run
        ring._count_from = -1


def _burst(probe: Probe, n: int) -> None:
    gen = LoadGen(n, rate=0)
    probe.set_target(gen.pid)
    gen.start()
    assert gen.wait(timeout=60) == 0


def test_the_strided_walk_counts_what_the_record_walk_counts():
    with Probe("synthetic", ring_bytes=1 << 16) as probe:
        ring = RingConsumer(probe.ring_map_fd, probe.ring_bytes)
        try:
            probe.set_mode("RING")
            _burst(probe, 300)
            ring.consume(max_records=100)  # the consumer position is no longer 0: the run will wrap
            probe.set_epoch(5)
            _burst(probe, 500)  # fills the ring past its end (80-byte records, 819 fit)
            probe.set_epoch(6)
            _burst(probe, 200)
            full = probe.counters()["ring"].full
            slow = _one_by_one(ring)
            runs = []
            run = ring._run_epochs
            ring._run_epochs = lambda *a: runs.append(run(*a)) or runs[-1]
            fast = (ring.in_flight(), list(ring._count_epochs))
            del ring._run_epochs
            assert max(runs) >= 100  # the strided pass did the counting
            assert fast == slow and fast[0] == 1000 - 100 - full and full > 0
            assert sum(fast[1]) == fast[0] and fast[1][5] > 0 and len(fast[1]) == EPOCHS
            ring.consume(max_records=50)
            ring.in_flight()
            _burst(probe, 10)  # the next walk resumes where this one stopped
            assert (ring.waiting()[1][6], ring.in_flight()) == (_one_by_one(ring)[1][6], _one_by_one(ring)[0])
        finally:
            ring.close()
