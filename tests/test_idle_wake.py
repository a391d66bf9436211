"""A quiet feed sleeps: with ring wakeups, or in PERF with the ring's doorbell, an idle wait lasts
the caller's whole timeout, and a record or a write to a wake fd (the database link's eventfd)
ends it at once."""
import os
import threading
import time

import pytest

from kernel_util import needs_root, one_event_while_asleep
from migrator.agent.feed import Feed
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.schema import demo_registry

pytestmark = [pytest.mark.kernel, needs_root]


def _feed(probe: Probe, mode: str = "DUAL", ring_wakeup: bool = True) -> Feed:
    return Feed(probe.bpf, "events", channel=probe.channel, mode=mode, registry=demo_registry(),
                batch_interval=0.01, ring_wakeup=ring_wakeup)


def _quiet(feed: Feed) -> None:
    """Drain until a drain finds nothing (the pipeline is then in its idle wait)."""
    while feed.pipe.poll(timeout=0.02):
        pass


def test_idle_wait_lasts_the_timeout_and_a_record_ends_it():
    with Probe("synthetic") as probe:
        feed = _feed(probe)
        try:
            assert feed.pipe.records_wake and feed.mode == "DUAL"
            time.sleep(0.05)  # past the batch clock kept after the switch to DUAL
            _quiet(feed)
            t0 = time.monotonic()
            assert feed.pipe.poll(timeout=0.4) == 0
            assert time.monotonic() - t0 >= 0.38  # one wait, not one per batch interval
            gen = LoadGen(1, rate=0)
            probe.set_target(gen.pid)
            timer = threading.Timer(0.1, gen.start)
            t0 = time.monotonic()
            timer.start()
            n = feed.pipe.poll(timeout=3.0)
            woke = time.monotonic() - t0
            assert gen.wait(timeout=10) == 0
            while feed.pipe.delivered_total != {"perf": 1, "ring": 1} and time.monotonic() - t0 < 5:
                feed.pipe.poll(timeout=0.05)
            assert n >= 1 and woke < 1.0  # the ring's wakeup, not the 3 s timeout
            assert feed.pipe.delivered_total == {"perf": 1, "ring": 1}
        finally:
            feed.close()


def test_a_wake_fd_ends_the_idle_wait_and_is_cleared():
    with Probe("synthetic") as probe:
        feed = _feed(probe)
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            feed.pipe.add_wake_fd(fd)
            time.sleep(0.05)
            _quiet(feed)
            threading.Timer(0.1, os.eventfd_write, (fd, 1)).start()
            t0 = time.monotonic()
            assert feed.pipe.poll(timeout=3.0) == 0
            assert 0.05 < time.monotonic() - t0 < 1.0
            with pytest.raises(BlockingIOError):  # read by the pipeline: the next wait is not ended by it
                os.eventfd_read(fd)
        finally:
            feed.close()
            os.close(fd)


def test_without_ring_wakeups_the_batch_clock_bounds_an_idle_wait():
    # DUAL with BPF_RB_NO_WAKEUP, perf below its watermark: a record wakes nobody, the batch clock finds it.
    with Probe("synthetic") as probe:
        feed = _feed(probe, mode="DUAL", ring_wakeup=False)
        try:
            assert not feed.pipe.records_wake
            _quiet(feed)
            n, waited = one_event_while_asleep(probe, feed.pipe, timeout=3.0)
            assert n == 2  # its perf and ring copies
            assert waited < 1.0  # found by the 10 ms clock (room for a busy machine), not the 3 s timeout
        finally:
            feed.close()


@pytest.mark.parametrize("ring_wakeup,waits", [(True, {"DUAL": True, "PERF": True, "RING": True}),
                                               (False, {"DUAL": False, "PERF": True, "RING": False})])
def test_which_modes_wait_without_a_clock(ring_wakeup, waits):
    """Records wake the reader: the ring's producer with ring wakeups (DUAL, RING), the ring's doorbell
    in PERF whatever the ring's wakeup knob (the ring then carries no records)."""
    with Probe("synthetic") as probe:
        feed = _feed(probe, ring_wakeup=ring_wakeup)
        try:
            got = {}
            for mode in ("DUAL", "PERF", "RING"):
                feed.set_mode(mode)
                got[mode] = feed.pipe.records_wake
                assert feed.pipe.announce_sleep is (mode == "PERF")
            assert got == waits
        finally:
            feed.close()


def test_an_idle_perf_reader_sleeps_without_a_clock_and_the_doorbell_wakes_it():
    """In PERF the ring carries no records, and perf below its watermark wakes nobody: a reader that
    announced its sleep is woken by the ring's doorbell (a discarded reservation with a forced
    wakeup, bpf/migrator.h), so an idle PERF host waits its whole timeout in one epoll wait instead
    of one per batch interval, and the doorbell is no event: no ring attempt, one seq per record."""
    import migrator

    with Probe("synthetic") as probe:  # adaptive ring wakeups, perf woken by its watermark
        feed = migrator.attach(probe.bpf, "events", registry=demo_registry(), mode="PERF")
        pipe = feed.pipe
        try:
            assert (pipe.perf.wakeup_events, pipe.records_wake, pipe.announce_sleep) == (0, True, True)
            time.sleep(3 * pipe.batch_interval)  # past the batch clock a switch keeps
            pipe.drain()
            waits = pipe._native.waits
            assert pipe.poll(timeout=0.3) == 0
            assert pipe._native.waits - waits == 1  # one wait for the whole timeout, not one per 5 ms batch interval
            before, seq = probe.counters(), probe.next_seq
            n, waited = one_event_while_asleep(probe, pipe, timeout=5.0)
            after = probe.counters()
            assert n == 1  # the perf record; the doorbell is skipped like any discarded reservation
            assert waited < 2.0  # woken by the doorbell, not by the 5 s timeout
            assert probe.channel._word() & 0x100 == 0  # the bit is cleared once awake
            assert (probe.next_seq - seq, (after["perf"] - before["perf"]).ok,
                    (after["ring"] - before["ring"]).attempts) == (1, 1, 0)
            feed.set_mode("DUAL")  # the ring carries the records now: no doorbell to ask for
            assert pipe.announce_sleep is False
        finally:
            feed.close()


@pytest.mark.sqlite_only
def test_the_link_wakes_its_eventfd_when_the_desired_mode_changes(config, session_factory):
    from sqlalchemy import update

    from migrator.agent.link import DbLink
    from migrator.store.api import create_migration
    from migrator.store.models import Host

    with session_factory() as s, s.begin():
        mid = create_migration(s, config).id
    link = DbLink(session_factory, mid, "h1", poll=0.01)
    fd = link.wake_fd
    link.start()
    try:
        t_end = time.monotonic() + 5
        while link.desired is None and time.monotonic() < t_end:
            time.sleep(0.01)
        assert link.desired.mode == "PERF"
        assert os.eventfd_read(fd) == 1  # the first reading is a change too
        time.sleep(0.1)  # several round trips, nothing changed: no wake
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
        with session_factory() as s, s.begin():
            s.execute(update(Host).where(Host.migration_id == mid, Host.name == "h1").values(desired_mode="DUAL"))
        t_end = time.monotonic() + 5
        while (link.desired is None or link.desired.mode != "DUAL") and time.monotonic() < t_end:
            time.sleep(0.01)
        assert link.desired.mode == "DUAL"
        assert os.eventfd_read(fd) == 1
    finally:
        link.stop()
    assert link.wake_fd is None  # closed with the thread
