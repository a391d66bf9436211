"""Engines and session factories: SQLite in WAL mode with foreign keys, or any SQLAlchemy URL.

Agents and the controller write the same SQLite file from different processes, so every writing
transaction starts with BEGIN IMMEDIATE: it takes the write lock up front (waiting up to
busy_timeout) instead of failing with SQLITE_BUSY when a read turns into a write mid-transaction.
Read-only factories use a plain deferred BEGIN and `PRAGMA query_only`, so they cannot write.
On PostgreSQL a read-only engine makes every transaction of its connections READ ONLY (the server
refuses any write), and connecting gives up after CONNECT_TIMEOUT_S instead of hanging on a
server that does not answer.
"""
from __future__ import annotations

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from migrator.store import url as store_url
from migrator.store.guard import engine_error
from migrator.store.url import parse_url


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign_keys, busy_timeout (url.BUSY_TIMEOUT_MS) and explicit BEGINs.

    An unparsable URL, an unknown scheme or a driver that is not installed raise DatabaseUnavailable.
    No connection is made here: connect errors surface (translated) in check_revision / database_errors.
    """
    u = parse_url(url)
    busy_ms = store_url.BUSY_TIMEOUT_MS  # read at call time: tests shorten it
    try:
        if u.get_backend_name() == "postgresql":
            return _postgres_engine(u, readonly)
        if u.get_backend_name() != "sqlite":
            return create_engine(u, future=True)
        engine = create_engine(u, connect_args={"timeout": busy_ms / 1000})
    except Exception as exc:
        err = engine_error(exc, u)
        if err is None:
            raise
        raise err from exc
    begin_sql = "BEGIN" if readonly else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.execute("PRAGMA foreign_keys = ON")
        if readonly:
            cur.execute("PRAGMA query_only = ON")
        else:
            # Persistent in the file; readers never switch it (that would be a write).
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql(begin_sql)

    return engine


def _postgres_engine(u: URL, readonly: bool) -> Engine:
    libpq = u.get_driver_name() in ("psycopg", "psycopg2")
    connect_args = {"connect_timeout": store_url.CONNECT_TIMEOUT_S} if libpq and "connect_timeout" not in u.query else {}
    engine = create_engine(u, connect_args=connect_args)
    if readonly:
        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _record):  # noqa: ANN001
            # Session-wide and committed: SET inside a transaction that is rolled back would not stick.
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()
    return engine


class Store(sessionmaker[Session]):
    """A process's database: the sessions on one engine (`with store() as s, s.begin(): ...`, as with
    any sessionmaker) and the engine itself, so no caller digs it out of `kw["bind"]`."""

    @property
    def engine(self) -> Engine:
        return self.kw["bind"]

    @property
    def dialect(self) -> str:
        """The backend's name: "sqlite" or "postgresql"."""
        return self.engine.dialect.name

    def dispose(self) -> None:
        """Close the engine's pooled connections (the last one on SQLite checkpoints the WAL)."""
        self.engine.dispose()


def make_session_factory(engine: Engine) -> Store:
    """One Store per process; callers do `with store() as s, s.begin(): ...`."""
    return Store(engine, expire_on_commit=False)


def core_connection(session: Session):  # noqa: ANN201 -- a Connection
    """The session's connection for a prebuilt Core statement, its pending ORM changes flushed first
    (what autoflush does before an ORM query), so the statement sees them."""
    if session.dirty or session.new or session.deleted:
        session.flush()
    return session.connection()


def expire_held(session: Session, cls: type, **key) -> None:
    """Expire every `cls` object the session holds whose attributes equal `key`: after a Core
    statement changed its row, the object reads what was written."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, cls) and all(getattr(obj, k) == v for k, v in key.items()):
            session.expire(obj)

