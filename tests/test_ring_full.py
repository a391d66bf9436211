"""A tiny ring under a burst: every refusal is counted and attributed to "full"."""
import pytest

from kernel_util import needs_root
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.readers import RingConsumer
from migrator.dataplane.loadgen import LoadGen

pytestmark = [pytest.mark.kernel, needs_root]
N = 50_000


@pytest.mark.parametrize("submit", ["reserve", "output"])
def test_tiny_ring_burst_balances_and_attributes_drops(submit):
    with Probe("synthetic", ring_bytes=4096, ring_submit=submit) as probe:
        ring = RingConsumer(probe.ring_map_fd, probe.ring_bytes)
        try:
            probe.set_mode("RING")
            gen = LoadGen(N, rate=0)
            probe.set_target(gen.pid)
            gen.start()
            assert gen.wait(timeout=60) == 0  # nothing consumes during the burst
            delivered = len(ring.consume())
            counters = probe.counters()
            c = counters["ring"]
            assert ring.in_flight() == 0
        finally:
            ring.close()
    assert c.attempts == N
    assert c.ok == delivered
    assert delivered + c.full + c.other == N
    assert c.full > 0 and c.other == 0
    # 4096 bytes hold exactly 51 records of 8 (ring header) + 32 (migrator header) + 40 (payload)
    assert delivered == 4096 // 80
    assert counters["perf"].attempts == 0  # RING mode never touches perf
