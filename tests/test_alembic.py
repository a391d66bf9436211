"""alembic from code: upgrade, downgrade, upgrade; models match migrations; newer databases refused."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from migrator.errors import StoreError
from migrator.store import make_engine, open_store, safe_url
from migrator.store import migrate
from migrator.store.models import Base

TABLES = {"migrations", "slices", "hosts", "transitions", "windows", "verdicts", "leases"}


def url_for(backend, tmp_path, name: str) -> str:
    """An empty database: a new SQLite file, or the backend's throwaway PostgreSQL database."""
    return backend.url or f"sqlite:///{tmp_path / name}"


def test_upgrade_downgrade_upgrade(tmp_path, backend):
    url = url_for(backend, tmp_path, "a.db")
    engine = make_engine(url)
    migrate.upgrade(engine)
    assert TABLES <= set(inspect(engine).get_table_names())
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    engine.dispose()


def test_models_match_migrations(tmp_path, backend):
    """alembic's autogenerate finds no difference between the migrated schema and the models."""
    engine = make_engine(url_for(backend, tmp_path, "b.db"))
    migrate.upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True,
                                                     "render_as_batch": backend.name == "sqlite"})
        assert compare_metadata(ctx, Base.metadata) == []
    engine.dispose()


def test_sqlite_pragmas(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_newer_database_refused_naming_both_revisions(tmp_path, backend):
    url = url_for(backend, tmp_path, "d.db")
    open_store(url).dispose()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError) as exc:
        open_store(url)
    assert str(exc.value) == (f"database {safe_url(url)} is at revision 9999, newer than this migrator "
                              f"(head {migrate.head_revision()}); upgrade migrator instead of using an older one")


def test_older_database_upgraded_by_writers_refused_by_readers(tmp_path, backend):
    url = url_for(backend, tmp_path, "e.db")
    engine = make_engine(url)
    with engine.begin() as conn:  # an "older" database: stamped at base, no tables
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
    with pytest.raises(StoreError, match=r"older than this migrator .* run `migrator init`"):
        open_store(url, readonly=True)
    open_store(url)
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_readonly_never_creates_a_database(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no database at"):
        open_store(f"sqlite:///{path}", readonly=True)
    assert not path.exists()


def test_the_fast_path_head_is_alembics_head():
    assert migrate.HEAD == migrate.head_revision()
