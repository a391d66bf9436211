"""A quiet feed sleeps: with ring wakeups an idle wait lasts the caller's whole timeout, and a
record or a write to a wake fd (the database link's eventfd) ends it at once."""
import os
import threading
import time

import pytest

from kernel_util import needs_root
from migrator.agent.feed import Feed
from migrator.dataplane.loader import Probe
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


@pytest.mark.parametrize("mode,ring_wakeup", [("PERF", True), ("DUAL", False)])
def test_without_ring_wakeups_the_batch_clock_bounds_an_idle_wait(mode, ring_wakeup):
    # PERF: a record below perf's watermark wakes nobody; no_wakeup rings neither.
    with Probe("synthetic") as probe:
        feed = _feed(probe, mode=mode, ring_wakeup=ring_wakeup)
        try:
            assert not feed.pipe.records_wake
            _quiet(feed)
            t0 = time.monotonic()
            assert feed.pipe.poll(timeout=1.0) == 0
            assert time.monotonic() - t0 < 0.2  # one batch interval (10 ms), with room for a busy machine
        finally:
            feed.close()


def test_switching_to_perf_turns_the_long_wait_off_and_back():
    with Probe("synthetic") as probe:
        feed = _feed(probe)
        try:
            assert feed.pipe.records_wake
            feed.set_mode("PERF")
            assert not feed.pipe.records_wake
            feed.set_mode("RING")
            assert feed.pipe.records_wake
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
