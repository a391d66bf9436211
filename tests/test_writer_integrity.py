"""Every writer checks the file: an agent, the library's attach with a config (and wrap, through
the same serve_migration) run start's integrity check before their first write, and refuse a
corrupt database with start's error, leaving the file's bytes as they were."""
from __future__ import annotations

import gc
import hashlib
import sqlite3

import pytest
from typer.testing import CliRunner

from conftest import window
from migrator.cli import app
from migrator.config import load_config
from migrator.errors import DatabaseUnavailable
from migrator.store import api, open_store

runner = CliRunner()
PLAN = 'database = "migrator.db"\nhosts = ["h1", "h2"]\nslices = [1, 2]\n'


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(r) -> str:
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def digest(db) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.fixture
def corrupt(tmp_path):
    """A started migration whose `windows` table has a garbage page no read of status reaches."""
    p = tmp_path / "canary.toml"
    p.write_text(PLAN)
    assert run("init", p).exit_code == 0
    sf = open_store(load_config(p).database_url)
    with sf() as s, s.begin():  # enough windows that the table spans many pages
        api.record_windows(s, 1, [window(h, ch, i, extra={"pad": "x" * 200}) for i in range(400)
                                  for h in ("h1", "h2") for ch in ("perf", "ring")])
    gc.collect()
    sf.dispose()  # the last connection checkpoints the WAL into the file
    db = tmp_path / "migrator.db"
    assert not db.with_name(db.name + "-wal").exists()
    c = sqlite3.connect(db)
    page_size, pages = c.execute("PRAGMA page_size").fetchone()[0], c.execute("PRAGMA page_count").fetchone()[0]
    c.close()
    with open(db, "r+b") as f:  # a page in the middle of the windows table
        f.seek(page_size * (pages // 2))
        f.write(b"\xff" * page_size)
    return p, db


def test_an_agent_refuses_a_corrupt_database_with_starts_error_and_writes_nothing(corrupt):
    p, db = corrupt
    before = digest(db)
    assert run("status", "-c", p).exit_code == 0  # a read never touching the page does not see it
    want = error_line(run("start", "-c", p, "--no-run"))
    assert want.startswith(f"Error: database sqlite:///{db}: the database file is corrupt (")
    gc.collect()
    assert digest(db) == before
    got = error_line(run("agent", "--host", "h1", "-c", p, "--seconds", "2"))
    assert got == want  # the same check, the same words
    gc.collect()
    assert digest(db) == before  # not one page written


def test_the_library_refuses_a_corrupt_database_before_its_first_write(corrupt):
    from migrator import attach

    p, db = corrupt
    before = digest(db)
    with pytest.raises(DatabaseUnavailable, match="the database file is corrupt"):
        attach(object(), "events", config=p, host="h1")  # refused before the program is touched
    gc.collect()
    assert digest(db) == before
