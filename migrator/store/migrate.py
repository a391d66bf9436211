"""Alembic driven from code: the CLI upgrades older databases and refuses newer ones.

The migration scripts live in `migrations/` at the project root (shipped as `migrator.migrations`); env.py takes the connection we
pass through `config.attributes`, so one connection (and its SQLite pragmas) does the work.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from migrator.errors import InstallError, RevisionMismatch
from migrator.shared.resources import migrations_dir
from migrator.store.guard import database_errors
from migrator.store.url import safe_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# The newest revision in migrations/versions, known without importing alembic (a quarter second
# here): a database already at it is the common case for every read-only command.
# tests/test_alembic.py checks it against alembic's own head.
HEAD = "0008"


def alembic_config(connection: Connection | None = None) -> "AlembicConfig":
    """An alembic Config pointing at our scripts, optionally carrying a live connection."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise InstallError(str(migrations_dir()), "no alembic revision scripts found (the package is incomplete)")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database, None for an empty (or pre-alembic) database."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind `engine` to `revision`."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Downgrade the database behind `engine` to `revision`."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def _stamped(engine: Engine) -> str | None:
    """The revision in alembic_version read with plain SQL; None when it cannot be read that way."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            conn.rollback()
    except DBAPIError:
        return None  # no table yet, or a driver error: the full check below reports it properly
    return rows[0] if len(rows) == 1 else None


def check_revision(engine: Engine, url: str, *, upgrade_if_older: bool) -> str:
    """Bring the database to head (or refuse): returns the revision it is at afterwards.

    A revision this code does not know means the database was written by a newer migrator:
    refuse rather than guess. An older one is upgraded when `upgrade_if_older`, else refused
    (read-only commands must not write). Driver errors (unreachable server, not a database,
    lock timeout, ...) are raised as DatabaseUnavailable.
    """
    if _stamped(engine) == HEAD:  # the fast path: no alembic import
        return HEAD
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    head = head_revision()
    script = ScriptDirectory.from_config(alembic_config())
    shown = safe_url(url)
    with database_errors(engine):
        with engine.connect() as conn:
            current = current_revision(conn)
            has_tables = bool(set(inspect(conn).get_table_names()) - {"alembic_version"})
            conn.rollback()
    if current == head:
        return head
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError:
            raise RevisionMismatch(
                shown, current, head, f"is at revision {current}, newer than this migrator (head {head})",
                "upgrade migrator instead of using an older one") from None
    elif has_tables:
        raise RevisionMismatch(shown, None, head, "has tables but no migrator revision", "use another database")
    if not upgrade_if_older:
        raise RevisionMismatch(
            shown, current, head, f"is at revision {current or 'empty'}, older than this migrator (head {head})",
            "run `migrator init` to upgrade it (read-only commands do not write)")
    with database_errors(engine):
        upgrade(engine)
    return head
