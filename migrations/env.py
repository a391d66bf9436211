"""Alembic environment: runs on the connection the caller passes in config.attributes.

render_as_batch lets ALTERs run on SQLite (copy-and-move); the naming convention on the models'
MetaData gives every constraint a stable name batch mode can find.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from migrator.store.models import Base

target_metadata = Base.metadata
config = context.config


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      render_as_batch=True, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    _run(connection)
else:
    # Only for `alembic` used by hand with sqlalchemy.url set; the code always passes a connection.
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
