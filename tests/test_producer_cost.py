"""What the ring costs the traced code: producer_ns per window and channel, and rule producer_cost.

- the kernel side: both channels time exactly the seqs MIGRATOR_TIMED picks, and the window
  carries their mean as producer_ns (how the means compare is `migrator bench producer`'s job);
- the rule: a canary whose RING host's emit costs more than max_producer_ratio x the PERF
  hosts' (or max_producer_ns) rolls back with rule producer_cost after exactly N windows, and
  what-if on the stored windows reproduces it; a window that timed nothing is not judged by it.
"""
from __future__ import annotations

import json
import pytest

from conftest import T0, RecordingApplier, record, window
from kernel_util import needs_root, one_event_while_asleep
from migrator.config import Thresholds, load_config
from migrator.control.controller import Controller
from migrator.control.moves import what_if_report
from migrator.control.phases import DbApplier, Phase, transition
from migrator.control.policy import BREACH, PASS, Baseline, judge_host
from migrator.store import api, open_store
from migrator.store.models import Migration, Transition

N = 3


# ---- the rule, on recorded windows -------------------------------------------------------------

def _w(channel: str, mode: str, producer_ns: float | None, attempts: int = 1000):
    return window("h1", channel, 0, mode=mode, attempts=attempts, producer_ns=producer_ns)


@pytest.mark.parametrize("ring_ns,perf_ns,verdict,ratio", [
    (1500.0, 800.0, PASS, 1.875),      # adaptive wakeups at 2k ev/s, as measured here
    (7000.0, 800.0, BREACH, 8.75),     # force_wakeup: over both limits
    (3300.0, 800.0, BREACH, 4.125),    # over the ratio only
    (4000.0, 1100.0, PASS, 4000 / 1100),
    (None, 800.0, PASS, None),         # nothing timed (MIGRATOR_TIME_EVERY=0): not judged by it
])
def test_producer_cost_against_the_perf_baseline(ring_ns, perf_ns, verdict, ratio):
    th = Thresholds()
    hv = judge_host("h1", _w("ring", "DUAL", ring_ns), Baseline.of([_w("perf", "DUAL", perf_ns)]), th,
                    expected_mode="DUAL", relative=True, need_baseline=True)
    assert (hv.verdict, hv.rule if verdict == BREACH else "ok") == (verdict, "producer_cost" if verdict == BREACH else "ok")
    assert hv.values.get("producer_ratio") == ratio
    assert hv.values.get("producer_ns") == ring_ns


def test_absolute_limit_applies_without_a_baseline():
    th = Thresholds(max_producer_ratio=None, max_producer_ns=2000.0)
    hv = judge_host("h1", _w("ring", "DUAL", 2500.0), None, th, expected_mode="DUAL", relative=False)
    assert (hv.verdict, hv.rule, hv.values["producer_ns"], hv.values["max_producer_ns"]) == (
        BREACH, "producer_cost", 2500.0, 2000.0)


# ---- the controller and what-if, on a real database ---------------------------------------------


@pytest.mark.usefixtures("backend")
def test_a_canary_whose_ring_costs_the_traced_code_rolls_back_after_n_windows(toml_file):
    cfg = load_config(toml_file(
        f'hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = {N}\n'
        "[phases.canary]\nmin_clean_windows = 10\n"))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    for tgt, sl in [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0), (Phase.CANARY, 1)]:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier(), clock=lambda: T0)
    ctl = Controller(sf, mid, applier=RecordingApplier(), clock=lambda: T0)
    # h1 is the slice on RING; h2, h3 the PERF baseline at ~800 ns per emit. h1's ring emit: cheap,
    # then forced wakeups (~7,000 ns) from index 2 on: breaches at 2, 3, 4 -> rollback at index 4.
    costs = [1500.0, 1400.0, 7000.0, 6800.0, 7200.0]
    ring_ids, targets = [], []
    for i, ns in enumerate(costs):
        with sf() as s, s.begin():
            ring_ids.append(record(s, mid, window("h1", "ring", i, mode="RING", producer_ns=ns)))
            for h, pns in (("h2", 800.0), ("h3", 820.0)):
                record(s, mid, window(h, "perf", i, mode="PERF", producer_ns=pns))
        with sf() as s, s.begin():
            targets.append(ctl.step(s, T0 + 1000).target)
    assert targets == [None, None, None, None, "ROLLED_BACK"]
    ctl.finish()
    with sf() as s:
        assert s.get(Migration, mid).phase == "ROLLED_BACK"
        t = s.query(Transition).filter_by(migration_id=mid, to_phase="ROLLED_BACK").one()
        assert json.loads(t.window_ids) == ring_ids[2:]
        assert "producer_cost" in t.reason
        rep = what_if_report(s, mid)
    assert rep["would_roll_back"] is True
    assert rep["rollback_at"]["window_ids"] == ring_ids[2:]
    assert rep["verdicts"] == {"pass": 2, "breach": 3, "no-data": 0}
    with sf() as s:  # a looser ratio and absolute limit: the same windows would not have rolled back
        assert what_if_report(s, mid, max_producer_ratio=10.0, max_producer_ns=10_000.0)["would_roll_back"] is False


# ---- the kernel: producer_ns of both channels, by wakeup policy -------------------------------

def _timed(seq: int, every: int = 16) -> bool:
    """MIGRATOR_TIMED(seq) of bpf/migrator.h: one seq in `every`, picked by a multiplicative hash."""
    return (seq * 2654435761) & 0xFFFFFFFF < 0xFFFFFFFF // every


@pytest.mark.kernel
@needs_root
@pytest.mark.parametrize("wakeup", ["adaptive", "no_wakeup"])
def test_each_channel_times_exactly_the_seqs_the_hash_picks(wakeup):
    """The cost of an emit is sampled, not guessed: both channels time the emit of exactly the seqs
    MIGRATOR_TIMED picks (so perf and ring are timed on the same records), and the shadow windows
    carry the mean as producer_ns. How the means compare by wakeup policy is a measurement for
    `migrator bench producer`, not for a test on a shared machine."""
    from migrator.dataplane.demo_probes import Probe
    from migrator.dataplane.loadgen import LoadGen
    from migrator.dataplane.pipeline import Pipeline

    events = 3000
    with Probe("synthetic", wakeup=wakeup) as probe:
        pipe = Pipeline(probe, batch_interval=0.01)
        try:
            probe.set_mode("DUAL")
            first = probe.next_seq
            before = probe.counters()
            with LoadGen(events, rate=0) as gen:
                probe.set_target(gen.pid)
                gen.start()
                assert gen.wait(timeout=30) == 0
            pipe.drain()
            last = probe.next_seq
            got = {ch: c - before[ch] for ch, c in probe.counters().items()}
            windows = pipe.close_window(0)
        finally:
            pipe.close()
    assert last - first == events
    picked = sum(_timed(s) for s in range(first, last))
    assert picked > 0
    for ch in ("perf", "ring"):
        # every attempt is timed or not by its seq alone, whether the buffer took it or not
        assert (got[ch].attempts, got[ch].ok + got[ch].full + got[ch].other, got[ch].timed) == (
            events, events, picked), ch
        assert got[ch].ns > 0
    by_ch = {w.channel: w for w in windows}
    for ch in ("perf", "ring"):
        assert by_ch[ch].producer_ns == round(got[ch].ns / picked, 1)  # windows keep 0.1 ns
        assert by_ch[ch].peak_bytes > 0


@pytest.mark.kernel
@needs_root
def test_batched_wakeups_wake_a_sleeping_reader_and_only_then():
    """batched: a reader that sleeps without a clock (mode word bit 8) is woken by the first record;
    while it is not sleeping, records wake nobody (the ring's emit costs what no_wakeup's does)."""
    import time

    from migrator.dataplane.demo_probes import Probe
    from migrator.dataplane.pipeline import Pipeline

    with Probe("synthetic", wakeup="batched") as probe:
        pipe = Pipeline(probe, batch_interval=0.01)
        try:
            probe.set_mode("DUAL")
            pipe.records_wake = True
            assert pipe.announce_sleep is True
            time.sleep(0.05)  # past the batch clock a switch keeps
            n, waited = one_event_while_asleep(probe, pipe, timeout=5.0)
            assert n == 2  # the record's perf and ring copies
            assert waited < 2.0  # woken by the record, not by the 5 s timeout
            assert probe.channel._word() & 0x100 == 0  # the bit is cleared once awake
        finally:
            pipe.close()

