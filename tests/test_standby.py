"""A standby controller (issue 17, item 5) and SIGTERM to `start` (issue 20, item 4), with real
`migrator start` processes on a real store (SQLite, and PostgreSQL when MIGRATOR_TEST_PG_URL is set).

The hosts are played by a feeder thread in the test: each window it reads every host's desired
mode, reports it applied (unless told to hold back), heartbeats and stores a clean perf and ring
window through the agents' write path (api.record_windows), so the controllers move the
migration by themselves as they would with real agents.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import window
from migrator.config import load_config
from migrator.store import api, open_store
from migrator.store.models import Host, Migration, Transition

pytestmark = pytest.mark.usefixtures("backend")

WINDOW = 0.5
PLAN = f"""
hosts = ["h1", "h2"]
slices = [1, 2]
window_seconds = {WINDOW}
rollback_after = 3
[phases.dual_instrument]
min_clean_windows = 2
[phases.shadow]
min_clean_windows = 2
[phases.canary]
min_clean_windows = 2
"""


def migrator(*args: str) -> list[str]:
    return [sys.executable, "-m", "migrator", *args]


@pytest.fixture
def planned(tmp_path):
    """(config path, session factory, migration id) of a PLANNED migration made by `migrator init`."""
    path = tmp_path / "canary.toml"
    path.write_text(PLAN)
    r = subprocess.run(migrator("init", str(path)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = load_config(path)
    sf = open_store(cfg.database_url)
    with sf() as s:
        mid = api.active_migration(s).id
    yield path, sf, mid
    sf.dispose()


class Hosts(threading.Thread):
    """Plays the agents of every host: applied mode, heartbeat, and one clean window per channel."""

    def __init__(self, sf, mid: int) -> None:
        super().__init__(daemon=True)
        self.sf, self.mid = sf, mid
        self.stop, self.hold = threading.Event(), threading.Event()  # hold: do not apply new modes
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                index = int(time.time() / WINDOW)
                end = (index + 1) * WINDOW
                self.stop.wait(max(0.0, end - time.time()))
                with self.sf() as s, s.begin():
                    hosts = s.execute(select(Host.name, Host.desired_mode, Host.applied_mode)
                                      .where(Host.migration_id == self.mid)).all()
                    for name, desired, applied in hosts:
                        mode = applied if self.hold.is_set() else desired
                        if mode is None:
                            continue
                        if mode != applied:
                            api.report_applied(s, self.mid, name, mode)
                        else:
                            api.heartbeat(s, self.mid, name)
                        api.record_windows(s, self.mid, [  # conftest's windows last 1 s: ours WINDOW
                            replace(window(name, ch, index, mode=mode, start=index * WINDOW), end=end)
                            for ch in ("perf", "ring")])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def wait_for(what, timeout: float, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = what()
        if v:
            return v
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args} exited {p.returncode}: {Path(p.stderr.name).read_text()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s")


def start(path: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`migrator start` with its stderr in `log` (read while it runs)."""
    err = open(log, "w")
    return subprocess.Popen(migrator("start", "-c", str(path), *extra), stdout=subprocess.DEVNULL, stderr=err,
                            text=True)


def lease_holder(sf, mid):
    with sf() as s:
        lease = api.lease_of(s, mid)
        return lease.holder if lease is not None else None


def pid_of(holder: str | None) -> int | None:
    return int(holder.split(":")[1]) if holder else None


def kill(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.mark.slow
def test_standby_takes_over_from_a_sigkilled_controller_in_canary_and_finishes_its_transition(planned, tmp_path):
    path, sf, mid = planned
    hosts = Hosts(sf, mid)
    hosts.start()
    a = start(path, tmp_path / "a.log", "--confirm-timeout", "60")
    b = None
    try:
        holder_a = wait_for(lambda: (h := lease_holder(sf, mid)) and pid_of(h) == a.pid and h, 30, [a])
        b = start(path, tmp_path / "b.log", "--confirm-timeout", "60")
        # B stands by, naming A, and writes nothing.
        wait_for(lambda: "standing by" in (tmp_path / "b.log").read_text(), 30, [a, b])
        assert f"is driven by controller {holder_a!r}" in (tmp_path / "b.log").read_text()
        def in_canary_1():
            with sf() as s:
                m = s.get(Migration, mid)
                return (m.phase, m.slice, m.pending_transition_id) == ("CANARY", 1, None)

        wait_for(in_canary_1, 60, [a, b])
        hosts.hold.set()  # from now on the hosts confirm no new mode: A's next move stays half-done

        def half_done():
            with sf() as s:
                m = s.get(Migration, mid)
                if m.pending_transition_id is None:
                    return None
                t = s.get(Transition, m.pending_transition_id)
                desired = dict(s.execute(select(Host.name, Host.desired_mode).where(Host.migration_id == mid)).all())
                assert (t.from_phase, t.from_slice, t.to_phase, t.to_slice) == ("CANARY", 1, "CANARY", 2)
                return t.id if desired == {"h1": "RING", "h2": "RING"} else None

        tid = wait_for(half_done, 60, [a, b])
        a.send_signal(signal.SIGKILL)  # A dies between writing the modes and their confirmation
        assert a.wait(10) == -signal.SIGKILL
        with sf() as s:
            assert s.get(Migration, mid).phase == "CANARY" and s.get(Migration, mid).pending_transition_id == tid
        hosts.hold.clear()
        assert b.wait(90) == 0, (tmp_path / "b.log").read_text()
    finally:
        hosts.stop.set()
        kill(a, *(p for p in [b] if p is not None))
        hosts.join(10)
    assert hosts.error is None
    err = (tmp_path / "b.log").read_text()
    assert f"migration {mid}: taking over from controller {holder_a!r}" in err
    assert f"finished transition {tid} (CANARY slice 1 -> CANARY slice 2" in err  # the half-done one, once
    with sf() as s:
        rows = s.execute(select(Transition.id, Transition.from_phase, Transition.from_slice, Transition.to_phase,
                                Transition.to_slice, Transition.status, Transition.holder)
                         .where(Transition.migration_id == mid).order_by(Transition.id)).all()
        assert [(r.from_phase, r.from_slice, r.to_phase, r.to_slice) for r in rows] == [
            ("PLANNED", 0, "DUAL_INSTRUMENT", 0), ("DUAL_INSTRUMENT", 0, "SHADOW", 0), ("SHADOW", 0, "CANARY", 1),
            ("CANARY", 1, "CANARY", 2), ("CANARY", 2, "COMPLETE", 0)]  # each exactly once, none lost
        assert {r.status for r in rows} == {"confirmed"}
        by = {(r.from_phase, r.from_slice): r.holder for r in rows}
        assert by[("CANARY", 1)] == holder_a  # written by A, finished by B
        assert pid_of(by[("CANARY", 2)]) == b.pid  # B drove it to the end
        m = s.get(Migration, mid)
        assert (m.phase, m.pending_transition_id) == ("COMPLETE", None)
        assert api.lease_of(s, mid) is None  # B released it on exit
        assert {h["desired_mode"] for h in api.hosts(s, mid)} == {"RING"}


def test_sigterm_to_start_releases_its_lease_and_a_standby_takes_over_at_once(planned, tmp_path):
    path, sf, mid = planned
    a = start(path, tmp_path / "a.log")
    b = None
    try:
        holder_a = wait_for(lambda: (h := lease_holder(sf, mid)) and pid_of(h) == a.pid and h, 30, [a])
        assert holder_a.startswith(f"{socket.gethostname()}:{a.pid}:")
        b = start(path, tmp_path / "b.log")
        wait_for(lambda: "standing by" in (tmp_path / "b.log").read_text(), 30, [a, b])
        t0 = time.monotonic()
        a.send_signal(signal.SIGTERM)
        assert a.wait(15) == 128 + signal.SIGTERM  # as Ctrl-C's 130: 128 + the signal
        err_a = (tmp_path / "a.log").read_text()
        assert f"migration {mid}: controller stopped by SIGTERM; it holds no lease now" in err_a
        assert "Terminated (SIGTERM): cleaned up as for Ctrl-C." in err_a
        # Released, not left to expire (15 s): B has it within a few standby polls.
        holder_b = wait_for(lambda: (h := lease_holder(sf, mid)) and pid_of(h) == b.pid and h, 10, [b])
        assert time.monotonic() - t0 < 10 and holder_b != holder_a
        b.send_signal(signal.SIGTERM)
        assert b.wait(15) == 128 + signal.SIGTERM
    finally:
        kill(a, *(p for p in [b] if p is not None))
    assert lease_holder(sf, mid) is None
    assert f"taking over from controller {holder_a!r}" in (tmp_path / "b.log").read_text()
    with sf() as s:
        assert [(h["from"], h["to"]) for h in api.history(s, mid)] == [("PLANNED", "DUAL_INSTRUMENT")]
