"""One process per host: the host lease, and what a transition found on each host when confirmed.

Every process that serves a host (`migrator agent`, the library's `migrator.attach(config=, host=)`,
`migrator wrap --host`) makes a DbLink (agent/link.py), and the link takes the host's lease when it
is made, before anything is loaded or attached: a second process for the same host is refused
(HostLeaseHeld, naming the holder) and touches nothing of the first. The link renews the lease
with its heartbeat and releases it when it stops.

The holder is `machine:pid:start`, start being the process's start time in clock ticks since boot
(/proc/<pid>/stat field 22), so a pid reused by another process never passes for the holder. A
lease is taken over when it lapsed, or at once when its holder is a process on this machine that
no longer exists (SIGKILL releases nothing), as the controller's lease is.

host_status (transitions.host_status, written by confirm_transition): per host of the move, the mode
it demands and whether the host had applied it ("applied"), is alive and has been sent it ("sent"),
is lost or dead ("lost": no live lease and no report within [agents] lost_after_windows, or its
holder is a dead process), or never had an agent ("no agent"). A lost host applies the mode when its
agent returns.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from migrator.errors import HostLeaseHeld
from migrator.store.db import core_connection, expire_held
from migrator.store.models import Host, HostLease, Migration

log = logging.getLogger("migrator.agent")
_holder: str | None = None


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    return stat.rpartition(")")[2].split()[19]


def this_holder() -> str:
    """This process as a host lease holder: machine:pid:start time."""
    global _holder
    pid = os.getpid()
    if _holder is None or _holder.split(":")[1] != str(pid):  # recomputed after a fork
        _holder = f"{socket.gethostname()}:{pid}:{process_start(pid) or '0'}"
    return _holder


def holder_dead(holder: str) -> bool:
    """True when `holder` names a process on this machine that is gone (or whose pid another process
    now has): its lease can be taken at once. A holder on another machine is never judged here."""
    parts = holder.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    start = process_start(int(parts[1]))
    return start is None or start != parts[2]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def take_host_lease(session: Session, host: str, holder: str, now: float, ttl: float,
                    migration_id: int | None = None) -> str | None:
    """Take or renew `host`'s lease for `holder`; HostLeaseHeld while another live holder has it.

    Returns the holder it was taken over from (lapsed, or a dead process on this machine), else None."""
    lease = session.get(HostLease, host, with_for_update=True)
    if lease is None:
        session.add(HostLease(host=host, migration_id=migration_id, holder=holder, acquired_at=now,
                              expires_at=now + ttl))
        session.flush()
        return None
    previous = None
    if lease.holder != holder:
        if lease.expires_at > now and not holder_dead(lease.holder):
            raise HostLeaseHeld(host, lease.holder, _when(lease.expires_at))
        previous = lease.holder
        lease.holder, lease.acquired_at = holder, now
    lease.migration_id = migration_id if migration_id is not None else lease.migration_id
    lease.expires_at = now + ttl
    return previous


# Built once, run on the session's connection (every agent, every few seconds): the ORM-enabled
# update cost an idle agent more than its round trip to the server.
_RENEW = (update(HostLease).where(HostLease.host == bindparam("b_host"), HostLease.holder == bindparam("b_holder"))
          .values(expires_at=bindparam("b_expires")))


def renew_host_lease(session: Session, host: str, holder: str, now: float, ttl: float,
                     migration_id: int | None = None) -> str | None:
    """Renew our lease (one UPDATE); when the row is not ours any more, take_host_lease decides:
    None when it is ours again, HostLeaseHeld when another live process took it over."""
    res = core_connection(session).execute(_RENEW, {"b_host": host, "b_holder": holder, "b_expires": now + ttl})
    expire_held(session, HostLease, host=host)
    if res.rowcount == 1:
        return None
    return take_host_lease(session, host, holder, now, ttl, migration_id)


def release_host_lease(session: Session, host: str, holder: str) -> None:
    """Give the lease up (only our own)."""
    session.execute(delete(HostLease).where(HostLease.host == host, HostLease.holder == holder))


def lost_limit(m: Migration) -> float:
    """Seconds without a report after which a host counts as lost: [agents] lost_after_windows windows."""
    try:
        snap = json.loads(m.config_json or "{}")
    except ValueError:
        snap = {}
    windows = (snap.get("agents") or {}).get("lost_after_windows", 5)
    return float(windows) * float(snap.get("window_seconds", 1.0))


def host_outcomes(session: Session, m: Migration, modes: dict[str, str], now: float) -> dict[str, dict]:
    """What a transition finds on each host whose mode it sets (see the module's docstring)."""
    if not modes:
        return {}
    rows = session.execute(select(Host.name, Host.applied_mode, Host.applied_at, Host.last_heartbeat)
                           .where(Host.migration_id == m.id)).all()
    leases = dict(session.execute(select(HostLease.host, HostLease)
                                  .where(HostLease.host.in_(list(modes)))).all())
    limit = lost_limit(m)
    out: dict[str, dict] = {}
    for name, applied, applied_at, beat in rows:
        if name not in modes:
            continue
        last = max((t for t in (beat, applied_at) if t is not None), default=None)
        lease = leases.get(name)
        if applied == modes[name]:
            status = "applied"
        elif lease is not None and holder_dead(lease.holder):
            status = "lost"  # its process is gone: nothing will apply the mode until an agent returns
        elif lease is not None and lease.expires_at > now:
            status = "sent"
        elif last is not None and now - last <= limit:
            status = "sent"
        elif last is None and lease is None:
            status = "no agent"  # none ever served it: it starts in PERF and reads its mode when one does
        else:
            status = "lost"
        out[name] = {"mode": modes[name], "status": status, "last_report": last}
    return out


def lost_in(host_status: str | None) -> list[str]:
    """The hosts a transition recorded as lost."""
    return sorted(h for h, o in json.loads(host_status or "{}").items() if o.get("status") == "lost")


def migration_for_host(session: Session, host: str) -> int:
    """The migration a host process serves when none is named: the active one when it lists `host`,
    else the newest finished one that still demands something of it (its last applied mode is not
    the one the final phase wants: a host lost before a rollback still runs RING), else the active
    one (the caller refuses a host it does not list). MigratorError when there is none at all."""
    from migrator.errors import MigratorError
    from migrator.store.api import active_migration

    m = active_migration(session)
    if m is not None and session.scalar(select(Host.id).where(Host.migration_id == m.id, Host.name == host)):
        return m.id
    owed = session.execute(
        select(Migration.id, Migration.phase, Host.desired_mode, Host.applied_mode)
        .join(Host, Host.migration_id == Migration.id)
        .where(Host.name == host, Host.applied_mode.is_not(None), Host.applied_mode != Host.desired_mode)
        .order_by(Migration.id.desc()).limit(1)).first()
    if owed is not None:
        log.warning("%s: migration %d is %s and still demands %s of this host (it last applied %s): serving it",
                    host, owed[0], owed[1], owed[2], owed[3])
        return owed[0]
    if m is None:
        raise MigratorError("no active migration in the database; run `migrator init` first")
    return m.id
