"""Store core API and the controller benchmark smoke run."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from migrator.cli import app
from migrator.store import api
from migrator.store.bulk import FEW_ROWS

from conftest import T0, window, record


def test_record_windows_bulk_is_idempotent(session_factory, config):
    with session_factory() as s, s.begin():
        mid = api.create_migration(s, config, now=T0).id
        ws = [window(h, c, i) for h in ("h1", "h2") for c in ("ring", "perf") for i in range(3)]
        assert len(ws) > FEW_ROWS >= 2  # both statement shapes: a few rows (an agent's window), then many
        assert api.record_windows(s, mid, ws[:2]) == 2
        assert api.record_windows(s, mid, ws[:2]) == 0
        assert api.record_windows(s, mid, ws) == 10
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
    """The benchmark runs and reports exact counts; its timings are its output, not asserted here."""
    db = tmp_path / "h.db"
    r = CliRunner().invoke(app, ["bench", "controller", "--hosts", "20", "--windows", "3", "--db-windows", "2000",
                                 "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert set(res) == {"evaluate", "history_db", "queries", "targets"}
    ev = {k: res["evaluate"][k] for k in ("hosts", "windows_per_host", "windows", "host_verdicts", "groups_judged",
                                          "group_breaches")}
    assert ev == {"hosts": 20, "windows_per_host": 3, "windows": 120, "host_verdicts": 60, "groups_judged": 3,
                  "group_breaches": 0}
    assert res["evaluate"]["judge_ms_per_round"] > 0 and res["evaluate"]["judge_us_per_host"] > 0
    assert {k: res["history_db"][k] for k in ("database", "backend", "reused", "windows")} == {
        "database": str(db), "backend": "sqlite", "reused": False, "windows": 2000}
    assert set(res["queries"]) == {"history_ms", "windows_last_100_ms", "windows_host_last_100_ms",
                                   "windows_phase_last_100_ms"}
    assert set(res["targets"]) == {"windows_per_s >= 20000", "history < 10 ms", "windows --last 100 < 10 ms"}
    assert _window_rows(db) == 2000

    r = CliRunner().invoke(app, ["bench", "controller", "--hosts", "2", "--windows", "1", "--db-windows", "2000",
                                 "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["history_db"] == {"database": str(db), "backend": "sqlite", "reused": True, "windows": 2000,
                                 "build_seconds": 0.0, "analyze_seconds": 0.0}
    assert (res["evaluate"]["windows"], res["evaluate"]["groups_judged"]) == (4, 1)
    assert _window_rows(db) == 2000  # reused, not grown


def _window_rows(db) -> int:
    from sqlalchemy import func, select

    from migrator.store import open_store
    from migrator.store.models import Window

    sf = open_store(f"sqlite:///{db}", readonly=True)
    try:
        with sf() as s:
            return s.scalar(select(func.count()).select_from(Window))
    finally:
        sf.dispose()
