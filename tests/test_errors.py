"""Errors at the edge, one mechanism: every failure a user can cause is one `Error:` line naming
the database (password hidden) and the fix, exit 1; usage errors exit 2.

Everything here is real: junk and corrupt files, paths under a regular file, a lock held by a
second connection, an unreachable server. Nothing about the database is mocked.
"""
from __future__ import annotations

import re
import gc
import sqlite3

import pytest
from typer.testing import CliRunner

import migrator.store.url as store_url
from migrator.cli import app
from migrator.control import moves
from migrator.errors import (BenchError, DatabaseUnavailable, MigratorError, OptionError, StoreError)
from migrator.store import database_errors, open_store, safe_url
from migrator.cli._options import check_duration

runner = CliRunner()

PLAN = 'hosts = ["h1", "h2"]\nslices = [1, 2]\n'
JUNK = b"this is not an sqlite database, just some bytes a user left here\n" * 64


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def plan(tmp_path, database: str):
    p = tmp_path / "canary.toml"
    p.write_text(f"database = {database!r}\n" + PLAN)
    return p


def error_line(r, code: int = 1) -> str:
    """The single `Error:` line of a failed command (exact exit code, nothing else on stderr)."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def usage_text(r) -> str:
    """A usage error's stderr (exit 2) with the box drawing and line wrapping removed."""
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.stderr).split())


# ---- the database, through the CLI -------------------------------------------------------

def test_init_on_a_junk_file(tmp_path):
    db = tmp_path / "junk.db"
    db.write_bytes(JUNK)
    line = error_line(run("init", plan(tmp_path, str(db))))
    assert line == (f"Error: database sqlite:///{db}: the file is not an SQLite database (file is not a database) "
                    f"(fix: point database in canary.toml at a new file or at a migrator database; move {db} away "
                    "if it is not needed)")
    assert db.read_bytes() == JUNK  # untouched


def test_status_on_a_junk_file(tmp_path):
    db = tmp_path / "junk.db"
    db.write_bytes(JUNK)
    line = error_line(run("status", "-c", plan(tmp_path, str(db))))
    assert line.startswith(f"Error: database sqlite:///{db}: the file is not an SQLite database")
    assert "(fix: " in line
    assert db.read_bytes() == JUNK


def test_init_under_a_regular_file(tmp_path):
    # A path whose "directory" is a regular file fails even for root (unlike chmod 0o555).
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory\n")
    db = blocker / "sub" / "db.sqlite"
    p = plan(tmp_path, str(db))
    line = error_line(run("init", p))  # refused like `plan` does: canary.toml's database field
    assert line == (f"Error: {p}: database: sqlite:///{db}: directory {db.parent} cannot exist: {blocker} is a "
                    "file, not a directory (fix: set database in canary.toml to a path whose directory exists "
                    "and is writable)")


def test_init_on_a_directory(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    p = plan(tmp_path, str(d))
    line = error_line(run("init", p))
    assert line == (f"Error: {p}: database: sqlite:///{d}: unable to open the database file: {d} is a directory "
                    "(fix: set database in canary.toml to a file path, not a directory)")


def test_unreachable_server_hides_the_password(tmp_path):
    p = plan(tmp_path, "postgresql://u:secret@127.0.0.1:1/x")
    r = run("init", p)
    line = error_line(r)
    assert "secret" not in r.stdout + r.stderr
    # A missing driver is a canary.toml problem (`plan` says so too); a down server is the database's.
    assert line.startswith((f"Error: {p}: database: postgresql://u:***@127.0.0.1:1/x: ",
                            "Error: database postgresql://u:***@127.0.0.1:1/x: "))
    assert "(fix: " in line
    # Either the driver is missing here, or it is installed and nothing listens on port 1.
    assert ("database driver is not installed" in line and "pip install" in line) or (
        "no PostgreSQL server answers at 127.0.0.1:1 (Connection refused)" in line and "start the server" in line), line


def test_unknown_scheme(tmp_path):
    p = plan(tmp_path, "nosuch://x")
    line = error_line(run("init", p))
    assert line == (f"Error: {p}: database: nosuch://x: unknown database scheme 'nosuch' (no SQLAlchemy dialect or driver "
                    'by that name) (fix: set database in canary.toml to a file path ("migrator.db") or an '
                    "SQLAlchemy URL (postgresql+psycopg://user:password@host/dbname))")


@pytest.mark.parametrize("url", ["://x", "postgresql://u:secret@db.example:port/x"])
def test_unparsable_url(tmp_path, url):
    r = run("init", plan(tmp_path, url))
    line = error_line(r)
    assert "is not a valid database URL" in line and "(fix: " in line
    assert "secret" not in r.stderr


def test_corrupt_database(tmp_path):
    p = plan(tmp_path, "migrator.db")
    db = tmp_path / "migrator.db"
    open_store(f"sqlite:///{db}").dispose()  # a real database at head, its WAL checkpointed and gone
    assert not db.with_name(db.name + "-wal").exists()
    with open(db, "r+b") as f:  # overwrite page 1's b-tree (sqlite_master) after the 100-byte header
        f.seek(100)
        f.write(b"\xff" * 400)
    for cmd in (["status", "-c", p], ["init", p]):
        line = error_line(run(*cmd))
        assert line == (f"Error: database sqlite:///{db}: the database file is corrupt (database disk image is "
                        f"malformed) (fix: restore {db} from a backup, or move it away and run `migrator init` "
                        "to start a new one)")


def test_a_corrupt_page_status_never_reads_is_found_before_the_controller_decides(tmp_path):
    """status answers from the pages it touches; start checks every page first (quick_check)."""
    from conftest import window

    from migrator.config import load_config
    from migrator.store import api

    p = plan(tmp_path, "migrator.db")
    assert run("init", p).exit_code == 0
    sf = open_store(load_config(p).database_url)
    with sf() as s, s.begin():  # enough windows that the table spans many pages
        api.record_windows(s, 1, [window(h, ch, i, extra={"pad": "x" * 200}) for i in range(400)
                                  for h in ("mig1", "mig2") for ch in ("perf", "ring")])
    gc.collect()  # the in-process `init` command's engine (a CLI process would have exited)
    sf.dispose()  # the last connection checkpoints the WAL into the file
    db = tmp_path / "migrator.db"
    assert not db.with_name(db.name + "-wal").exists()
    with sqlite3.connect(db) as c:
        page_size, pages = c.execute("PRAGMA page_size").fetchone()[0], c.execute("PRAGMA page_count").fetchone()[0]
    c.close()
    with open(db, "r+b") as f:  # a page in the middle of the windows table: no index reaches it
        f.seek(page_size * (pages // 2))
        f.write(b"\xff" * page_size)
    assert run("status", "-c", p).exit_code == 0  # unnoticed by a read that never touches it
    line = error_line(run("start", "-c", p, "--no-run"))
    assert line.startswith(f"Error: database sqlite:///{db}: the database file is corrupt (")
    assert line.endswith(f"(fix: restore {db} from a backup, or move it away and run `migrator init` to start a new one)")


def test_locked_database(tmp_path, monkeypatch):
    monkeypatch.setattr(store_url, "BUSY_TIMEOUT_MS", 200)
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("CREATE TABLE other (x)")
        line = error_line(run("init", plan(tmp_path, str(db))))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert line == (f"Error: database sqlite:///{db}: database is locked: another process held its write lock for "
                    "more than 0.2 s (fix: wait for the other writer (a running controller, `migrator init` or an "
                    "sqlite3 shell with an open transaction) to finish or stop it, then retry)")


def test_bench_controller_on_a_junk_db(tmp_path):
    db = tmp_path / "history.db"
    db.write_bytes(JUNK)
    line = error_line(run("bench", "controller", "--hosts", "2", "--windows", "2", "--db-windows", "100", "--db", db))
    assert line.startswith(f"Error: database sqlite:///{db}: the file is not an SQLite database")


# ---- the database, through the library -----------------------------------------------------

def test_open_store_raises_one_store_error_with_data(tmp_path):
    db = tmp_path / "junk.db"
    db.write_bytes(JUNK)
    with pytest.raises(DatabaseUnavailable) as exc:
        open_store(f"sqlite:///{db}")
    e = exc.value
    assert isinstance(e, StoreError) and e.exit_code == 1
    assert (e.url, e.problem) == (f"sqlite:///{db}", "the file is not an SQLite database (file is not a database)")
    assert str(db) in e.fix
    assert isinstance(e.__cause__, Exception)  # the driver's error stays reachable (--debug shows it)


def test_safe_url_hides_passwords():
    assert safe_url("postgresql://u:secret@h:5432/x") == "postgresql://u:***@h:5432/x"
    assert safe_url("postgresql://u:secret@h:notaport/x") == "postgresql://u:***@h:notaport/x"
    assert safe_url("sqlite:////var/lib/m.db") == "sqlite:////var/lib/m.db"


def test_database_errors_wraps_a_commit_that_waits_too_long(tmp_path, monkeypatch):
    monkeypatch.setattr(store_url, "BUSY_TIMEOUT_MS", 200)
    db = tmp_path / "m.db"
    sf = open_store(f"sqlite:///{db}")  # built after the patch: its busy timeout is 200 ms
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseUnavailable, match="database is locked"):
            with database_errors(sf), sf() as s, s.begin():
                s.connection().exec_driver_sql("SELECT 1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        sf.dispose()


# ---- usage errors exit 2 -------------------------------------------------------------------

def test_shadow_unknown_probe_is_a_usage_error():
    text = usage_text(run("shadow", "--probe", "nope"))
    assert "Invalid value for '--probe'" in text and "'nope'" in text
    assert "'synthetic'" in text and "'proc'" in text


@pytest.mark.parametrize("args, option, says", [
    (["--seconds", "-1"], "'--seconds'", "-1.0 is not a positive number of seconds"),
    (["--seconds", "0"], "'--seconds'", "0.0 is not a positive number of seconds"),
    (["--window", "abc"], "'--window'", "'abc' is not a duration (fix: write e.g. 1s, 500ms or 2.5"),
    (["--window", "0ms"], "'--window'", "'0ms' is not a positive duration"),
    (["--rate", "-5"], "'--rate'", "-5.0 is not >= 0"),
    (["--ring-bytes", "1000"], "'--ring-bytes'", "1000 is not a power of two"),
    (["--perf-pages", "3"], "'--perf-pages'", "3 is not a power of two"),
    (["--wakeup", "sometimes"], "'--wakeup'", "'adaptive', 'no_wakeup', 'force_wakeup'"),
    (["--ring-submit", "push"], "'--ring-submit'", "'reserve', 'output'"),
])
def test_shadow_bad_options_are_usage_errors(args, option, says):
    text = usage_text(run("shadow", *args))
    assert f"Invalid value for {option}" in text and says in text, text


@pytest.mark.parametrize("args, option", [
    (["consumers", "--events", "0"], "'--events'"),
    (["consumers", "--rate", "-1"], "'--rate'"),
    (["rollback", "--runs", "0"], "'--runs'"),
    (["rollback", "--hosts", "65"], "'--hosts'"),
    (["rollback", "--window", "0"], "'--window'"),
    (["rollback", "--pps", "0"], "'--pps'"),
    (["controller", "--hosts", "0"], "'--hosts'"),
    (["controller", "--db-windows", "5"], "'--db-windows'"),
])
def test_bench_bad_options_are_usage_errors(args, option):
    text = usage_text(run("bench", *args))
    assert f"Invalid value for {option}" in text, text


def test_bench_controller_db_must_be_a_file(tmp_path):
    text = usage_text(run("bench", "controller", "--db", tmp_path))
    assert "Invalid value for '--db'" in text and "is a directory" in text


def test_option_errors_from_the_library_exit_2(session_factory):
    with pytest.raises(OptionError) as exc:
        check_duration("fast", "--window")
    assert exc.value.exit_code == 2 and (exc.value.option, exc.value.value) == ("--window", "fast")
    assert str(exc.value) == ("--window: 'fast' is not a duration (fix: write e.g. 1s, 500ms or 2.5; units ms, s, m, h, "
                              "d, w, combined as in 1h30m; a bare number is seconds)")
    with pytest.raises(OptionError, match="'frobnicate' is not a manual move"):
        moves.manual_move(session_factory, 1, "frobnicate")


def test_bench_error_carries_its_data():
    e = BenchError("rollback", "run 1 ended COMPLETE, not ROLLED_BACK", "run it again")
    assert isinstance(e, MigratorError) and e.exit_code == 1
    assert (e.bench, e.problem, e.fix) == ("rollback", "run 1 ended COMPLETE, not ROLLED_BACK", "run it again")
    assert str(e) == "bench rollback: run 1 ended COMPLETE, not ROLLED_BACK (fix: run it again)"
