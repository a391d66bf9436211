"""Database errors at the store's edge: driver exceptions become one DatabaseUnavailable, once.

Every way a user can point migrator at a database that does not work (an URL that does not
parse, an unknown scheme, a driver that is not installed, a directory that cannot be created, a
file that is not a database or is corrupt, a full disk, a lock held past the busy timeout, a
server that is down or refuses the password) is turned here into a DatabaseUnavailable naming
the database (URL with the password hidden), the problem and the fix.

open_store, make_engine and check_revision translate on their own. Code that commits through a
session factory wraps the work in `database_errors(...)` where a user-facing command should
fail with one line instead of a traceback:

    with database_errors(sf), sf() as s, s.begin():
        ...

IntegrityError is left alone: it means a bug or a race in our own writes, not a database the
user has to fix. Code that must survive a database outage (the agent's link) catches
SQLAlchemyError itself and is not wrapped.
"""
from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import URL
from sqlalchemy.exc import (ArgumentError, DBAPIError, IntegrityError, InterfaceError, NoSuchModuleError,
                            OperationalError)
from sqlalchemy.orm import sessionmaker

from migrator.errors import DatabaseUnavailable
from migrator.store import url as store_url
from migrator.store.url import URL_FIX, Where, one_line, parse_url, safe_url, sqlite_path, url_of

# What to `pip install` for the DBAPI module SQLAlchemy failed to import.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000", "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "mysql": "mysql-connector-python",
    "oracledb": "oracledb", "pyodbc": "pyodbc", "pymssql": "pymssql",
}

def _server_where(url: URL) -> str:
    """host:port (or the unix socket directory) the URL connects to, as a user would write it."""
    host = url.host or url.query.get("host") or ""
    if isinstance(host, tuple):
        host = ",".join(host)
    port = url.port or url.query.get("port") or ""
    if not host:
        host = "the local unix socket"
    elif host.startswith("/"):
        host = f"the unix socket in {host}"
    return f"{host}:{port}" if port and not host.startswith("the ") else (f"{host} (port {port})" if port else host)


def _postgres_error(url: URL, shown: str, text: str) -> DatabaseUnavailable | None:
    """PostgreSQL's connection failures, each with the fix a user can act on (None: not recognised)."""
    low = text.lower()
    where = _server_where(url)
    how = "in MIGRATOR_DATABASE_URL, database_file or database in canary.toml"
    m = re.search(r'password authentication failed for user "([^"]*)"', text)
    if m:
        return DatabaseUnavailable(
            shown, f"the server at {where} refused the password of user {m.group(1)} (password authentication failed)",
            f"correct the user and password {how}; the server's pg_hba.conf says how each user logs in")
    m = re.search(r'database "([^"]*)" does not exist', text)
    if m:
        return DatabaseUnavailable(
            shown, f"database {m.group(1)} does not exist on the server at {where}",
            f"create it (createdb {m.group(1)}, or CREATE DATABASE {m.group(1)}; as a user allowed to), "
            "then run `migrator init`")
    m = re.search(r'role "([^"]*)" does not exist', text)
    if m:
        return DatabaseUnavailable(shown, f"user {m.group(1)} does not exist on the server at {where}",
                                   f"create the role (CREATE ROLE {m.group(1)} LOGIN PASSWORD ...) or fix the user {how}")
    if "no pg_hba.conf entry" in low:
        return DatabaseUnavailable(shown, f"the server at {where} does not accept this client ({text})",
                                   "add a line for this host, user and database to the server's pg_hba.conf and reload it")
    if "failed to resolve host" in low or "could not translate host name" in low:
        return DatabaseUnavailable(shown, f"host {url.host} is not known here (the name does not resolve)",
                                   f"correct the host name {how}")
    if any(k in low for k in ("connection refused", "no such file or directory", "timeout expired",
                              "timed out", "no route to host", "network is unreachable")):
        return DatabaseUnavailable(
            shown, f"no PostgreSQL server answers at {where} ({_first_line(text)})",
            f"start the server (pg_ctlcluster / systemctl start postgresql), or fix the host and port {how}; "
            "from a network namespace, 127.0.0.1 is the namespace's own loopback (use the server's address "
            "or its unix socket, ?host=/var/run/postgresql)")
    if "server closed the connection" in low or "terminating connection" in low or "connection is closed" in low:
        return DatabaseUnavailable(shown, f"the server at {where} closed the connection ({_first_line(text)})",
                                   "check the server's log (restarted, or an administrator ended the session), then retry")
    if "read-only transaction" in low:
        return DatabaseUnavailable(shown, "a write was attempted in a read-only transaction (a read-only command)",
                                   "run the command that writes (init, start, the manual moves) instead")
    return None


def _first_line(text: str) -> str:
    """The driver's reason without its 'connection to server at ... failed:' preamble."""
    text = re.sub(r"^connection (failed|is bad): ", "", text)
    text = text.split(" Is the server running")[0]  # libpq's hint: the fix we give says more
    return re.sub(r'^connection to server (at|on socket) "[^"]*"(, port \d+)? failed: ', "", text)


def _server_fix(url: URL) -> str:
    where = f"{url.host or 'localhost'}" + (f":{url.port}" if url.port else "")
    return (f"check that the {url.get_backend_name()} server at {where} is running and reachable from here, "
            f"and that the user, password and database name in the URL are right")


def translate(exc: DBAPIError, where: Where) -> DatabaseUnavailable:
    """The DatabaseUnavailable for a driver error raised while using the database at `where`."""
    raw = url_of(where)
    shown = safe_url(raw)
    url = parse_url(raw)
    text = one_line(exc, url)
    low = text.lower()
    orig = getattr(exc, "orig", None)
    code = str(getattr(orig, "sqlite_errorname", "") or "")
    path = sqlite_path(url)
    if url.get_backend_name() == "sqlite":
        where_file = str(path) if path else "the database"
        folder = str(path.parent) if path else "its directory"
        if code.startswith("SQLITE_NOTADB") or "file is not a database" in low:
            return DatabaseUnavailable(
                shown, "the file is not an SQLite database (file is not a database)",
                f"point database in canary.toml at a new file or at a migrator database; move {where_file} "
                "away if it is not needed")
        if code.startswith("SQLITE_CORRUPT") or "malformed" in low:
            return DatabaseUnavailable(
                shown, f"the database file is corrupt ({text})",
                f"restore {where_file} from a backup, or move it away and run `migrator init` to start a new one")
        if code.startswith("SQLITE_FULL") or "disk is full" in low:
            return DatabaseUnavailable(shown, "database or disk is full",
                                       f"free space on the filesystem holding {folder}, then retry")
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in low:
            return DatabaseUnavailable(
                shown, f"database is locked: another process held its write lock for more than "
                       f"{store_url.BUSY_TIMEOUT_MS / 1000:g} s",
                "wait for the other writer (a running controller, `migrator init` or an sqlite3 shell with an "
                "open transaction) to finish or stop it, then retry")
        if code.startswith("SQLITE_READONLY") or "readonly database" in low:
            return DatabaseUnavailable(
                shown, "the database is read-only (attempt to write a readonly database)",
                f"make {where_file} and {folder} writable by this user (SQLite's WAL mode writes "
                f"{where_file}-wal and -shm beside it)")
        if code.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM")) or "unable to open database file" in low:
            if path is not None and path.is_dir():
                return DatabaseUnavailable(shown, f"unable to open the database file: {path} is a directory",
                                           "set database in canary.toml to a file path, not a directory")
            if path is not None and path.exists():
                return DatabaseUnavailable(
                    shown, "unable to open the database file",
                    f"make {where_file} and {folder} writable by this user on a read-write filesystem (SQLite's "
                    f"WAL mode creates {path.name}-wal and {path.name}-shm beside it, even to read)")
            return DatabaseUnavailable(
                shown, "unable to create the database file",
                f"check that {folder} exists, is writable by this user and is on a read-write filesystem")
        if code.startswith("SQLITE_IOERR") or "disk i/o error" in low:
            return DatabaseUnavailable(shown, f"disk I/O error ({text})",
                                       f"check the filesystem holding {folder} (dmesg), then retry")
        return DatabaseUnavailable(shown, text, f"check {where_file}, or point database in canary.toml at a new file")
    if url.get_backend_name() == "postgresql":
        err = _postgres_error(url, shown, text)
        if err is not None:
            return err
    if isinstance(exc, (OperationalError, InterfaceError)):  # refused, unreachable, wrong password, dropped
        return DatabaseUnavailable(shown, f"cannot connect or the connection failed ({text})", _server_fix(url))
    return DatabaseUnavailable(shown, text,
                               "check the database user's privileges and the server's log, then retry")


@contextmanager
def database_errors(where: Where) -> Iterator[None]:
    """Turn driver errors raised inside the block into DatabaseUnavailable (IntegrityError excepted)."""
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        raise translate(exc, where) from exc


def engine_error(exc: BaseException, url: str | URL) -> DatabaseUnavailable | None:
    """The DatabaseUnavailable for an error create_engine raised on `url`, None if not a user's problem."""
    shown = safe_url(url)
    if isinstance(exc, NoSuchModuleError):
        u = parse_url(url)
        return DatabaseUnavailable(
            shown, f"unknown database scheme {u.drivername!r} (no SQLAlchemy dialect or driver by that name)", URL_FIX)
    if isinstance(exc, ImportError):
        mod = exc.name or one_line(exc, url)
        package = DRIVER_PACKAGES.get(mod.split(".")[0], mod)
        return DatabaseUnavailable(
            shown, f"its database driver is not installed (no Python module {mod!r})",
            f"install it into migrator's environment (pip install {package}"
            + (", or pip install 'migrator[postgres]'" if package.startswith("psycopg[") else "")
            + "), or use an SQLite database")
    if isinstance(exc, ArgumentError):
        return DatabaseUnavailable(shown, f"is not a valid database URL ({one_line(exc, url)})", URL_FIX)
    return None


def check_database_url(url: str | URL) -> None:
    """Refuse, before anything is written, a database URL that cannot work: DatabaseUnavailable.

    Checked without connecting: the URL parses, its scheme names an SQLAlchemy dialect, the
    dialect's driver (DBAPI module) imports, an SQLite database is a file (not in memory: a
    migration recorded there is gone when the process exits) whose directory exists, is a
    directory and is writable on a read-write filesystem. A missing directory is refused with
    "create DIR first", never created: a typo in the path must not grow a new tree (a relative
    database path lives in the config's own directory, which always exists).
    """
    shown = safe_url(url)
    u = parse_url(url)
    try:
        dialect = u.get_dialect()
        dialect.import_dbapi()
    except Exception as exc:  # NoSuchModuleError, ImportError, ArgumentError
        err = engine_error(exc, url)
        if err is None:
            raise
        raise err from exc
    if u.get_backend_name() != "sqlite":
        return
    if not u.database or u.database == ":memory:" or u.database.startswith("file::memory:") \
            or u.query.get("mode") == "memory":
        raise DatabaseUnavailable(
            shown, "is an in-memory SQLite database: a migration recorded there is gone when the process exits",
            'set database in canary.toml to a file path, e.g. database = "migrator.db"')
    path = Path(u.database)
    if not path.is_absolute():
        path = Path.cwd() / path
    folder = path.parent
    if path.is_dir():
        raise DatabaseUnavailable(shown, f"unable to open the database file: {path} is a directory",
                                  "set database in canary.toml to a file path, not a directory")
    if not folder.exists():
        blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise DatabaseUnavailable(
                shown, f"directory {folder} cannot exist: {blocker} is a file, not a directory",
                "set database in canary.toml to a path whose directory exists and is writable")
        raise DatabaseUnavailable(shown, f"directory {folder} does not exist (migrator does not create it)",
                                  f"create {folder} first (mkdir -p {folder}), or point database at an existing directory")
    if not folder.is_dir():
        raise DatabaseUnavailable(shown, f"{folder} is not a directory",
                                  "set database in canary.toml to a path whose directory exists and is writable")
    readonly_fs = False
    try:
        readonly_fs = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        pass
    if readonly_fs or not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        what = "is on a read-only filesystem" if readonly_fs else "is not writable by this user"
        raise DatabaseUnavailable(
            shown, f"directory {folder} {what}",
            f"make {folder} writable (SQLite's WAL mode writes {path.name}, {path.name}-wal and -shm there), "
            "or point database at a writable directory")


def check_integrity(sf: sessionmaker) -> None:
    """Read every page of an SQLite database (PRAGMA quick_check) and refuse a corrupt one.

    Reads answer only from the pages they touch, so a corrupt page that `status` never reads
    goes unnoticed until a write lands on it; the controller checks the whole file before it
    decides anything. Other backends check their own storage: nothing to do there.
    """
    engine = sf.engine
    if engine.dialect.name != "sqlite":
        return
    with database_errors(engine), engine.connect() as conn:
        rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        shown = safe_url(engine.url)
        file = sqlite_path(engine.url)
        raise DatabaseUnavailable(shown, f"the database file is corrupt ({'; '.join(' '.join(r.split()) for r in rows[:3])})",
                                  f"restore {file or 'it'} from a backup, or move it away and run `migrator init` "
                                  "to start a new one")


def make_parent_dir(path: Path, url: str | URL) -> None:
    """Create the directory of an SQLite file, or say which part of the path is in the way."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        shown = safe_url(url)
        fix = "set database in canary.toml to a path whose directory exists or can be created, and is writable"
        if isinstance(exc, (NotADirectoryError, FileExistsError)):
            blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()),
                           path.parent)
            problem = f"cannot create directory {path.parent}: {blocker} is a file, not a directory"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            problem = f"cannot create directory {path.parent}: {exc.strerror}"
        elif exc.errno == errno.ENOSPC:
            problem = f"cannot create directory {path.parent}: no space left on device"
            fix = f"free space on the filesystem holding {path.parent}, then retry"
        else:
            problem = f"cannot create directory {path.parent}: {exc.strerror or exc}"
        raise DatabaseUnavailable(shown, problem, fix) from exc


__all__ = ["DatabaseUnavailable", "check_database_url", "check_integrity", "database_errors", "engine_error",
           "make_parent_dir", "translate"]
