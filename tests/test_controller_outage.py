"""The controller rides out database outages: a full disk and a held write lock, both real.

The loop rolls the round back, logs one line per outage and one when the database is back,
retries with back-off, and the SAME controller then finishes the migration. Errors that cannot
heal (the schema is not what the code expects) end the loop with a StoreError.
"""
from __future__ import annotations

import errno
import logging
import sqlite3
import subprocess
import threading
import time

import pytest
from sqlalchemy import text

import migrator.store.url as store_url
from migrator.config import load_config
from migrator.control import controller as controller_mod
from migrator.control.controller import run_controller
from migrator.control.phases import DbApplier, Phase, transition
from migrator.errors import StoreError
from migrator.store import api, open_store


from conftest import T0, window
from kernel_util import needs_root

LOGGER = "migrator.control.controller"
PLAN = ('hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = 3\nwindow_seconds = 1.0\n'
        "[phases.dual_instrument]\nmin_clean_windows = 1\n"
        "[phases.shadow]\nmin_clean_windows = 1\n"
        "[phases.canary]\nmin_clean_windows = 2\n")


def in_canary(tmp_path, db):
    """A migration in CANARY slice 1/2 on the SQLite file `db`: (session factory, id)."""
    toml = tmp_path / "canary.toml"
    toml.write_text(f"database = {str(db)!r}\n" + PLAN)
    cfg = load_config(toml)
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    for tgt, sl in [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0), (Phase.CANARY, 1)]:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier(), clock=lambda: T0)
    return sf, mid


def report_index(sf, mid, index, *, lost=0):
    """Every host reports a window for `index` on the channel of its desired mode (real rows, agents' path)."""
    start = time.time()
    with sf() as s, s.begin():
        modes = {h["name"]: h["desired_mode"] for h in api.hosts(s, mid)}
        api.record_windows(s, mid, [
            window(h, "ring" if m == "RING" else "perf", index, mode=m, start=start,
                   lost=lost if m == "RING" else 0) for h, m in modes.items()])


def phase_of(sf, mid):
    with sf() as s:
        m = api.get_migration(s, mid)
        return m.phase, m.slice


def start_controller(sf, mid, **kw):
    stop, out, steps = threading.Event(), {}, []

    def body():
        try:
            out["phase"] = run_controller(sf, mid, applier=DbApplier(), stop=stop, poll_interval=0.02,
                                          on_step=steps.append, **kw)
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            out["error"] = exc

    th = threading.Thread(target=body, daemon=True)
    th.start()
    return th, stop, out, steps


def wait_for(cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def outage_lines(caplog):
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    return ([m for m in msgs if m.startswith("database unavailable: ")],
            [m for m in msgs if m.startswith("database back after ")])


def drive_to_complete(sf, mid, th, first_index):
    """Feed clean windows until the controller (still the same thread) reaches COMPLETE."""
    i = first_index
    deadline = time.monotonic() + 30
    while phase_of(sf, mid)[0] != "COMPLETE":
        assert th.is_alive(), "controller exited before COMPLETE"
        assert time.monotonic() < deadline, f"stuck in {phase_of(sf, mid)}"
        report_index(sf, mid, i)
        i += 1
        time.sleep(0.1)
    th.join(10)
    assert not th.is_alive()


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(controller_mod, "BACKOFF_MAX", 0.2)


def test_locked_database_is_ridden_out(tmp_path, monkeypatch, caplog, fast_backoff):
    monkeypatch.setattr(store_url, "BUSY_TIMEOUT_MS", 100)  # before open_store: its connections wait 0.1 s
    caplog.set_level(logging.INFO, logger=LOGGER)
    db = tmp_path / "m.db"
    sf, mid = in_canary(tmp_path, db)
    th, stop, out, steps = start_controller(sf, mid)
    try:
        wait_for(lambda: steps, what="the first round")
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            wait_for(lambda: outage_lines(caplog)[0], what="the outage line")
            time.sleep(1.0)  # several retries while the lock is held
            assert th.is_alive()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(lambda: outage_lines(caplog)[1], what="the back line")
        down, back = outage_lines(caplog)
        assert len(down) == 1 and len(back) == 1, (down, back)
        assert down[0].startswith("database unavailable: database is locked") and down[0].endswith("; retrying")
        assert back[0].endswith(" s")
        drive_to_complete(sf, mid, th, 0)
        assert out == {"phase": "COMPLETE"}
        with sf() as s:
            assert api.lease_of(s, mid) is None
    finally:
        stop.set()
        th.join(10)
        sf.dispose()


def test_schema_error_that_cannot_heal_gives_up_with_a_store_error(tmp_path, fast_backoff):
    sf, mid = in_canary(tmp_path, tmp_path / "m.db")
    th, stop, out, steps = start_controller(sf, mid)
    try:
        wait_for(lambda: steps, what="the first round")
        with sf() as s, s.begin():
            s.execute(text("DROP TABLE windows"))  # a migration undone behind our back
        th.join(10)
        assert not th.is_alive()
        err = out.get("error")
        assert isinstance(err, StoreError), out
        assert "its schema is not what this migrator expects" in str(err) and "no such table" in str(err)
    finally:
        stop.set()
        th.join(10)
        sf.dispose()


def fill(path):
    """Write zeros to `path` until the filesystem is full."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 512:
                    return
                chunk = chunk[: len(chunk) // 2]


@needs_root
@pytest.mark.kernel
def test_full_disk_is_ridden_out_and_the_same_controller_completes(tmp_path, caplog, fast_backoff):
    caplog.set_level(logging.INFO, logger=LOGGER)
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True)
    sf = None
    try:
        sf, mid = in_canary(tmp_path, mnt / "m.db")
        th, stop, out, steps = start_controller(sf, mid)
        try:
            wait_for(lambda: steps, what="the first round")
            filler = mnt / "filler"
            fill(filler)
            wait_for(lambda: outage_lines(caplog)[0], what="the outage line")
            n = len(steps)
            time.sleep(1.5)  # several failed rounds, each rolled back
            assert th.is_alive() and "error" not in out
            assert len(steps) == n  # no round completed while the disk was full
            down, back = outage_lines(caplog)
            assert len(down) == 1 and back == [], (down, back)
            assert down == ["database unavailable: database or disk is full; retrying"]
            filler.unlink()
            wait_for(lambda: outage_lines(caplog)[1], what="the back line")
            drive_to_complete(sf, mid, th, 0)
            assert out == {"phase": "COMPLETE"}
            down, back = outage_lines(caplog)
            assert len(down) == 1 and len(back) == 1, (down, back)
        finally:
            stop.set()
            th.join(10)
    finally:
        if sf is not None:
            sf.dispose()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
