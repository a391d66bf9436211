"""Push, not poll (issue 17, item 1), on a real PostgreSQL: a host's link LISTENs on its migration's
channel and reads its desired mode only when notified, plus a slow safety read.

Statements are counted in process: every statement the link sends goes through SQLAlchemy, whose
`before_cursor_execute` event sees it on both of its engines (the writer and the LISTENing reader),
and pg_stat_database's commits of the test's own database bound the link's transactions.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest
from sqlalchemy import event

from migrator.agent.link import DbLink
from migrator.config import load_config
from migrator.control.phases import DbApplier, transition
from migrator.shared.vocab import Phase
from migrator.store import api, open_store
from migrator.store.push import channel

PLAN = ('hosts = ["h1", "h2"]\nslices = [1, 2]\n'
        "[phases.dual_instrument]\nmin_clean_windows = 0\n"
        "[phases.shadow]\nmin_clean_windows = 0\n"
        "[phases.canary]\nmin_clean_windows = 0\n")


class Statements:
    """Statements sent on an engine, kept with when they were sent."""

    def __init__(self, *engines) -> None:
        self.sent: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        with self._lock:
            self.sent.append((time.monotonic(), " ".join(statement.split())))

    def desired_reads(self, since: float = 0.0) -> list[float]:
        """When the link's desired-mode query ran (it joins hosts to migrations; the heartbeat reads hosts only)."""
        with self._lock:
            return [t for t, s in self.sent if t >= since and "desired_mode" in s and "JOIN migrations" in s]


@pytest.fixture
def pg_migration(tmp_path, pg_database, monkeypatch):
    """A PLANNED two-host migration in a throwaway PostgreSQL database: (url, session factory, id)."""
    url = pg_database()
    monkeypatch.setenv("MIGRATOR_DATABASE_URL", url)
    (tmp_path / "canary.toml").write_text(PLAN)
    cfg = load_config(tmp_path / "canary.toml")
    sf = open_store(url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp").id
    yield url, sf, mid
    sf.dispose()


def wait_for(cond, timeout: float, step: float = 0.005) -> float:
    """Seconds until cond() held; fails after timeout."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(step)
    return time.monotonic() - t0


def test_idle_link_reads_its_mode_only_at_safety_reads(pg_migration):
    url, sf, mid = pg_migration
    link = DbLink(sf, mid, "h1", safety_read=1.5)
    assert link.push
    seen = Statements(sf.engine, link.reader.engine)
    link.start()
    try:
        wait_for(lambda: link.desired is not None, 5.0)
        assert link.desired.mode == "PERF"
        t0 = time.monotonic()
        time.sleep(4.6)
        reads = seen.desired_reads(since=t0)
        # One safety read every 1.5 s, none in between: 3 in 4.6 s (4 at most, by timing), and
        # nothing polled: the old link read it 100 times a second.
        assert 2 <= len(reads) <= 4, reads
        gaps = [b - a for a, b in zip(reads, reads[1:])]
        assert all(g >= 1.4 for g in gaps), gaps
        assert link.reads >= len(reads)
        # The heartbeat (one write a second) and the safety reads are all it does.
        with seen._lock:
            others = [s for t, s in seen.sent if t >= t0 and "desired_mode" not in s]
        assert len(others) <= 60, others[:10]
    finally:
        link.stop()


def test_idle_link_commits_few_transactions(pg_migration):
    url, sf, mid = pg_migration
    link = DbLink(sf, mid, "h1")  # the default safety read
    # The link's own transactions, counted where they end (commit or rollback) on its engines: the
    # server's pg_stat_database also counts autovacuum and other tests' sessions, so its rate is noise.
    ended: list[float] = []
    for engine in {sf.engine, link.reader.engine}:
        for ev in ("commit", "rollback"):
            event.listen(engine, ev, lambda conn: ended.append(time.monotonic()))
    link.start()
    try:
        wait_for(lambda: link.desired is not None, 5.0)
        time.sleep(0.5)
        t0 = time.monotonic()
        time.sleep(4.0)
        t1 = time.monotonic()
        rate = len([t for t in ended if t0 <= t < t1]) / (t1 - t0)
        assert rate <= 2.0, f"{rate:.1f} transactions/s from an idle link"
    finally:
        link.stop()


def test_transition_arrives_within_one_notification(pg_migration):
    """With the safety read a minute away, each move reaches both hosts' links within a second: the
    notification carries it, not a poll. Pause (no mode changes) is announced too."""
    url, sf, mid = pg_migration
    links = [DbLink(sf, mid, h, safety_read=60.0) for h in ("h1", "h2")]
    seen = Statements(*[link.reader.engine for link in links])
    for link in links:
        link.start()
    try:
        wait_for(lambda: all(link.desired is not None for link in links), 5.0)
        time.sleep(0.3)  # past the first reads: what follows is notified, or would wait 60 s
        first = len(seen.desired_reads())
        moves = [(Phase.DUAL_INSTRUMENT, 0, {"h1": "DUAL", "h2": "DUAL"}),
                 (Phase.SHADOW, 0, {"h1": "DUAL", "h2": "DUAL"}),
                 (Phase.CANARY, 1, {"h1": "RING", "h2": "PERF"}),
                 (Phase.PAUSED, 0, {"h1": "RING", "h2": "PERF"}),
                 (Phase.CANARY, 1, {"h1": "RING", "h2": "PERF"}),
                 (Phase.ROLLED_BACK, 0, {"h1": "PERF", "h2": "PERF"})]
        for target, to_slice, want in moves:
            transition(sf, mid, target, to_slice=to_slice, applier=DbApplier(), actor="manual")
            took = wait_for(lambda: all(link.desired.mode == want[link.host] and link.desired.phase == target
                                        and link.desired.settled for link in links), 1.0)
            assert took < 1.0, (target, took)
        # Reads came from notifications: a handful per move and link, never a poll's hundred a second.
        assert len(seen.desired_reads()) - first <= len(moves) * len(links) * 3
    finally:
        for link in links:
            link.stop()


def test_notify_is_sent_only_when_the_transaction_commits(pg_migration):
    """announce() rides the transaction: a rolled-back mode change tells nobody."""
    import psycopg

    url, sf, mid = pg_migration
    raw = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw, autocommit=True) as listener:
        listener.execute(f"LISTEN {channel(mid)}")
        with sf() as s:
            s.begin()
            from migrator.store.push import announce
            announce(s, mid, "modes")
            s.rollback()
        assert list(listener.notifies(timeout=0.3)) == []
        DbApplier().apply(sf, mid, {"h1": "DUAL"})
        got = list(listener.notifies(timeout=2.0, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [(channel(mid), "modes")]


def test_a_move_to_perf_is_announced_with_its_hosts_and_the_link_puts_it_in_force_before_reading(pg_migration):
    """DbApplier names the hosts a move to PERF alone concerns in its NOTIFY payload ("perf:*" for
    every host); a link that hears one for its host follows PERF at once, unsettled, before its read
    of the row (PERF is the safe mode); any other payload only makes it read."""
    from sqlalchemy import create_engine

    from migrator.store.push import perf_for

    url, sf, mid = pg_migration
    listener = create_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        listener.exec_driver_sql(f"LISTEN {channel(mid)}")
        raw = listener.connection.driver_connection
        heard = []
        for modes in ({"h1": "DUAL", "h2": "DUAL"}, {"h1": "PERF"}, {"h1": "PERF", "h2": "PERF"},
                      {"h1": "RING", "h2": "PERF"}):
            DbApplier().apply(sf, mid, modes)
            heard += [n.payload for n in raw.notifies(timeout=5.0, stop_after=1)]
        assert heard == ["modes", "perf:h1", "perf:*", "modes"]
    finally:
        listener.close()
    assert [perf_for(p, "h2") for p in heard] == [False, False, True, False]

    link = DbLink(sf, mid, "h2")  # not started: heard() is what its LISTEN connection calls
    try:
        link.desired = link.read_desired()
        assert (link.desired.mode, link.reads) == ("PERF", 1)
        link.desired = dataclasses.replace(link.desired, mode="RING", settled=True)
        link.heard(["perf:h1"])  # another host's move: read again, nothing in force yet
        assert (link.desired.mode, link._notified) == ("RING", True)
        link.heard(["perf:*", "modes"])  # the last word is a read: nothing in force before it
        assert link.desired.mode == "RING"
        link.heard(["modes", "perf:h1,h2"])
        assert (link.desired.mode, link.desired.settled, link.reads) == ("PERF", False, 1)
        assert os.eventfd_read(link.wake_fd) == 1  # the data path was woken to follow it
    finally:
        link.stop()


def test_bench_idle_measures_a_link_only_host_and_names_its_targets(pg_server):
    """`migrator bench idle` (link only: no BPF) runs against the server, prints one JSON object with
    the host's transactions and CPU, judges both targets, and leaves no database behind."""
    import json as jsonmod

    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool
    from typer.testing import CliRunner

    from migrator.cli import app

    url = pg_server.render_as_string(hide_password=False)
    res = CliRunner().invoke(app, ["bench", "idle", "--db", url, "--seconds", "1", "--link-only", "--json"])
    assert res.exit_code == 0, res.output
    got = jsonmod.loads(res.stdout)
    assert got["mode"] == "link only" and got["seconds"] >= 1.0
    assert set(got["targets"]) == {"transactions/s <= 2", "process CPU <= 0.5 % of a core"}
    assert got["transactions_per_s"] > 0 and got["process_cpu_pct"] is not None
    assert got["floor_cpu_pct"] > 0  # the bare poll(100) loop beside it woke ten times a second
    engine = create_engine(pg_server, poolclass=NullPool)
    with engine.connect() as conn:
        left = conn.scalar(text("SELECT count(*) FROM pg_database WHERE datname LIKE 'migrator_bench_idle_%'"))
    engine.dispose()
    assert left == 0
