"""The operator CLI through CliRunner: exact exit codes and messages; bad configs write nothing."""
from __future__ import annotations

import gc
import json
import os

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from migrator.cli import app
from migrator.store import make_engine, open_store, safe_url
from migrator.store.migrate import head_revision

from conftest import window, record

runner = CliRunner()

GOOD = ('hosts = ["h1", "h2"]\nslices = [1, 2]\nrollback_after = 2\n'
        "[phases.dual_instrument]\nmin_clean_windows = 0\n"
        "[phases.shadow]\nmin_clean_windows = 2\n")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def cfg_path(tmp_path):
    p = tmp_path / "canary.toml"
    p.write_text(GOOD)
    return p


def settle():
    """Close pooled connections of earlier in-process commands (a real CLI process exits): WAL checkpointed."""
    gc.collect()


def db_of(cfg_path):
    return cfg_path.parent / "migrator.db"


def url_of(cfg_path, backend):
    """The database the CLI uses in this test: the backend's PostgreSQL database, or the SQLite file."""
    return backend.url or f"sqlite:///{db_of(cfg_path)}"


def test_init_plan_start_and_views(cfg_path, backend):
    r = run("plan", "-c", cfg_path)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1:3] == ["hosts (2): h1, h2",
                                          "rollback after 2 consecutive breaching windows of 1 s; no-data: hold"]
    assert not db_of(cfg_path).exists()  # plan never opens the database

    r = run("init", cfg_path)
    assert r.exit_code == 0 and r.stdout.startswith("migration 1 recorded: PLANNED, 2 hosts, 2 slices")
    r = run("init", cfg_path)
    assert r.exit_code == 0 and r.stdout.startswith("migration 1 already recorded: PLANNED")

    r = run("start", "-c", cfg_path, "--no-run", "--schema-fingerprint", "fp1", "--json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert (st["phase"], st["schema_fingerprint"], [h["desired_mode"] for h in st["hosts"]]) == (
        "DUAL_INSTRUMENT", "fp1", ["DUAL", "DUAL"])

    r = run("advance", "-c", cfg_path)  # min_clean_windows = 0 for DUAL_INSTRUMENT
    assert r.exit_code == 0 and r.stdout == "migration 1: DUAL_INSTRUMENT -> SHADOW (transition 2, operator advance)\n"
    r = run("advance", "-c", cfg_path)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == ("Error: cannot go from SHADOW to CANARY slice 1/2: guard 'min_clean_windows': "
                        "0 of 2 clean windows so far\n")
    assert run("pause", "-c", cfg_path, "--reason", "freeze").exit_code == 0
    r = run("advance", "-c", cfg_path)
    assert (r.exit_code, r.stderr) == (1, "Error: cannot go from PAUSED to the next phase: resume it first\n")
    assert run("resume", "-c", cfg_path).stdout == "migration 1: PAUSED -> SHADOW (transition 4, operator resume)\n"

    sf = open_store(url_of(cfg_path, backend))
    with sf() as s, s.begin():
        for i in range(3):
            for h in ("h1", "h2"):
                for ch in ("ring", "perf"):
                    record(s, 1, window(h, ch, i, start=2e9 + i, lost=5 if ch == "ring" else 0))

    r = run("windows", "-c", cfg_path, "--host", "h1", "--channel", "ring", "--last", "2", "--json")
    assert r.exit_code == 0
    assert [(w["index"], w["phase"], w["loss_rate"]) for w in json.loads(r.stdout)] == [(1, "SHADOW", 0.005), (2, "SHADOW", 0.005)]
    r = run("what-if", "-c", cfg_path, "--json")
    assert json.loads(r.stdout)["rollback_at"]["index"] == 1  # 2 breaches of max_loss_rate 0.001
    r = run("what-if", "-c", cfg_path, "--max-loss-rate", "0.01")
    assert r.stdout.splitlines()[1:] == ["would not roll back", "actually: no automatic rollback"]
    r = run("what-if", "-c", cfg_path, "--max-parse-errors", "5", "--max-payload-mismatch", "2", "--json")
    th = json.loads(r.stdout)["thresholds"]
    assert (th["max_parse_errors"], th["max_payload_mismatch"]) == (5, 2)

    r = run("rollback", "-c", cfg_path, "--reason", "lag regression")
    assert r.stdout == "migration 1: SHADOW -> ROLLED_BACK (transition 5, lag regression)\n"
    r = run("history", "-c", cfg_path, "--json")
    hist = json.loads(r.stdout)
    assert [(h["from"], h["to"], h["actor"]) for h in hist] == [
        ("PLANNED", "DUAL_INSTRUMENT", "manual"), ("DUAL_INSTRUMENT", "SHADOW", "manual"), ("SHADOW", "PAUSED", "manual"),
        ("PAUSED", "SHADOW", "manual"), ("SHADOW", "ROLLED_BACK", "manual")]
    r = run("status", "-c", cfg_path)
    assert r.exit_code == 1 and r.stdout.splitlines()[0].startswith("migration 1: ROLLED_BACK")  # argo-style exit
    r = run("abort", "-c", cfg_path)
    assert (r.exit_code, r.stderr) == (1, "Error: cannot go from ROLLED_BACK to ABORTED: ROLLED_BACK is final\n")


def db_files(db):
    """The database as it is on disk: main file (bytes, mtime) and its -wal and -shm (exist, bytes)."""
    def side(p):
        return (p.exists(), p.read_bytes() if p.exists() else None)

    return {"db": (db.read_bytes(), db.stat().st_mtime_ns),
            "wal": side(db.with_name(db.name + "-wal")), "shm": side(db.with_name(db.name + "-shm")),
            "dir": sorted(os.listdir(db.parent))}


def test_read_only_commands_do_not_write(cfg_path):
    assert run("init", cfg_path).exit_code == 0
    settle()
    db = db_of(cfg_path)
    before = db_files(db)
    # init's connections are closed: everything is checkpointed into the main file
    assert (before["wal"], before["shm"], before["dir"]) == ((False, None), (False, None), ["canary.toml", "migrator.db"])
    for cmd in (["status"], ["status", "--json"], ["history"], ["windows", "--last", "5"], ["what-if"]):
        r = run(*cmd, "-c", cfg_path)
        assert r.exit_code == 0, (cmd, r.output)
    settle()
    assert db_files(db) == before


def test_db_files_sees_a_write_left_in_the_wal(cfg_path):
    """The comparison above would catch a write that never reached the main file."""
    import sqlite3

    assert run("init", cfg_path).exit_code == 0
    settle()
    db = db_of(cfg_path)
    before = db_files(db)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("UPDATE migrations SET name = 'changed'")  # WAL mode: lands in -wal, main file untouched
        after = db_files(db)
    finally:
        conn.close()
    assert after["db"] == before["db"]
    assert (after["wal"][0], after["shm"][0]) == (True, True) and after["wal"][1] != b""
    assert after != before


def test_read_only_commands_need_a_database(cfg_path):
    r = run("status", "-c", cfg_path)
    assert (r.exit_code, r.stderr) == (1, f"Error: no database at {db_of(cfg_path)}; run `migrator init` first\n")
    assert not db_of(cfg_path).exists()


def test_usage_errors_exit_2(cfg_path):
    assert run("windows", "-c", cfg_path, "--last", "0").exit_code == 2
    assert run("status", "--bogus").exit_code == 2
    r = run("what-if", "-c", cfg_path, "--no-data", "maybe")
    assert r.exit_code == 2 and "must be hold, breach or reset" in r.stderr


def test_newer_database_is_refused(cfg_path, backend):
    assert run("init", cfg_path).exit_code == 0
    url = url_of(cfg_path, backend)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    engine.dispose()
    for cmd in (["init", cfg_path], ["status", "-c", cfg_path]):
        r = run(*cmd)
        assert (r.exit_code, r.stderr) == (1, f"Error: database {safe_url(url)} is at revision ffff, newer than this migrator "
                                              f"(head {head_revision()}); upgrade migrator instead of using an older one\n")


BAD = [
    ("unknown key", "colour = 1\n" + GOOD, "colour: unknown key"),
    ("wrong type", GOOD.replace("rollback_after = 2", 'rollback_after = "two"'),
     "rollback_after: must be an integer, got string 'two' (fix: write e.g. rollback_after = 3)"),
    ("N = 0", GOOD.replace("rollback_after = 2", "rollback_after = 0"),
     "rollback_after: must be >= 1, got 0 (fix: use a value >= 1)"),
    ("negative threshold", GOOD + "[thresholds]\nmax_lag_p99_ms = -1\n",
     "thresholds.max_lag_p99_ms: must be > 0, got -1 (fix: use a positive number)"),
    ("negative delta", GOOD + "[thresholds]\nmax_loss_delta = -0.1\n",
     "thresholds.max_loss_delta: must be >= 0, got -0.1 (fix: thresholds cannot be negative)"),
    ("empty slices", GOOD.replace("slices = [1, 2]", "slices = []"),
     'slices: must be a non-empty array, got [] (fix: write e.g. slices = [1, "50%", "100%"])'),
    ("slices short", GOOD.replace("slices = [1, 2]", "slices = [1]"),
     'slices: last slice covers 1 of 2 hosts (fix: end the list with "100%" (or 2, the number of hosts))'),
    ("min_clean negative", GOOD.replace("min_clean_windows = 2", "min_clean_windows = -2"),
     "phases.shadow.min_clean_windows: must be >= 0, got -2 (fix: use a value >= 0)"),
    ("unknown phase", GOOD + "[phases.canry]\nmin_clean_windows = 1\n",
     "phases.canry: unknown key, did you mean canary? (fix: rename it canary, or remove it; "
     "known keys here: dual_instrument, shadow, canary)"),
    ("bad wakeup", GOOD + '[buffers]\nwakeup = "sometimes"\n',
     """buffers.wakeup: must be one of adaptive, no_wakeup, force_wakeup, batched, got 'sometimes' (fix: write e.g. wakeup = "adaptive")"""),
    ("ring not page multiple", GOOD + "[buffers]\nring_bytes = 1000\n",
     "buffers.ring_bytes: must be >= 4096, got 1000 (fix: use a value >= 4096)"),
    ("syntax", GOOD + "[lab\n", "is not valid TOML: "),
]


@pytest.mark.parametrize("body,expected", [(b, e) for _, b, e in BAD], ids=[n for n, _, _ in BAD])
@pytest.mark.parametrize("cmd", ["init", "start", "rollback"])
def test_bad_config_exit_1_and_database_untouched(tmp_path, cfg_path, body, expected, cmd):
    assert run("init", cfg_path).exit_code == 0
    settle()
    db = db_of(cfg_path)
    before = (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    bad = tmp_path / "bad.toml"
    bad.write_text(body)
    r = run(cmd, bad) if cmd == "init" else run(cmd, "-c", bad)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith(f"Error: {bad}: {expected}") and r.stderr.count("\n") == 1
    assert (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(tmp_path))) == (*before[:2], sorted(before[2] + ["bad.toml"]))


def test_bad_config_creates_no_database(tmp_path):
    bad = tmp_path / "canary.toml"
    bad.write_text("rollback_after = 0\n")
    r = run("init", bad)
    assert (r.exit_code, r.stderr) == (1, f"Error: {bad}: rollback_after: must be >= 1, got 0 (fix: use a value >= 1)\n")
    assert os.listdir(tmp_path) == ["canary.toml"]
    r = run("init", tmp_path / "missing.toml")
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {tmp_path / 'missing.toml'}: does not exist")
    r = run("plan", "-c", tmp_path)  # a directory: unreadable
    assert (r.exit_code, r.stderr) == (1, f"Error: {tmp_path}: cannot be read: Is a directory "
                                          "(fix: give the path of a readable canary.toml)\n")
    assert os.listdir(tmp_path) == ["canary.toml"]


def test_changed_config_refused_by_start(cfg_path, backend):
    assert run("init", cfg_path).exit_code == 0
    cfg_path.write_text(GOOD.replace("rollback_after = 2", "rollback_after = 5"))
    r = run("start", "-c", cfg_path, "--no-run")
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {cfg_path} changed since migration 1 was initialised")
