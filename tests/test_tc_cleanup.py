"""Everything attached is detached: the demo tc probe's filter sits at an explicit priority and
handle, is recorded on disk, goes on every exit (SIGTERM, SIGINT, --seconds), and a killed agent's
filter is removed by the next agent of its host, found by that record. Read back with `tc filter
show` inside the lab host's namespace."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app
from migrator.dataplane.tc import PRIO
from migrator.tools.lab import lab_down, lab_up

pytestmark = [pytest.mark.kernel, needs_root]
PREFIX = f"tc{os.getpid() % 1000}c"  # never the operator's "mig"; unique per test run


def filters(host) -> list[str]:
    """The BPF filter lines on the host's ingress hook, as tc prints them."""
    out = subprocess.run(["ip", "netns", "exec", host.netns, "tc", "filter", "show", "dev", host.host_if, "ingress"],
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if " bpf " in line and " handle " in line]


@pytest.fixture
def lab():
    lab_down(PREFIX)
    host = lab_up(1, PREFIX)[0]
    yield host
    lab_down(PREFIX)


@pytest.fixture
def cfg(tmp_path, lab):
    p = tmp_path / "canary.toml"
    p.write_text(f'hosts = ["{lab.name}"]\nslices = [1]\nwindow_seconds = 0.5\n[probe]\nname = "tc"\n')
    assert CliRunner().invoke(app, ["init", str(p)]).exit_code == 0
    return p


def agent(cfg, host, run_dir, *extra):
    env = {**os.environ, "MIGRATOR_RUN_DIR": str(run_dir)}
    return subprocess.Popen([sys.executable, "-m", "migrator", "agent", "--host", host.name, "-c", str(cfg),
                             "--tc-device", host.host_if, "--tc-netns", host.netns, *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def record_of(run_dir, host, pid):
    return run_dir / "attach" / f"{host.name}.{pid}.json"


def wait_attached(proc, run_dir, host, timeout=60.0) -> dict:
    """The agent's record, once it exists (written before the filter is attached) and the filter is there."""
    path = record_of(run_dir, host, proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if path.exists() and filters(host):
            return json.loads(path.read_text())
        time.sleep(0.1)
    raise AssertionError("the agent never attached")


def test_a_killed_agents_filter_is_removed_by_the_next_one_and_every_exit_detaches(cfg, lab, tmp_path):
    run_dir = tmp_path / "run"
    a = agent(cfg, lab, run_dir)
    try:
        rec = wait_attached(a, run_dir, lab)
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(10)
    assert rec["attached"] == [{"type": "tc", "device": lab.host_if, "netns": lab.netns, "direction": "ingress",
                                "prio": PRIO, "handle": 1, "name": "tc_packet"}]
    left = filters(lab)
    assert len(left) == 1 and f"pref {PRIO} " in left[0] and "handle 0x1 " in left[0]  # SIGKILL: still there
    assert record_of(run_dir, lab, a.pid).exists()

    # A restarted agent removes what the dead one left (by its record), then attaches its own: one filter.
    b = agent(cfg, lab, run_dir)
    try:
        wait_attached(b, run_dir, lab)
        assert not record_of(run_dir, lab, a.pid).exists()  # the dead agent's record went with its filter
        assert len(filters(lab)) == 1
        time.sleep(1.0)  # a window or two later: still exactly one
        assert len(filters(lab)) == 1
        b.send_signal(signal.SIGTERM)
        assert b.wait(20) >= 0, b.stderr.read()  # it exited (its exit status is the SIGTERM path's own business)
    finally:
        if b.poll() is None:
            b.kill()
            b.wait(10)
    assert filters(lab) == []
    assert not record_of(run_dir, lab, b.pid).exists()

    # SIGINT (Ctrl-C): same.
    c = agent(cfg, lab, run_dir)
    try:
        wait_attached(c, run_dir, lab)
        c.send_signal(signal.SIGINT)
        assert c.wait(20) >= 0, c.stderr.read()
    finally:
        if c.poll() is None:
            c.kill()
            c.wait(10)
    assert filters(lab) == []
    assert not record_of(run_dir, lab, c.pid).exists()

    # --seconds: the normal end.
    d = agent(cfg, lab, run_dir, "--seconds", "1")
    assert d.wait(60) == 0, d.stderr.read()
    assert filters(lab) == []
    assert list((run_dir / "attach").glob("*.json")) == []


def test_a_live_agents_record_is_never_reaped(tmp_path):
    """reap() touches only records of dead processes; this process's own and a live one's stay."""
    from migrator.dataplane.attachments import AttachRecord, reap

    live = AttachRecord("hx", tmp_path)
    live.add({"type": "tc", "device": "nope0", "netns": None, "direction": "ingress", "prio": PRIO, "handle": 1,
              "name": "tc_packet"})
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        other = tmp_path / f"hx.{sleeper.pid}.json"
        other.write_text(json.dumps({"host": "hx", "pid": sleeper.pid, "start_ticks": None, "attached": []}))
        dead = tmp_path / "hx.999999999.json"
        dead.write_text(json.dumps({"host": "hx", "pid": 999999999, "start_ticks": 1, "attached": [
            {"type": "tc", "device": "nope0", "netns": None, "direction": "ingress", "prio": PRIO, "handle": 1,
             "name": "tc_packet"}]}))
        assert reap("hx", tmp_path) == []  # the dead one's device is gone: nothing to remove, record dropped
        assert live.path.exists() and other.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    live.remove(live.attached[0])
    assert not live.path.exists()
