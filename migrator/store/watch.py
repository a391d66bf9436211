"""Whether anybody committed to the database since the last look, for cheap polling.

An agent's link reads its desired mode every poll (100 times a second): through the ORM that is
~0.3 ms of CPU each, a third of a quiet agent's whole cost. On SQLite, `PRAGMA data_version` on one
held connection changes exactly when another connection committed (~15 us), so the full read only
runs after a change. Other backends have no such counter here: there every look says "changed".
"""
from __future__ import annotations

import sqlite3

from sqlalchemy.orm import Session, sessionmaker


class ChangeWatch:
    """changed(): True on the first call, then only after a commit by another connection (SQLite), or
    always (other backends). Use it from one thread; any error makes it say True and start over."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._engine = session_factory.engine
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._raw = None
        self._last: int | None = None

    def changed(self) -> bool:
        """Whether the database may hold something new since the previous call."""
        if not self._sqlite:
            return True
        try:
            if self._raw is None:  # made in the calling thread: sqlite3 connections stay in theirs
                self._raw = self._engine.raw_connection()
            version = self._raw.driver_connection.execute("PRAGMA data_version").fetchone()[0]
        except (sqlite3.Error, OSError, AttributeError):
            self.close()
            return True
        seen, self._last = self._last, version
        return seen is None or version != seen

    def close(self) -> None:
        """Give the held connection back."""
        raw, self._raw, self._last = self._raw, None, None
        if raw is not None:
            try:
                raw.close()
            except Exception:  # noqa: BLE001 -- a broken connection is gone either way
                pass
