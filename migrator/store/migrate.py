"""Alembic driven from code: the CLI upgrades older databases and refuses newer ones.

The migration scripts live in `migrations/` at the project root (shipped as `migrator.migrations`); env.py takes the connection we
pass through `config.attributes`, so one connection (and its SQLite pragmas) does the work.
"""
from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect

from migrator.errors import StoreError
from migrator.resources import migrations_dir


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """An alembic Config pointing at our scripts, optionally carrying a live connection."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database, None for an empty (or pre-alembic) database."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind `engine` to `revision`."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Downgrade the database behind `engine` to `revision`."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def check_revision(engine: Engine, url: str, *, upgrade_if_older: bool) -> str:
    """Bring the database to head (or refuse): returns the revision it is at afterwards.

    A revision this code does not know means the database was written by a newer migrator:
    refuse rather than guess. An older one is upgraded when `upgrade_if_older`, else refused
    (read-only commands must not write).
    """
    head = head_revision()
    script = ScriptDirectory.from_config(alembic_config())
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
            raise StoreError(
                f"database {url} is at revision {current}, newer than this migrator "
                f"(head {head}); upgrade migrator instead of using an older one"
            ) from None
    elif has_tables:
        raise StoreError(f"database {url} has tables but no migrator revision; use another database")
    if not upgrade_if_older:
        raise StoreError(
            f"database {url} is at revision {current or 'empty'}, older than this migrator "
            f"(head {head}); run `migrator init` to upgrade it (read-only commands do not write)"
        )
    upgrade(engine)
    return head
