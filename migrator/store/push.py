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


# The payload that says: every host named after it (or every host, "*") is desired PERF as of this
# commit. PERF is the safe mode, so a link puts it in force before it reads its row (a rollback
# then waits on no read); any other payload only says "read your row again".
PERF_PREFIX = "perf:"
# NOTIFY payloads are limited to 8,000 bytes: a longer list of names falls back to "modes".
MAX_PAYLOAD = 7900


def perf_payload(hosts: list[str], every_host: bool) -> str:
    """The announcement of a move of `hosts` to PERF ("modes" when the names would not fit)."""
    if every_host:
        return PERF_PREFIX + "*"
    text = PERF_PREFIX + ",".join(hosts)
    return text if len(text) <= MAX_PAYLOAD else "modes"


def perf_for(payload: str, host: str) -> bool:
    """Whether an announcement says `host` is desired PERF now."""
    if not payload.startswith(PERF_PREFIX):
        return False
    names = payload[len(PERF_PREFIX):]
    return names == "*" or host in names.split(",")


def announce(session: Session, migration_id: int, what: str) -> None:
    """Tell the migration's host processes, at this transaction's commit, to read their row again.

    what: a short payload ("modes", "phase", or perf_payload(...), which the links act on at once)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(text("SELECT pg_notify(:channel, :what)"), {"channel": channel(migration_id), "what": what})
