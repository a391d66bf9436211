"""Whole lab migrations against PostgreSQL: agents, controller and the checks share only the server.

The lab's agents are processes in the root network namespace that attach their TC programs inside
each host's namespace (AgentProcs, attach_tc(..., netns)), so they reach the server by the same
TCP URL as the controller. The run writes the URL (with its password) into run_dir/database-url,
mode 600, and its canary.toml names that file: no password in the plan, the logs or the rows.
"""
from __future__ import annotations

import stat

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from typer.testing import CliRunner

from browser import colour_count, render
from kernel_util import needs_root
from migrator.cli import app
from migrator.store.models import Migration, Window
from migrator.tools.lab.run import run_lab_migration

pytestmark = [pytest.mark.kernel, pytest.mark.slow, needs_root]
PREFIX = "pgx"


@pytest.fixture
def base(lab_base):
    return lab_base


def rows_of(url: str, mid: int) -> tuple[list[Window], str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            ws = conn.execute(select(Window).where(Window.migration_id == mid).order_by(Window.index)).all()
            snapshot = conn.execute(select(Migration.config_json).where(Migration.id == mid)).scalar()
        return ws, snapshot
    finally:
        engine.dispose()


def no_password_left(run_dir, url: str, snapshot: str) -> None:
    password = make_url(url).password
    url_file = run_dir / "database-url"
    assert url_file.read_text() == url + "\n" and stat.S_IMODE(url_file.stat().st_mode) == 0o600
    assert 'database_file = "' in (run_dir / "canary.toml").read_text()
    leaks = [p.name for p in run_dir.iterdir() if p.is_file() and p != url_file and password in p.read_text(errors="replace")]
    assert leaks == [] and password not in snapshot


def report_renders(run_dir, migration_id: int, work, *, rollback: bool) -> None:
    """`migrator report` of the run (read from PostgreSQL) opens in Chromium with its charts."""
    from migrator.tools.report import BREACH, PERF, RING

    out = work / f"report-{migration_id}.html"
    res = CliRunner().invoke(app, ["report", "-c", str(run_dir / "canary.toml"), "-m", str(migration_id),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    img, dom = render(out, work)
    text = out.read_text()
    assert dom.count("<svg") == text.count("<svg") >= 5 and dom.count("<path") == text.count("<path") > 100
    assert colour_count(img, RING) > 1000 and colour_count(img, PERF) > 1000
    assert (colour_count(img, BREACH) > 1000) == rollback
    assert ('class="rollback"' in text) == rollback


def test_three_hosts_reach_complete_on_postgres(base, tmp_path, pg_database):
    url = pg_database()
    res = run_lab_migration(base, tmp_path / "run", prefix=PREFIX, say=lambda _: None, timeout=90, database=url)
    assert res.database_url == url
    assert res.phase == "COMPLETE"
    assert [(t["from"], t["to"], t["to_slice"]) for t in res.history] == [
        ("PLANNED", "DUAL_INSTRUMENT", 0), ("DUAL_INSTRUMENT", "SHADOW", 0), ("SHADOW", "CANARY", 1),
        ("CANARY", "CANARY", 2), ("CANARY", "CANARY", 3), ("CANARY", "COMPLETE", 0)]
    assert all(t["status"] == "confirmed" for t in res.history)
    ws, snapshot = rows_of(url, res.migration_id)
    by_id = {w.id: w for w in ws}
    # each advance: its 2 clean windows of every judged host (all 3 before CANARY, then slice by slice)
    assert [len(t["window_ids"]) for t in res.history[1:]] == [6, 6, 2, 4, 6]
    for t in res.history[1:]:
        assert {by_id[i].phase for i in t["window_ids"]} == {t["from"]}
    assert {w.host for w in ws} == set(res.hosts) and len(res.hosts) == 3
    assert res.final_modes == {h: "RING" for h in res.hosts}
    assert [(w.host, w.channel, w.index) for w in ws if w.residual != 0 or not w.settled] == []
    no_password_left(tmp_path / "run", url, snapshot)
    report_renders(tmp_path / "run", res.migration_id, tmp_path, rollback=False)


def test_stalled_canary_host_rolls_back_on_postgres(base, tmp_path, pg_database):
    url = pg_database()
    res = run_lab_migration(base, tmp_path / "run", prefix=PREFIX, fault="stall-ring", say=lambda _: None,
                            timeout=90, after_final_windows=3, database=url)
    assert res.phase == "ROLLED_BACK"
    rb = res.history[-1]
    assert (rb["from"], rb["to"], len(rb["window_ids"])) == ("CANARY", "ROLLED_BACK", 3)
    # the controller's streak, or the host's own self-protection (agent/selfprotect.py) on the same windows
    assert rb["actor"] in ("auto", f"host {res.fault_host}")
    ws, snapshot = rows_of(url, res.migration_id)
    by_id = {w.id: w for w in ws}
    breach = [by_id[i] for i in rb["window_ids"]]
    assert {(w.host, w.channel) for w in breach} == {(res.fault_host, "ring")}
    idx = [w.index for w in breach]
    assert idx == list(range(idx[0], idx[0] + 3))  # consecutive
    assert res.final_modes == {h: "PERF" for h in res.hosts}
    assert [(w.host, w.channel, w.index) for w in ws if w.residual != 0 or not w.settled] == []
    no_password_left(tmp_path / "run", url, snapshot)
    report_renders(tmp_path / "run", res.migration_id, tmp_path, rollback=True)
