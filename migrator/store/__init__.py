"""The store: models, sessions, alembic-from-code, and the core queries agents and CLI call.

Driver errors are translated at this boundary (migrator.store.guard): open_store raises
DatabaseUnavailable / DatabaseMissing / RevisionMismatch (all StoreError) naming the database,
never a raw SQLAlchemy or OS exception. Callers that commit wrap their work in
`database_errors(session_factory)` to get the same for later failures (lock timeout, disk full).
"""
from __future__ import annotations


from migrator.errors import DatabaseMissing
from migrator.store.db import Store, make_engine, make_session_factory
from migrator.store.guard import check_database_url, check_integrity, database_errors, make_parent_dir
from migrator.store.migrate import check_revision
from migrator.store.url import safe_url, sqlite_path


def open_store(url: str, *, readonly: bool = False) -> Store:
    """The Store (engine and sessions) on `url`, upgraded to head (writers) or checked to be at head (readers).

    Read-only openers never create a missing SQLite file and never upgrade: they raise StoreError.
    Every failure to reach or use the database raises a StoreError subclass naming it.
    """
    path = sqlite_path(url)
    if path is not None:
        if readonly and not path.exists():
            raise DatabaseMissing(str(path))
        if not readonly:
            make_parent_dir(path, url)
    engine = make_engine(url, readonly=readonly)
    try:
        with database_errors(engine):
            check_revision(engine, url, upgrade_if_older=not readonly)
    except BaseException:
        engine.dispose()
        raise
    return make_session_factory(engine)


def reader_of(session_factory: Store) -> Store:
    """A read-only Store on the database of `session_factory`, for frequent reads: on SQLite
    they take no write lock (writers BEGIN IMMEDIATE), on PostgreSQL they run READ ONLY."""
    return make_session_factory(make_engine(session_factory.engine.url, readonly=True))


__all__ = ["Store", "open_store", "reader_of", "check_database_url", "check_integrity", "make_engine", "make_session_factory", "sqlite_path", "database_errors", "safe_url"]
