"""`migrator bench fleet --hosts 200`: the real links and controller through a migration with a breach in CANARY.

The run must end ROLLED_BACK on exactly rollback_after breaching windows of the injected host, and
every host must end in the mode the final phase demands (PERF), desired and applied, with exact counts.
On PostgreSQL, the fleet's database (MIGRATOR_TEST_PG_URL names the server; CI sets it): the same
run on SQLite passed too but adds 17 s to a suite that must stay under 10 minutes, and a fleet
never shares one SQLite file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from migrator.store.models import Host, Transition, Verdict

HOSTS = 200
ROLLBACK_AFTER = 3  # the bench's plan


@pytest.mark.slow
def test_bench_fleet_200_hosts_rolls_back_and_every_host_ends_on_perf(pg_database):
    url = pg_database()
    env = {k: v for k, v in os.environ.items() if k != "MIGRATOR_DATABASE_URL"}
    proc = subprocess.run([sys.executable, "-m", "migrator", "bench", "fleet", "--hosts", str(HOSTS),
                           "--db", url, "--json"], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["phase"] == "ROLLED_BACK", res
    assert res["path"] == ["DUAL_INSTRUMENT", "SHADOW", "CANARY/1", "ROLLED_BACK"], res
    assert res["rollback_after"] == ROLLBACK_AFTER
    assert res["breach_verdicts"] == ROLLBACK_AFTER
    assert res["hosts_final"] == {"desired_PERF": HOSTS, "applied_PERF": HOSTS}
    canary = res["canary_hosts"]
    assert canary == HOSTS // 10
    assert res["rollback_hosts"] == canary  # every canary host left RING for PERF after the rollback

    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as c:
        mid = res["migration_id"]
        modes = c.execute(select(Host.desired_mode, Host.applied_mode).where(Host.migration_id == mid)).all()
        assert len(modes) == HOSTS
        assert all(d == "PERF" and a == "PERF" for d, a in modes)
        back = c.execute(select(Transition.actor, Transition.reason).where(
            Transition.migration_id == mid, Transition.to_phase == "ROLLED_BACK")).all()
        assert len(back) == 1 and back[0][0] == "auto", back
        assert back[0][1].startswith(f"{ROLLBACK_AFTER} consecutive breaching windows in CANARY slice 1/2"), back
        assert "h00000: max_loss_rate" in back[0][1]  # the injected host, the injected rule
        slice_verdicts = [v for (v,) in c.execute(select(Verdict.verdict).where(
            Verdict.migration_id == mid, Verdict.scope == "slice", Verdict.phase == "CANARY").order_by(Verdict.index))]
        assert slice_verdicts[-ROLLBACK_AFTER:] == ["breach"] * ROLLBACK_AFTER
        assert slice_verdicts.count("breach") == ROLLBACK_AFTER
        host_breaches = c.execute(select(Verdict.host).where(
            Verdict.migration_id == mid, Verdict.scope == "host", Verdict.phase == "CANARY",
            Verdict.verdict == "breach")).scalars().all()
        assert host_breaches == ["h00000"] * ROLLBACK_AFTER
    engine.dispose()
