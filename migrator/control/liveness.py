"""Lost agents: a judged host whose agent has not reported for `[agents] lost_after_windows` windows.

An agent heartbeats about once a second and with every window it sends, so a silence of several
windows means its process is gone (or cut off). Only hosts whose agent has reported at least once
count: a host whose agent never started has no windows either, which the no-data setting handles.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator.store.models import Host


def lost_hosts(session: Session, migration_id: int, judged: Iterable[str], now: float,
               limit_seconds: float) -> list[tuple[str, float]]:
    """(host, last report time) of each judged host silent for more than limit_seconds, in canary order."""
    judged = set(judged)
    rows = session.execute(select(Host.name, Host.last_heartbeat, Host.applied_at)
                           .where(Host.migration_id == migration_id).order_by(Host.position)).all()
    out = []
    for name, beat, applied in rows:
        last = max((t for t in (beat, applied) if t is not None), default=None)
        if name in judged and last is not None and now - last > limit_seconds:
            out.append((name, last))
    return out


def when(t: float) -> str:
    """A report time as the reason shows it: UTC to the millisecond."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d} UTC"


def lost_reason(lost: list[tuple[str, float]], windows: int, window_seconds: float) -> str:
    """e.g. 'agent h1 lost: no report for 5 windows (5 s); last report 2026-01-01 00:00:00.000 UTC'."""
    return "; ".join(f"agent {h} lost: no report for {windows} windows ({windows * window_seconds:g} s); "
                     f"last report {when(t)}" for h, t in lost)
