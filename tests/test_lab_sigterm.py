"""SIGTERM to `migrator lab run` cleans up as Ctrl-C does (issue 20, item 4): no namespace, no
agent, no lease left, and it says so. Real namespaces, TC probes and agents. Slow (~15 s)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import lab_plan
from kernel_util import needs_root
from migrator.config import load_config
from migrator.store import api, open_store
from migrator.store.models import Migration
from migrator.tools.lab import lab_down

pytestmark = [pytest.mark.kernel, pytest.mark.slow, needs_root]
PREFIX = f"ls{os.getpid() % 1000}x"


def netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith(PREFIX)}


@pytest.fixture
def lab():
    lab_down(PREFIX)
    yield PREFIX
    lab_down(PREFIX)


def test_sigterm_to_lab_run_cleans_up_like_ctrl_c(lab, tmp_path):
    sig = signal.SIGTERM  # (signal.SIGINT passes the same checks; one run keeps the suite short)
    base = tmp_path / "base.toml"
    base.write_text(lab_plan(hosts=2, slices='[1, "100%"]', extra=f'prefix = "{PREFIX}"'))
    run_dir = tmp_path / "run"
    err = tmp_path / "lab.err"
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "lab", "run", "-c", str(base), "--run-dir", str(run_dir),
                             "--timeout", "60"], stdout=open(err, "w"), stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240  # lab set-up waits for any other lab on this machine
        sf = None
        while True:  # until the controller holds its lease and the migration has moved
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the lab run never took its lease"
            if sf is None and (run_dir / "canary.toml").exists() and (run_dir / "migrator.db").exists():
                sf = open_store(load_config(run_dir / "canary.toml").database_url)
            if sf is not None:
                with sf() as s:
                    m = s.query(Migration).first()
                    if m is not None and api.lease_of(s, m.id) is not None and m.phase != "PLANNED":
                        mid = m.id
                        break
            time.sleep(0.1)
        assert len(ours(netns())) == 2
        proc.send_signal(sig)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    assert code == 128 + sig, text[-3000:]  # 130 for Ctrl-C, 143 for SIGTERM
    assert ours(netns()) == set()  # every namespace of the lab removed
    with sf() as s:
        assert api.lease_of(s, mid) is None  # the controller's lease released, not left to a dead pid
    assert "lab: SIGTERM: stopping the traffic, the agents, then the lab hosts ..." in text
    assert "Terminated (SIGTERM): cleaned up as for Ctrl-C." in text
    assert "lab: stopped cleanly: traffic and 2 agents stopped, 2 lab hosts removed" in text
    # every agent stopped through its own clean-up (SIGTERM from the lab), none killed
    for h in ("1", "2"):
        log = (run_dir / f"agent-{PREFIX}{h}.log").read_text()
        assert f"agent {PREFIX}{h}: stopped by SIGTERM; its probe is closed" in log, log[-2000:]
    sf.dispose()
