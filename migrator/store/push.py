"""Push on PostgreSQL: what a host reads from the database is announced, not polled for.

Every transaction that changes what a host's link reads (its desired mode, the migration's phase,
whether a transition is pending) also runs `pg_notify('migrator_m<ID>', what)`: the server delivers
it at commit, and only if the transaction commits. Each host process LISTENs on its migration's
channel (agent/link.py) and reads its row only when told, plus a slow safety read. SQLite has no
such channel: there the links keep watching `PRAGMA data_version` (store/watch.py), and announce()
does nothing.
"""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def channel(migration_id: int) -> str:
    """The LISTEN/NOTIFY channel of one migration: an identifier, safe to put in SQL as it is."""
    return f"migrator_m{int(migration_id)}"


def announce(session: Session, migration_id: int, what: str) -> None:
    """Tell the migration's host processes, at this transaction's commit, to read their row again.

    what: a short payload for whoever watches the channel ("modes", "phase"); the links ignore it."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(text("SELECT pg_notify(:channel, :what)"), {"channel": channel(migration_id), "what": what})
