"""Store core API and the controller benchmark smoke run."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from migrator.cli import app
from migrator.store import api

from conftest import T0, window, record


def test_record_windows_bulk_is_idempotent(session_factory, config):
    with session_factory() as s, s.begin():
        mid = api.create_migration(s, config, now=T0).id
        ws = [window(h, c, i) for h in ("h1", "h2") for c in ("ring", "perf") for i in range(3)]
        assert api.record_windows(s, mid, ws) == 12
        assert api.record_windows(s, mid, ws) == 0
        assert record(s, mid, ws[0]) == api.list_windows(s, mid, last=12)[0]["id"]
        assert len(api.list_windows(s, mid)) == 12


def test_agent_round_trip(session_factory, config):
    with session_factory() as s, s.begin():
        mid = api.create_migration(s, config, now=T0).id
        assert api.heartbeat(s, mid, "h2", now=T0 + 1) == "PERF"
        api.report_applied(s, mid, "h2", "DUAL", now=T0 + 2)
        h2 = api.hosts(s, mid)[1]
        assert (h2["applied_mode"], h2["applied_at"], h2["last_heartbeat"], h2["slice"]) == ("DUAL", T0 + 2, T0 + 2, 2)


def test_bench_controller_smoke(tmp_path):
    r = CliRunner().invoke(app, ["bench", "controller", "--hosts", "20", "--windows", "3", "--db-windows", "2000",
                                 "--db", str(tmp_path / "h.db"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["evaluate"]["windows"] == 120 and res["evaluate"]["groups_judged"] == 3
    assert res["history_db"]["windows"] == 2000 and res["queries"]["windows_last_100_ms"] < 100
    r = CliRunner().invoke(app, ["bench", "controller", "--hosts", "2", "--windows", "1", "--db-windows", "2000",
                                 "--db", str(tmp_path / "h.db"), "--json"])
    assert json.loads(r.stdout)["history_db"]["reused"] is True
