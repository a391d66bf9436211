"""The store: models, sessions, alembic-from-code, and the core queries agents and CLI call."""
from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from migrator.errors import StoreError
from migrator.store.db import make_engine, make_session_factory, sqlite_path
from migrator.store.migrate import check_revision


def open_store(url: str, *, readonly: bool = False) -> sessionmaker[Session]:
    """A session factory on `url`, upgraded to head (writers) or checked to be at head (readers).

    Read-only openers never create a missing SQLite file and never upgrade: they raise StoreError.
    """
    path = sqlite_path(url)
    if path is not None:
        if readonly and not path.exists():
            raise StoreError(f"no database at {path}; run `migrator init` first")
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, readonly=readonly)
    try:
        check_revision(engine, url, upgrade_if_older=not readonly)
    except Exception:
        engine.dispose()
        raise
    return make_session_factory(engine)


__all__ = ["open_store", "make_engine", "make_session_factory", "sqlite_path"]
