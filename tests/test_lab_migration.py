"""Whole migrations on a 3-host lab: real namespaces, TC probes, agents, SQLite. Slow (~20 s each)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from kernel_util import needs_root
from migrator.tools.lab.run import LabStage, run_lab_migration
from migrator.store.models import Verdict, Window

pytestmark = [pytest.mark.kernel, pytest.mark.slow, needs_root]
PREFIX = f"lm{os.getpid() % 1000}x"


@pytest.fixture
def base(lab_base):
    return lab_base


def windows_of(sf, mid):
    with sf() as s:
        return s.scalars(select(Window).where(Window.migration_id == mid).order_by(Window.index)).all()


def test_three_hosts_reach_complete_with_evidence(base, tmp_path):
    res = run_lab_migration(base, tmp_path / "run", prefix=PREFIX, say=lambda _: None, timeout=90)
    assert res.phase == "COMPLETE"
    hist = res.history
    assert [(t["from"], t["to"], t["to_slice"]) for t in hist] == [
        ("PLANNED", "DUAL_INSTRUMENT", 0), ("DUAL_INSTRUMENT", "SHADOW", 0), ("SHADOW", "CANARY", 1),
        ("CANARY", "CANARY", 2), ("CANARY", "CANARY", 3), ("CANARY", "COMPLETE", 0)]
    assert all(t["status"] == "confirmed" for t in hist)
    from migrator.store import open_store

    sf = open_store(res.database_url)
    ws = windows_of(sf, res.migration_id)
    by_id = {w.id: w for w in ws}
    # each advance names its 2 clean windows of every judged host: all 3 before CANARY, then the
    # hosts of the slices on RING (1, 2, then 3)
    judged = [{(by_id[i].host, by_id[i].index) for i in t["window_ids"]} for t in hist[1:]]
    assert [len({h for h, _ in j}) for j in judged] == [3, 3, 1, 2, 3]
    assert [len({k for _, k in j}) for j in judged] == [2] * 5
    assert [len(t["window_ids"]) for t in hist[1:]] == [6, 6, 2, 4, 6]
    for t in hist[1:]:
        assert {by_id[i].phase for i in t["window_ids"]} == {t["from"]}
    # the mode each host's map held at its last window close, read from the kernel map
    last = {}
    for w in ws:
        last[(w.host, w.channel)] = w
    assert {h: last[(h, "ring")].mode for h in res.hosts} == {h: "RING" for h in res.hosts}
    assert res.final_modes == {h: "RING" for h in res.hosts}
    assert all(last[(h, "ring")].delivered > 0 for h in res.hosts)
    # every window balances: nothing unaccounted
    assert [(w.host, w.channel, w.index) for w in ws if w.residual != 0 or not w.settled] == []


def test_stalled_canary_host_rolls_back_after_exactly_n(base, tmp_path):
    res = run_lab_migration(base, tmp_path / "run", prefix=PREFIX, fault="stall-ring", say=lambda _: None,
                            timeout=90, after_final_windows=3)
    assert res.phase == "ROLLED_BACK"
    rb = res.history[-1]
    # the stalled host protected itself first (agent/selfprotect.py): one transition, with its reason
    assert (rb["from"], rb["to"], rb["actor"]) == ("CANARY", "ROLLED_BACK", f"host {res.fault_host}")
    assert rb["reason"].startswith(f"{res.fault_host} protected itself: 3 consecutive breaching ring windows")
    assert len(rb["window_ids"]) == 3
    from migrator.store import open_store

    sf = open_store(res.database_url)
    ws = windows_of(sf, res.migration_id)
    by_id = {w.id: w for w in ws}
    breach = [by_id[i] for i in rb["window_ids"]]
    assert {(w.host, w.channel) for w in breach} == {(res.fault_host, "ring")}
    idx = [w.index for w in breach]
    assert idx == list(range(idx[0], idx[0] + 3))  # consecutive
    # the host's reason names them #n as every view does (its link read the first index), no raw index
    first = min(w.index for w in ws)
    assert f"({' '.join(f'#{i - first + 1}' for i in idx)}, rollback_after 3)" in rb["reason"], rb["reason"]
    assert str(idx[0]) not in rb["reason"]
    with sf() as s:
        slice_verdicts = s.execute(select(Verdict.index, Verdict.verdict).where(
            Verdict.migration_id == res.migration_id, Verdict.scope == "slice", Verdict.phase == "CANARY")
            .order_by(Verdict.index)).all()
    # The host decided on its own three windows (the controller may not have judged the third index
    # yet when the host's report arrived with it): every one breached, none was "no data".
    report = json.loads(breach[-1].extra)["self_protect"]
    assert report["indexes"] == idx and len(report["rules"]) == 3
    assert not any(r.startswith("no data") for r in report["rules"]), report["rules"]
    assert set(v for i, v in slice_verdicts if i in idx) == {"breach"}  # what the controller judged agrees
    assert all(v != "breach" for i, v in slice_verdicts if i < idx[0])  # N in a row, not N+1
    # after the rollback the host's map reads PERF and perf delivers again
    after = [w for w in ws if w.host == res.fault_host and w.index > idx[-1] + 1]
    assert after and all(w.mode == "PERF" for w in after)
    assert all(w.delivered > 0 for w in after if w.channel == "perf")
    assert res.final_modes == {h: "PERF" for h in res.hosts}
    assert [(w.host, w.channel, w.index) for w in ws if w.residual != 0 or not w.settled] == []


def test_controller_killed_mid_canary_continues_without_duplicates(base, tmp_path):
    with LabStage(base, tmp_path / "run", prefix=PREFIX, say=lambda _: None) as stage:
        cmd = [sys.executable, "-m", "migrator", "start", "-c", str(stage.cfg_path), "--confirm-timeout", "15"]
        ctl = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while stage.phase()[:2] != ("CANARY", 1) or stage.phase()[2] is not None:
            assert time.monotonic() < deadline and ctl.poll() is None, stage.phase()
            time.sleep(0.1)
        time.sleep(1.2)  # mid-slice: windows are being judged
        ctl.send_signal(signal.SIGKILL)
        ctl.wait()
        again = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=90)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout.splitlines()[-1])["phase"] == "COMPLETE"
        res = stage.result(0)
    moves = [(t["from"], t["to"], t["to_slice"]) for t in res.history]
    assert moves == [
        ("PLANNED", "DUAL_INSTRUMENT", 0), ("DUAL_INSTRUMENT", "SHADOW", 0), ("SHADOW", "CANARY", 1),
        ("CANARY", "CANARY", 2), ("CANARY", "CANARY", 3), ("CANARY", "COMPLETE", 0)]
    assert all(t["status"] == "confirmed" for t in res.history)
