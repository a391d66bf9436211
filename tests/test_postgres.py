"""PostgreSQL for a fleet: the URL from the environment or a file, no password in any output or row,
read-only transactions, one-line errors for every database fault, and the controller bench on a server.

Runs against the real server of MIGRATOR_TEST_PG_URL (scripts/postgres.sh); each test gets its own
throwaway database (conftest's pg_database).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from migrator.cli import app
from migrator.config import load_config
from migrator.errors import ConfigError, DatabaseUnavailable
from migrator.store import database_errors, open_store, safe_url
from migrator.store.models import Migration, Window

from conftest import window, record

runner = CliRunner()
PLAN = ('hosts = ["h1", "h2"]\nslices = [1, 2]\nrollback_after = 2\n'
        "[phases.dual_instrument]\nmin_clean_windows = 0\n")
SECRET = "s3cret-Pa55"
FIX_WHERE = "in MIGRATOR_DATABASE_URL, database_file or database in canary.toml"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def dump(url: str) -> str:
    """Every row of every table of the database, as text."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            out = []
            for table in sorted(inspect(conn).get_table_names()):
                out += [f"{table}: {tuple(r)}" for r in conn.execute(text(f'SELECT * FROM "{table}" ORDER BY 1'))]
            return "\n".join(out)
    finally:
        engine.dispose()


# ---- the URL: environment, file, and never a secret in the hash or the snapshot ------------------

def test_environment_url_overrides_database_and_is_not_hashed(tmp_path, monkeypatch):
    p = tmp_path / "canary.toml"
    p.write_text(PLAN)
    plain = load_config(p)
    assert plain.database_url == f"sqlite:///{tmp_path / 'migrator.db'}"
    url = f"postgresql+psycopg://fleet:{SECRET}@db.example/migrator"
    monkeypatch.setenv("MIGRATOR_DATABASE_URL", url)
    cfg = load_config(p)
    assert cfg.database_url == url
    assert cfg.hash == plain.hash and cfg.to_dict() == plain.to_dict()
    monkeypatch.setenv("MIGRATOR_DATABASE_URL", "other.db")  # a path: relative to the working directory
    assert load_config(p).database_url == f"sqlite:///{os.getcwd()}/other.db"


def test_database_file_holds_the_url(tmp_path):
    url = f"postgresql+psycopg://fleet:{SECRET}@db.example/migrator"
    (tmp_path / "db-url").write_text(url + "\n")
    p = tmp_path / "canary.toml"
    p.write_text('database_file = "db-url"\n' + PLAN)
    cfg = load_config(p)
    assert cfg.database_url == url
    d = cfg.to_dict()
    assert (d["database_file"], "database" in d) == ("db-url", False)
    assert SECRET not in json.dumps(d)
    (tmp_path / "db-url").write_text("postgresql+psycopg://fleet:rotated@db.example/migrator")
    assert load_config(p).hash == cfg.hash  # rotating the password changes nothing recorded

    (tmp_path / "db-url").unlink()
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == (f"{p}: database_file: {tmp_path / 'db-url'} does not exist (fix: write the database "
                              f"URL into {tmp_path / 'db-url'} (chmod 600), or set MIGRATOR_DATABASE_URL)")
    (tmp_path / "db-url").write_text("a\nb\n")
    with pytest.raises(ConfigError, match=r"database_file: .* must hold one line, the database URL; it holds 2 lines"):
        load_config(p)
    p.write_text('database = "x.db"\ndatabase_file = "db-url"\n' + PLAN)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == (f"{p}: database_file: is set together with database (fix: keep one: database_file "
                              "(a file holding the URL) or database (the URL itself))")


def test_password_written_in_database_is_hidden_in_hash_and_snapshot(tmp_path):
    p = tmp_path / "canary.toml"
    p.write_text(f'database = "postgresql+psycopg://fleet:{SECRET}@db.example/migrator"\n' + PLAN)
    cfg = load_config(p)
    assert cfg.to_dict()["database"] == "postgresql+psycopg://fleet:***@db.example/migrator"
    p.write_text('database = "postgresql+psycopg://fleet:other@db.example/migrator"\n' + PLAN)
    assert load_config(p).hash == cfg.hash


def test_no_password_in_any_output_or_row(tmp_path, pg_database):
    url = pg_database()
    password = make_url(url).password
    assert password
    p = tmp_path / "canary.toml"
    p.write_text(f'database = "{url}"\n' + PLAN)
    outputs = []
    for cmd in (["plan", "-c", p], ["plan", "-c", p, "--json"], ["init", p], ["init", p, "--json"],
                ["start", "-c", p, "--no-run", "--schema-fingerprint", "fp"], ["advance", "-c", p],
                ["status", "-c", p], ["status", "-c", p, "--json"], ["history", "-c", p, "--json"],
                ["windows", "-c", p, "--json"], ["what-if", "-c", p], ["rollback", "-c", p]):
        r = run(*cmd)
        assert r.exit_code == 0, (cmd, r.output)
        outputs.append(r.output)
    shown = safe_url(url)
    assert shown.count("***") == 1 and password not in shown
    assert f"database {shown}" in outputs[0] and json.loads(outputs[1])["database_url"] == shown
    assert [o for o in outputs if password in o] == []
    rows = dump(url)
    assert "ROLLED_BACK" in rows and password not in rows
    sf = open_store(url, readonly=True)
    with sf() as s:
        snap = json.loads(s.scalar(select(Migration.config_json)))
    sf.dispose()
    assert snap["database"] == shown


# ---- read-only ---------------------------------------------------------------------------------

def test_a_write_through_a_readonly_factory_fails(backend, session_factory, config):
    from migrator.store import api

    with session_factory() as s, s.begin():
        mid = api.create_migration(s, config).id
    url = session_factory.engine.url.render_as_string(hide_password=False)
    ro = open_store(url, readonly=True)
    with pytest.raises(DatabaseUnavailable) as exc:
        with database_errors(ro), ro() as s, s.begin():
            record(s, mid, window("h1", "ring", 0))
    if backend.name == "postgres":
        with ro() as s:
            assert s.execute(text("SHOW transaction_read_only")).scalar() == "on"
        assert str(exc.value) == (f"database {safe_url(url)}: a write was attempted in a read-only transaction "
                                  "(a read-only command) (fix: run the command that writes (init, start, the manual "
                                  "moves) instead)")
    else:
        assert "attempt to write a readonly database" in str(exc.value)
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Window)) == 0
    ro.dispose()


def test_read_only_commands_leave_postgres_as_it_was(tmp_path, backend):
    if backend.name != "postgres":
        return  # SQLite's files are compared byte for byte in test_cli_control
    p = tmp_path / "canary.toml"
    p.write_text(PLAN)
    assert run("init", p).exit_code == 0
    assert run("start", "-c", p, "--no-run").exit_code == 0
    before = dump(backend.url)
    for cmd in (["status"], ["status", "--json"], ["history"], ["windows", "--last", "5"], ["what-if"]):
        r = run(*cmd, "-c", p)
        assert r.exit_code == 0, (cmd, r.output)
    assert dump(backend.url) == before


# ---- faults: one line, exit 1, the URL (password hidden) and the fix -----------------------------

def error_of(url: str, tmp_path, cmd: str, monkeypatch, *, process: bool = False) -> tuple[int, str]:
    """exit code and the one stderr line of `cmd` on the database `url` (in this process, or a real one)."""
    p = tmp_path / "canary.toml"
    p.write_text(PLAN)
    args = ["init", str(p)] if cmd == "init" else [cmd, "-c", str(p)]
    if process:
        r = subprocess.run([sys.executable, "-m", "migrator", *args], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MIGRATOR_DATABASE_URL": url}, cwd=tmp_path)
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        monkeypatch.setenv("MIGRATOR_DATABASE_URL", url)
        r = run(*args)
        code, out, err = r.exit_code, r.stdout, r.stderr
    assert out == "" and "Traceback" not in err and err.count("\n") == 1, err
    assert make_url(url).password not in err
    return code, err.rstrip("\n")


def test_wrong_password_in_a_real_process(pg_server, tmp_path, monkeypatch):
    u = pg_server.set(password=SECRET)
    assert error_of(u.render_as_string(hide_password=False), tmp_path, "status", monkeypatch, process=True) == (
        1, f"Error: database {safe_url(u)}: the server at {u.host}:{u.port} refused the password of user {u.username} "
           f"(password authentication failed) (fix: correct the user and password {FIX_WHERE}; the server's "
           "pg_hba.conf says how each user logs in)")


@pytest.mark.parametrize("cmd", ["init", "status"])
def test_server_faults_are_one_line_errors(pg_server, tmp_path, cmd, monkeypatch):
    u = pg_server.set(password=SECRET)
    refused = u.set(host="127.0.0.1", port=1)
    no_pg = "start the server (pg_ctlcluster / systemctl start postgresql), or fix the host and port " + FIX_WHERE + \
        ("; from a network namespace, 127.0.0.1 is the namespace's own loopback (use the server's address or its "
         "unix socket, ?host=/var/run/postgresql)")
    cases = {
        refused: f"no PostgreSQL server answers at 127.0.0.1:1 (Connection refused) (fix: {no_pg})",
        u: f"the server at {u.host}:{u.port} refused the password of user {u.username} (password authentication "
           f"failed) (fix: correct the user and password {FIX_WHERE}; the server's pg_hba.conf says how each user logs in)",
    }
    real = pg_server.password
    missing = pg_server.set(database="migrator_no_such_db")
    cases[missing] = (f"database migrator_no_such_db does not exist on the server at {u.host}:{u.port} (fix: create it "
                      "(createdb migrator_no_such_db, or CREATE DATABASE migrator_no_such_db; as a user allowed to), "
                      "then run `migrator init`)")
    sock = make_url(f"postgresql+psycopg://fleet:{SECRET}@/x?host={tmp_path}/nosock")
    cases[sock] = (f"no PostgreSQL server answers at the unix socket in {tmp_path}/nosock (No such file or directory) "
                   f"(fix: {no_pg})")
    for url, problem in cases.items():
        raw = url.render_as_string(hide_password=False)
        code, line = error_of(raw, tmp_path, cmd, monkeypatch)
        assert (code, line) == (1, f"Error: database {safe_url(url)}: {problem}"), raw.replace(real or "\0", "***")


def test_psycopg_not_installed_is_one_line(tmp_path, pg_server):
    """The driver missing, as on a machine without the postgres extra: import blocked in a real process."""
    p = tmp_path / "canary.toml"
    p.write_text(PLAN)
    url = pg_server.render_as_string(hide_password=False)
    code = ("import sys; sys.modules['psycopg'] = None; from migrator.cli import main; "
            f"sys.argv = ['migrator', 'init', {str(p)!r}]; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MIGRATOR_DATABASE_URL": url})
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"Error: {p}: database: {safe_url(url)}: its database driver is not installed (no Python "
                        "module 'psycopg') (fix: install it into migrator's environment (pip install psycopg[binary], "
                        "or pip install 'migrator[postgres]'), or use an SQLite database)\n")


# ---- the controller bench on a server --------------------------------------------------------------

def test_bench_controller_on_postgres(pg_database):
    url = pg_database()
    args = ["bench", "controller", "--hosts", "10", "--windows", "3", "--db-windows", "2000", "--db", url, "--json"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert make_url(url).password not in r.stdout
    assert {k: res["history_db"][k] for k in ("database", "backend", "reused", "windows")} == {
        "database": safe_url(url), "backend": "postgresql", "reused": False, "windows": 2000}
    assert (res["evaluate"]["windows"], res["evaluate"]["groups_judged"]) == (60, 3)
    assert set(res["queries"]) == {"history_ms", "windows_last_100_ms", "windows_host_last_100_ms",
                                   "windows_phase_last_100_ms"}
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["history_db"]["reused"] is True
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:  # the evaluate part's migrations were deleted: only the history is left
        assert conn.execute(select(Migration.name)).scalars().all() == ["bench controller: history"]
        assert conn.execute(select(func.count()).select_from(Window)).scalar() == 2000
        # ANALYZE ran: the planner has statistics for the windows table
        assert conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'windows'")).scalar() == 2000
    engine.dispose()


def test_the_controllers_lock_does_not_wait_on_agents_window_inserts_but_does_on_another_writer(
        pg_database, tmp_path):
    """lock_migration is FOR NO KEY UPDATE: an agent's open transaction that inserted a window holds
    FOR KEY SHARE on the migration row (its foreign key) and must not hold the controller's round
    up; a second writer of the row (another controller, a manual move) still waits for the first."""
    from sqlalchemy.exc import OperationalError

    from migrator.control.phases import lock_migration
    from migrator.store import api

    url = pg_database()
    (tmp_path / "canary.toml").write_text(f'database = "{url}"\nhosts = ["h1"]\nslices = [1]\n')
    sf = open_store(load_config(tmp_path / "canary.toml").database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, load_config(tmp_path / "canary.toml")).id
    agent, ctl, other = sf(), sf(), sf()
    try:
        agent.begin()
        record(agent, mid, window("h1", "ring", 0))  # still open: KEY SHARE on the migration row
        ctl.begin()
        ctl.execute(text("SET LOCAL lock_timeout = '500ms'"))
        assert lock_migration(ctl, mid).id == mid  # not queued behind the agent
        other.begin()
        other.execute(text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            lock_migration(other, mid)  # writers of the row still serialize
    finally:
        for s in (agent, ctl, other):
            s.rollback()
            s.close()
        sf.dispose()
