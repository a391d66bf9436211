"""Switching the mode map PERF -> RING -> PERF while events flow: no event lost or misrouted."""
import time

import numpy as np
import pytest

from kernel_util import collect, needs_root, records
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline
from migrator.shared.vocab import MODE_VALUES

pytestmark = [pytest.mark.kernel, needs_root]


def test_switch_perf_ring_perf_under_load():
    n = 300_000
    with Probe("synthetic") as probe:
        # 1 MiB per CPU: routing is under test here, not perf's tolerance of a busy machine
        pipe = Pipeline(probe, keep_records=True, perf_pages=256)
        try:
            probe.set_mode("PERF")
            gen = LoadGen(n, rate=100_000)  # ~3 s of steady flow
            probe.set_target(gen.pid)
            gen.start()
            switches = []
            for mode in ("RING", "PERF"):
                t_end = time.monotonic() + 0.8
                while time.monotonic() < t_end:
                    pipe.poll(timeout=0.01)
                before = probe.next_seq
                probe.set_mode(mode)
                switches.append((before, probe.next_seq))  # the switch took effect in between
            collect(pipe, lambda: not gen.running(), timeout=60)
            assert gen.wait(timeout=10) == 0
            w = {x.channel: x for x in pipe.close_window()}
            perf, ring = records(pipe, "perf"), records(pipe, "ring")
        finally:
            pipe.close()

    total = w["perf"].attempts + w["ring"].attempts
    assert total == n  # every event attempted on exactly one channel
    assert w["perf"].dropped + w["perf"].lost + w["ring"].dropped == 0
    seqs = np.concatenate([perf["seq"], ring["seq"]])
    assert np.array_equal(np.sort(seqs), np.arange(n, dtype=np.uint64))  # none missing, none twice
    # each record went where the mode it was stamped with says
    assert set(np.unique(perf["flags"] & 3)) == {MODE_VALUES["PERF"]}
    assert set(np.unique(ring["flags"] & 3)) == {MODE_VALUES["RING"]}
    # and the modes changed where the map writes happened: between the seqs read around each write
    # (a seq is taken after the mode is read, so an emit in flight at the write, one per CPU at
    # most, may still take a seq after the second read)
    (b1, a1), (b2, a2) = switches
    assert 0 < len(ring) < n
    assert b1 <= ring["seq"].min() <= a1 + 4 and b2 <= ring["seq"].max() + 1 <= a2 + 4
    assert perf["seq"].min() == 0 and perf["seq"].max() == n - 1
