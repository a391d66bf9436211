"""One process per host (issue 20, item 1): the host lease every serving process takes through its
DbLink. A second one is refused naming the holder, touches nothing of the first (whose windows keep
arriving), and takes over at once when the first is SIGKILLed (its pid is gone) or when its lease lapses."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from conftest import AGENT_PLAN
from kernel_util import needs_root
from migrator.config import load_config
from migrator.errors import HostLeaseHeld
from migrator.store import open_store
from migrator.store.hostlease import holder_dead, process_start, release_host_lease, take_host_lease, this_holder
from migrator.store.models import HostLease, Window


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def sleeper():
    """A live process of this machine to stand for another host process, and its holder id."""
    p = subprocess.Popen(["sleep", "60"])
    yield p, f"{socket.gethostname()}:{p.pid}:{process_start(p.pid)}"
    p.kill()
    p.wait()


def lease(sf, host="h1"):
    with sf() as s:
        row = s.get(HostLease, host)
        return None if row is None else (row.holder, row.expires_at)


def test_holder_names_machine_pid_and_start_time(sleeper):
    proc, holder = sleeper
    me = this_holder()
    assert me.split(":")[:2] == [socket.gethostname(), str(__import__("os").getpid())]
    assert not holder_dead(me) and not holder_dead(holder)
    machine, pid, start = holder.split(":")
    assert holder_dead(f"{machine}:{pid}:{int(start) + 1}")  # same pid, another process: not the holder
    assert not holder_dead(f"elsewhere:{pid}:{start}")  # another machine's process is never judged here
    proc.kill()
    proc.wait()
    assert holder_dead(holder)


def test_refused_while_live_taken_when_lapsed_or_dead(started, sleeper):
    _, sf, mid = started
    proc, theirs = sleeper
    now = time.time()
    with sf() as s, s.begin():
        assert take_host_lease(s, "h1", theirs, now, 10.0, mid) is None
    with sf() as s, s.begin(), pytest.raises(HostLeaseHeld) as exc:
        take_host_lease(s, "h1", "me:1:1", now + 1, 10.0, mid)
    expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now + 10.0))
    assert str(exc.value) == (f"host 'h1' is already served by {theirs!r} (host lease until {expires}); one process "
                              "per host: stop that one first, or wait for its lease to lapse (a dead process on "
                              "this machine is taken over at once)")
    assert (exc.value.host, exc.value.holder, exc.value.exit_code) == ("h1", theirs, 3)
    # Another machine's holder: refused until the lease lapses, then taken over (within one lease).
    with sf() as s, s.begin():
        s.get(HostLease, "h1").holder = "elsewhere:42:7"
    with sf() as s, s.begin(), pytest.raises(HostLeaseHeld):
        take_host_lease(s, "h1", "me:1:1", now + 9.9, 10.0, mid)
    with sf() as s, s.begin():
        assert take_host_lease(s, "h1", "me:1:1", now + 10.1, 10.0, mid) == "elsewhere:42:7"
    # A dead holder of this machine: at once, long before its lease would lapse.
    with sf() as s, s.begin():
        row = s.get(HostLease, "h1")
        row.holder, row.expires_at = theirs, now + 3600
    proc.kill()
    proc.wait()
    with sf() as s, s.begin():
        assert take_host_lease(s, "h1", "me:1:1", now + 2, 10.0, mid) == theirs
    with sf() as s, s.begin():
        release_host_lease(s, "h1", "someone else")  # only its own
    assert lease(sf)[0] == "me:1:1"


def test_library_attach_is_refused_before_touching_the_program(started, sleeper):
    """attach(config=, host=) goes through the same DbLink: refused with the holder named; the bpf
    object (None here) is never touched, so the live process's program and hooks are left alone."""
    import migrator

    cfg, sf, mid = started
    _, theirs = sleeper
    with sf() as s, s.begin():
        take_host_lease(s, "h1", theirs, time.time(), 30.0, mid)
    with pytest.raises(HostLeaseHeld) as exc:
        migrator.attach(None, "events", config=cfg.path, host="h1")
    assert exc.value.holder == theirs
    assert lease(sf)[0] == theirs


def test_link_takes_renews_and_releases(started):
    from migrator.agent.link import DbLink

    _, sf, mid = started
    link = DbLink(sf, mid, "h1", poll=0.01, lost_after=1.0)
    assert lease(sf)[0] == this_holder() and link.lease_ttl == 5.0
    first = lease(sf)[1]
    link._lease_due = 0.0  # renew on the first round trip
    link.start()
    try:
        wait_for(lambda: lease(sf)[1] > first, timeout=5)
    finally:
        link.stop()
    assert lease(sf) is None  # released on stop


def test_link_whose_lease_was_taken_stops_writing(started, sleeper):
    from migrator.agent.link import DbLink

    _, sf, mid = started
    _, theirs = sleeper
    link = DbLink(sf, mid, "h1", poll=0.01, lost_after=1.0)
    link.start()
    try:
        with sf() as s, s.begin():  # as if another process took it over while this one was cut off
            row = s.get(HostLease, "h1")
            row.holder, row.expires_at = theirs, time.time() + 60
        link._lease_due = 0.0
        wait_for(lambda: link.lease_lost == theirs, timeout=5)
        assert not link.up  # the data path holds PERF; the agent loop stops on it
    finally:
        link.stop()
    assert lease(sf)[0] == theirs  # never released by the process that lost it


# ---- real agents --------------------------------------------------------------------------------

def agent_proc(cfg, seconds=None, **kw):
    cmd = [sys.executable, "-m", "migrator", "agent", "--host", "h1", "-c", cfg.path]
    if seconds:
        cmd += ["--seconds", str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def attempts_since(sf, mid, t0, channel="ring"):
    with sf() as s:
        return s.scalar(select(func.coalesce(func.sum(Window.attempts), 0)).where(
            Window.migration_id == mid, Window.channel == channel, Window.start >= t0)), \
            s.scalar(select(func.count()).where(Window.migration_id == mid, Window.channel == channel,
                                                 Window.start >= t0))


@pytest.mark.kernel
@needs_root
def test_second_agent_refused_while_the_first_lives_takes_over_after_sigkill(started):
    cfg, sf, mid = started
    first = agent_proc(cfg)
    try:
        wait_for(lambda: attempts_since(sf, mid, 0)[1] >= 2, timeout=30)
        holder = lease(sf)[0]
        assert holder.split(":")[1] == str(first.pid)
        t0 = time.time()
        second = agent_proc(cfg)
        out, err = second.communicate(timeout=30)
        assert second.returncode == 3
        expires = lease(sf)[1]
        lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
        assert len(lines) == 1 and lines[0].startswith(f"Error: host 'h1' is already served by {holder!r} (host lease until ")
        assert lines[0].endswith("); one process per host: stop that one first, or wait for its lease to lapse "
                                 "(a dead process on this machine is taken over at once)")
        assert expires > t0
        # The first never went blind: its windows keep arriving, with events, after the refusal.
        after = time.time()
        wait_for(lambda: attempts_since(sf, mid, after)[1] >= 3, timeout=10)
        assert attempts_since(sf, mid, after)[0] > 0
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = time.time()
        third = agent_proc(cfg, seconds=4)
        try:
            # Within one lease (its pid is gone on this machine: at once), it serves the host.
            wait_for(lambda: (lease(sf) or ("",))[0].split(":")[1:2] == [str(third.pid)], timeout=cfg.window_seconds * 2 + 5)
            assert time.time() - killed < 5.0 + 5  # one lease (5 s minimum) plus start-up
            wait_for(lambda: attempts_since(sf, mid, killed)[0] > 0, timeout=15)
            out, err = third.communicate(timeout=30)
            assert third.returncode == 0, err
            assert "took the host lease over from" in err
        finally:
            if third.poll() is None:
                third.kill()
                third.wait()
        assert lease(sf) is None  # released at its --seconds
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
