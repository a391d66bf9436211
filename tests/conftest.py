"""Shared fixtures: a real SQLite file in tmp_path migrated by alembic, configs, window records."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrator.config import Config, load_config
from migrator.store import open_store
from migrator.shared.records import ChannelWindow

T0 = 1_000_000.0  # a fixed clock: transitions confirm at T0, windows start after it


def write_toml(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@pytest.fixture
def toml_file(tmp_path):
    """Factory: write a canary.toml into tmp_path (database next to it) and return its path."""
    def make(body: str = "", name: str = "canary.toml") -> Path:
        return write_toml(tmp_path / name, body)
    return make


@pytest.fixture
def config(toml_file) -> Config:
    """Two hosts, slices [1, 2], N=3, one clean window per phase: short scenarios."""
    return load_config(toml_file(
        'hosts = ["h1", "h2"]\nslices = [1, 2]\nrollback_after = 3\n'
        "[phases.dual_instrument]\nmin_clean_windows = 1\n"
        "[phases.shadow]\nmin_clean_windows = 1\n"
        "[phases.canary]\nmin_clean_windows = 1\n"))


@pytest.fixture
def session_factory(config, backend):
    """A migrated store on the test's backend: the config's SQLite file, or a throwaway PostgreSQL database."""
    sf = open_store(backend.url or config.database_url)
    yield sf
    sf.dispose()


# ---- backends: SQLite and a real PostgreSQL ----------------------------------------------------
# A test that asks for `backend` runs once per backend (ids "sqlite", "postgres"), unless marked
# sqlite_only. On "postgres" it gets a database of its own on the server named by
# MIGRATOR_TEST_PG_URL (scripts/postgres.sh starts one and prints it; scripts/test.sh exports it),
# dropped after the test, and MIGRATOR_DATABASE_URL points every canary.toml loaded during the test
# at it. Without a server: unavailable() (skip locally, fail in CI).
BACKENDS = ("sqlite", "postgres")
PG_ENV = "MIGRATOR_TEST_PG_URL"
_pg_names = itertools.count(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: runs on the sqlite backend only (checks SQLite files)")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("backend", ["sqlite"] if only else list(BACKENDS), indirect=True)


@dataclass
class Backend:
    """Which database a test runs on: url is None for SQLite (the config's own file)."""
    name: str
    url: str | None = None


@pytest.fixture(autouse=True)
def _no_database_url_from_the_shell(monkeypatch):
    """A developer's MIGRATOR_DATABASE_URL must not send the tests to their database."""
    monkeypatch.delenv("MIGRATOR_DATABASE_URL", raising=False)


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server URL (an SQLAlchemy URL with a role that may create databases)."""
    from kernel_util import unavailable

    raw = os.environ.get(PG_ENV, "")
    if not raw:
        unavailable(f"no PostgreSQL server for the tests: {PG_ENV} is not set "
                    '(eval "$(bash scripts/postgres.sh)" starts one; scripts/test.sh does it)')
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'migrator[postgres]'; scripts/setup.sh does it)")
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = make_url(raw)
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        unavailable(f"the PostgreSQL server of {PG_ENV} does not answer: {' '.join(str(exc).split())[:200]}")
    yield url
    engine.dispose()


@pytest.fixture
def pg_database(pg_server):
    """Factory: a new empty database on the test server; returns its URL (password included). Dropped after."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    made: list[str] = []

    def make() -> str:
        name = f"migrator_test_{os.getpid()}_{next(_pg_names)}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        made.append(name)
        return pg_server.set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in made:  # FORCE: ends connections a test left in its engines' pools
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def backend(request, monkeypatch) -> Backend:
    """The test's database backend (parametrized by pytest_generate_tests)."""
    if request.param == "sqlite":
        return Backend("sqlite")
    url = request.getfixturevalue("pg_database")()
    monkeypatch.setenv("MIGRATOR_DATABASE_URL", url)
    return Backend("postgres", url)


def window(host: str, channel: str, index: int, *, mode: str = "DUAL", attempts: int = 1000, lost: int = 0,
           dropped: int = 0, lag: float | None = 1.0, start: float | None = None, **kw) -> ChannelWindow:
    """A ChannelWindow one second long starting at T0 + 10 + index unless `start` is given."""
    s = T0 + 10 + index if start is None else start
    return ChannelWindow(host=host, channel=channel, index=index, start=s, end=s + 1.0, mode=mode,
                         attempts=attempts, delivered=attempts - lost - dropped, lost=lost, dropped_full=dropped,
                         lag_p50_ms=lag, lag_p99_ms=lag, lag_max_ms=lag, **kw)


def lab_plan(hosts: int = 3, slices: str = '[1, "50%", "100%"]', extra: str = "") -> str:
    """The lab migrations' canary.toml: 1 s windows, N=3, two clean windows per phase, 1000 pps."""
    return (f'window_seconds = 1.0\nslices = {slices}\nrollback_after = 3\n'
            "[phases.dual_instrument]\nmin_clean_windows = 2\n[phases.shadow]\nmin_clean_windows = 2\n"
            f"[phases.canary]\nmin_clean_windows = 2\n[lab]\nhosts = {hosts}\npps = 1000\n{extra}")


@pytest.fixture
def lab_base(tmp_path) -> Config:
    """The 3-host lab plan (lab_plan()) loaded from tmp_path/base.toml."""
    p = tmp_path / "base.toml"
    p.write_text(lab_plan())
    return load_config(p)


AGENT_PLAN = """
hosts = ["h1"]
slices = [1]
window_seconds = 0.5
[probe]
name = "synthetic"
rate = 4000
"""


@pytest.fixture
def started(tmp_path):
    """One synthetic host h1 in a migration already in DUAL_INSTRUMENT: (config, session factory, id).

    The frozen schema fingerprint is the one the synthetic probe's agent reports (what `migrator
    start` freezes), not a placeholder: else the first window an agent stores marks the schema
    changed and every forward move after it fails its guard, or not, by timing."""
    from migrator.control.moves import default_fingerprint
    from migrator.control.phases import DbApplier, transition
    from migrator.store import api
    from migrator.shared.vocab import Phase

    (tmp_path / "canary.toml").write_text(AGENT_PLAN)
    cfg = load_config(tmp_path / "canary.toml")
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint=default_fingerprint()).id
    transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier())
    return cfg, sf, mid


def record(session, migration_id: int, w: ChannelWindow) -> int:
    """Store one window through the agents' write path (api.record_windows); returns its row id."""
    from sqlalchemy import select

    from migrator.store import api
    from migrator.store.models import Window

    api.record_windows(session, migration_id, [w])
    return session.scalar(select(Window.id).where(Window.migration_id == migration_id, Window.host == w.host,
                                                  Window.channel == w.channel, Window.index == w.index))


class RecordingApplier:
    """A ModeApplier that records every call instead of touching hosts."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict]] = []

    def apply(self, session_factory, migration_id, modes) -> None:
        self.calls.append((migration_id, dict(modes)))


@pytest.fixture
def applier() -> RecordingApplier:
    return RecordingApplier()


def drive_migration(sf, mid: int, make_window, max_windows: int = 40) -> list[dict]:
    """Play the hosts of a started-to-be migration through the real controller until it ends.

    Per window index, every host records what a host in its desired mode would (DUAL: both channels;
    a canary slice on RING: ring; the other hosts in CANARY: perf), made by
    `make_window(host, channel, index, mode, on_ring, phase)`; then the controller judges the index
    at its end and moves. Returns the windows recorded as {index, host, channel, id}."""
    from migrator.control.controller import Controller, start_migration
    from migrator.control.phases import DbApplier
    from migrator.shared.vocab import FINAL
    from migrator.store import api
    from migrator.store.models import Migration

    clock = [T0]
    start_migration(sf, mid, schema_fingerprint="fp1", applier=DbApplier(), clock=lambda: clock[0])
    ctl = Controller(sf, mid, applier=DbApplier(), clock=lambda: clock[0])
    recorded = []
    for i in range(max_windows):
        with sf() as s:
            m = s.get(Migration, mid)
            phase, slice_ = m.phase, m.slice
            hosts = [(h["name"], h["slice"]) for h in api.hosts(s, mid)]
        if phase in FINAL:
            return recorded
        with sf() as s, s.begin():
            for h, first in hosts:
                on_ring = phase == "CANARY" and first <= slice_
                mode = "RING" if on_ring else ("PERF" if phase == "CANARY" else "DUAL")
                for ch in ["ring"] if on_ring else (["perf"] if mode == "PERF" else ["ring", "perf"]):
                    w = make_window(h, ch, i, mode, on_ring, phase)
                    recorded.append({"index": i, "host": h, "channel": ch, "id": record(s, mid, w)})
        clock[0] = T0 + 11 + i  # the end of window i: the controller judges it, a move confirms then
        with sf() as s, s.begin():
            res = ctl.step(s, clock[0])
        if res.transition_id is not None:
            ctl.finish()
    raise AssertionError(f"migration {mid} did not end in {max_windows} windows")
