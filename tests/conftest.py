"""Shared fixtures: a real SQLite file in tmp_path migrated by alembic, configs, window records."""
from __future__ import annotations

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
def session_factory(config):
    return open_store(config.database_url)


def window(host: str, channel: str, index: int, *, mode: str = "DUAL", attempts: int = 1000, lost: int = 0,
           dropped: int = 0, lag: float | None = 1.0, start: float | None = None, **kw) -> ChannelWindow:
    """A ChannelWindow one second long starting at T0 + 10 + index unless `start` is given."""
    s = T0 + 10 + index if start is None else start
    return ChannelWindow(host=host, channel=channel, index=index, start=s, end=s + 1.0, mode=mode,
                         attempts=attempts, delivered=attempts - lost - dropped, lost=lost, dropped_full=dropped,
                         lag_p50_ms=lag, lag_p99_ms=lag, lag_max_ms=lag, **kw)


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
    """One synthetic host h1 in a migration already in DUAL_INSTRUMENT: (config, session factory, id)."""
    from migrator.control.phases import DbApplier, transition
    from migrator.store import api
    from migrator.shared.vocab import Phase

    (tmp_path / "canary.toml").write_text(AGENT_PLAN)
    cfg = load_config(tmp_path / "canary.toml")
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp").id
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
