"""A database URL: parsing it, showing it without its password, and the connection settings
migrator adds to it.

db.py (engines) and guard.py (error translation) both build on this module and neither imports
the other's constants: guard reads the busy timeout here to say how long a lock was waited for,
db uses it to configure SQLite. Password hiding itself is migrator.shared.passwords (the config
uses it too, and may not import the store).
"""
from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import URL, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from migrator.errors import DatabaseUnavailable
from migrator.shared.passwords import hide_password, hide_password_in

# SQLite: how long a connection waits for another process's write lock (PRAGMA busy_timeout).
BUSY_TIMEOUT_MS = 30_000
# PostgreSQL (libpq drivers): how long connecting waits for a server that does not answer.
CONNECT_TIMEOUT_S = 10
URL_FIX = ('set database in canary.toml to a file path ("migrator.db") or an SQLAlchemy URL '
           '(postgresql+psycopg://user:password@host/dbname)')

Where = str | URL | Engine | sessionmaker | Session


def url_of(where: Where) -> URL | str:
    """The URL behind a URL string, an engine, a session factory or a session."""
    if isinstance(where, Session):
        where = where.get_bind()
    if isinstance(where, sessionmaker):
        where = where.kw["bind"]
    if isinstance(where, Engine):
        return where.url
    return where


def safe_url(where: Where) -> str:
    """The database URL to show a user: password replaced by ***, even when the URL does not parse."""
    url = url_of(where)
    return hide_password(url if isinstance(url, URL) else str(url))


def one_line(exc: BaseException, url: URL | str | None = None, limit: int = 300) -> str:
    """A driver's (or parser's) message on one line, the password of `url` in it masked, at most
    `limit` characters."""
    orig = getattr(exc, "orig", None)
    text = " ".join(str(orig if orig is not None else exc).split())
    if isinstance(exc, DBAPIError) and orig is None:
        text = re.sub(r"^\([\w.]+\)\s*", "", text)
    if url is not None:
        text = hide_password_in(text, url)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_url(url: str | URL) -> URL:
    """make_url, with an unparsable URL (ArgumentError, or ValueError for e.g. a non-numeric port)
    reported as a DatabaseUnavailable instead of a driver-level exception."""
    if isinstance(url, URL):
        return url
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUnavailable(safe_url(url), f"is not a valid database URL ({one_line(exc, url)})",
                                  URL_FIX) from exc


def sqlite_path(url: str | URL) -> Path | None:
    """The file behind a SQLite URL, None for other backends and in-memory databases.

    An URL that does not parse raises DatabaseUnavailable (naming it, password hidden)."""
    u = parse_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)
