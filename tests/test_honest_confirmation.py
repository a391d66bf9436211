"""Honest confirmation (issue 20, item 3): a transition is confirmed per host. A lost or dead host is
recorded as lost in the transition (history and status name it), and when its agent returns it
applies what the final phase demands (PERF after a rollback) with no --migration."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import T0
from kernel_util import needs_root
from migrator.control.controller import Controller
from migrator.control.phases import DbApplier, Phase, transition
from migrator.errors import MigratorError
from migrator.store import api
from migrator.store.hostlease import process_start, take_host_lease
from migrator.store.models import Migration, Transition
from test_controller import CANARY1, setup, step


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.05)


def report(sf, mid, host, mode, at):
    with sf() as s, s.begin():
        api.report_applied(s, mid, host, mode, now=at)


def test_dead_ring_host_in_a_rollback_is_recorded_lost_and_owed_perf(toml_file):
    from migrator.agent.loop import serve_migration
    from migrator.cli.views import header_lines, status_document

    sf, mid, _ = setup(toml_file, CANARY1, '[agents]\nlost_after_windows = 2\non_lost = "rollback"')
    report(sf, mid, "h1", "RING", T0 + 5)  # the slice host, on RING
    report(sf, mid, "h2", "PERF", T0 + 6)
    report(sf, mid, "h3", "PERF", T0 + 6)
    dead = subprocess.Popen(["sleep", "60"])  # h1's agent: its process, then SIGKILLed
    holder = f"{socket.gethostname()}:{dead.pid}:{process_start(dead.pid)}"
    with sf() as s, s.begin():
        take_host_lease(s, "h1", holder, T0 + 5, 3600.0, mid)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    ctl = Controller(sf, mid, applier=DbApplier(), clock=lambda: T0 + 7.5)
    res = step(sf, ctl, now=T0 + 7.25)
    assert res.target == "ROLLED_BACK"
    ctl.finish()
    with sf() as s:
        assert s.get(Migration, mid).phase == "ROLLED_BACK"
        t = s.get(Transition, res.transition_id)
        assert json.loads(t.host_status) == {
            "h1": {"mode": "PERF", "status": "lost", "last_report": T0 + 5},
            "h2": {"mode": "PERF", "status": "applied", "last_report": T0 + 6},
            "h3": {"mode": "PERF", "status": "applied", "last_report": T0 + 6}}
        assert api.history(s, mid)[-1]["hosts"]["h1"]["status"] == "lost"
        rep = status_document(s, mid)
    assert rep["lost_hosts"] == [{"host": "h1", "transition_id": res.transition_id, "mode": "PERF",
                                  "last_report": T0 + 5, "applied_since": False}]
    lines = header_lines(rep)
    assert any(ln.startswith(f"host h1: LOST at transition {res.transition_id} (last report ")
               and ln.endswith("owes PERF: restart its agent (migrator agent --host h1), it applies it with no other flag")
               for ln in lines), lines
    # Its agent returns with no --migration: the rolled-back migration still demands PERF of h1.
    assert serve_migration(sf, "h1", None) == mid
    with pytest.raises(MigratorError, match="no active migration in the database"):
        serve_migration(sf, "h2", None)  # applied what it was asked: nothing owed
    report(sf, mid, "h1", "PERF", T0 + 20)
    with pytest.raises(MigratorError, match="no active migration in the database"):
        serve_migration(sf, "h1", None)  # paid
    with sf() as s:
        rep = status_document(s, mid)
        assert json.loads(s.get(Transition, res.transition_id).host_status)["h1"]["status"] == "lost"  # history kept
    assert rep["lost_hosts"][0]["applied_since"] is True
    assert "LOST" not in "\n".join(header_lines(rep))  # paid: status stops naming it; history keeps it


def test_silent_host_without_a_lease_is_lost_a_live_one_is_sent(toml_file):
    sf, mid, _ = setup(toml_file, CANARY1, '[agents]\nlost_after_windows = 2')
    report(sf, mid, "h1", "RING", T0 + 1)  # silent since: lost
    report(sf, mid, "h2", "PERF", T0 + 9)  # reported recently, has not applied yet: sent
    with sf() as s, s.begin():
        take_host_lease(s, "h3", "elsewhere:1:1", T0 + 9, 30.0, mid)  # a live lease, never reported
    transition(sf, mid, Phase.ROLLED_BACK, applier=DbApplier(), clock=lambda: T0 + 10)
    with sf() as s:
        t = api.history(s, mid)[-1]
    assert {h: o["status"] for h, o in t["hosts"].items()} == {"h1": "lost", "h2": "applied", "h3": "sent"}


def test_apply_does_not_wait_for_a_lost_host(toml_file):
    """With --confirm-timeout the applier waits for live hosts only: a dead one never blocks the move."""
    sf, mid, _ = setup(toml_file, CANARY1, '[agents]\nlost_after_windows = 2')
    now = time.time()
    report(sf, mid, "h1", "RING", now - 60)  # long silent
    for h in ("h2", "h3"):
        report(sf, mid, h, "PERF", now)
    t0 = time.monotonic()
    transition(sf, mid, Phase.ROLLED_BACK, applier=DbApplier(confirm_timeout=5.0))
    assert time.monotonic() - t0 < 2.0
    with sf() as s:
        assert api.history(s, mid)[-1]["hosts"]["h1"]["status"] == "lost"


def test_history_names_the_lost_host(toml_file):
    from typer.testing import CliRunner

    from migrator.cli import app

    sf, mid, _ = setup(toml_file, CANARY1, '[agents]\nlost_after_windows = 2')
    report(sf, mid, "h1", "RING", T0 + 1)
    for h in ("h2", "h3"):
        report(sf, mid, h, "PERF", T0 + 9)
    transition(sf, mid, Phase.ROLLED_BACK, applier=DbApplier(), clock=lambda: T0 + 10)
    with sf() as s:
        path = s.get(Migration, mid).config_path
    out = CliRunner().invoke(app, ["history", "-c", path])
    assert out.exit_code == 0, out.output
    last = out.output.strip().splitlines()[-1]
    assert "-> ROLLED_BACK manual (lost: h1; not confirmed there):" in last


# ---- a real agent ------------------------------------------------------------------------------

PLAN = """
hosts = ["h1"]
slices = [1]
window_seconds = 0.5
[probe]
name = "synthetic"
rate = 2000
[agents]
lost_after_windows = 4
on_lost = "rollback"
"""


@pytest.mark.kernel
@needs_root
def test_dead_ring_agent_in_a_rollback_is_lost_and_its_restart_applies_perf(tmp_path):
    from migrator.config import load_config
    from migrator.control.moves import default_fingerprint
    from migrator.store import open_store

    (tmp_path / "canary.toml").write_text(PLAN)
    cfg = load_config(tmp_path / "canary.toml")
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint=default_fingerprint()).id
    for tgt, sl in CANARY1[:2] + [(Phase.CANARY, 1)]:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier())

    def host():
        with sf() as s:
            return api.hosts(s, mid)[0]

    cmd = [sys.executable, "-m", "migrator", "agent", "--host", "h1", "-c", cfg.path]
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: host()["applied_mode"] == "RING", timeout=30)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        ctl = Controller(sf, mid, applier=DbApplier())
        deadline = time.monotonic() + 20
        while True:  # the controller finds it lost after 4 windows and rolls back
            with sf() as s, s.begin():
                res = ctl.step(s, time.time())
            if res.transition_id:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ctl.finish()
        with sf() as s:
            assert s.get(Migration, mid).phase == "ROLLED_BACK"
            t = api.history(s, mid)[-1]
        assert (t["to"], t["status"], t["hosts"]["h1"]["status"], t["hosts"]["h1"]["mode"]) == \
            ("ROLLED_BACK", "confirmed", "lost", "PERF")
        assert host()["applied_mode"] == "RING"  # what the dead agent last applied
        # Restarted as the runbook says, with no --migration: it serves the rolled-back migration.
        again = subprocess.run(cmd + ["--seconds", "3"], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert f"migration {mid} is ROLLED_BACK and still demands PERF of this host (it last applied RING)" \
            in again.stderr
        assert host()["applied_mode"] == "PERF"
        with sf() as s:
            assert api.history(s, mid)[-1]["hosts"]["h1"]["status"] == "lost"  # the record stays honest
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
