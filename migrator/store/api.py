"""Core store functions: create a migration, record windows, agent reports, and the read queries.

Every function takes the caller's session and never commits (the caller owns the transaction).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import fields

from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from migrator.config import Config
from migrator.errors import MigratorError, StoreError
from migrator.store.bulk import insert_rows
from migrator.store.db import core_connection, expire_held
from migrator.store.models import Host, Lease, Migration, Slice, Transition, Verdict, Window
from migrator.shared.records import ChannelWindow
from migrator.shared.vocab import FINAL, MODES, first_slices

WINDOW_FIELDS = [f.name for f in fields(ChannelWindow) if f.name != "extra"]


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def create_migration(session: Session, config: Config, *, name: str = "", schema_fingerprint: str | None = None,
                     now: float | None = None, source_hash: str | None = None) -> Migration:
    """Record a PLANNED migration with its config snapshot, slices and hosts (all desired PERF).

    source_hash: the operator's program hash (dataplane/source.source_hash), None for the demo probes."""
    ts = _now(now)
    m = Migration(name=name or f"migration from {config.path}", created_at=ts,
                  config_json=json.dumps(config.to_dict(), sort_keys=True), config_hash=config.hash,
                  config_path=config.path, schema_fingerprint=schema_fingerprint, source_hash=source_hash,
                  phase="PLANNED",
                  slice=0, phase_since=ts, streak=0, streak_window_ids="[]", clean_windows=0, judged_index=-1)
    session.add(m)
    session.flush()
    for k, members in enumerate(config.slice_hosts, start=1):
        session.add(Slice(migration_id=m.id, number=k, spec=json.dumps(config.slices[k - 1]),
                          host_count=len(members)))
    first_slice = first_slices(config.slice_hosts)
    session.execute(insert(Host), [
        {"migration_id": m.id, "name": h, "position": i, "slice": first_slice[h], "desired_mode": "PERF"}
        for i, h in enumerate(config.host_names)])
    return m


def get_migration(session: Session, migration_id: int | None = None) -> Migration:
    """The given migration, or the newest one; StoreError when there is none."""
    if migration_id is None:
        m = session.scalars(select(Migration).order_by(Migration.id.desc()).limit(1)).first()
        if m is None:
            raise StoreError("no migration in this database; run `migrator init` first")
        return m
    m = session.get(Migration, migration_id)
    if m is None:
        raise StoreError(f"no migration {migration_id} in this database")
    return m


def active_migration(session: Session) -> Migration | None:
    """The newest migration that is not final (what agents and `start` work on), or None."""
    return session.scalars(select(Migration).where(Migration.phase.not_in([str(p) for p in FINAL]))
                           .order_by(Migration.id.desc()).limit(1)).first()


def _window_phase(session: Session, m, start: float) -> tuple[str, int]:  # m: a Migration or its row
    # A window belongs to the phase that was in force when it started; one that started before
    # the current phase was confirmed belongs to the previous phase.
    phase, slice_ = (m.paused_phase, m.paused_slice or 0) if m.phase == "PAUSED" else (m.phase, m.slice)
    if start >= m.phase_since:
        return phase, slice_
    prev = session.execute(select(Transition.from_phase, Transition.from_slice)
                           .where(Transition.migration_id == m.id, Transition.status == "confirmed",
                                  Transition.confirmed_at <= m.phase_since)
                           .order_by(Transition.id.desc()).limit(1)).first()
    return (prev[0], prev[1]) if prev else (phase, slice_)


def _window_row(migration_id: int, phase: str, slice_: int, w: ChannelWindow, now: float) -> dict:
    if w.channel not in ("perf", "ring"):
        raise MigratorError(f"window {w.host}/{w.channel}/{w.index}: channel must be perf or ring")
    if w.mode not in MODES:
        raise MigratorError(f"window {w.host}/{w.channel}/{w.index}: mode must be one of {', '.join(MODES)}")
    row = dict(w.__dict__)  # every ChannelWindow field; cheaper than getattr per field on bulk paths
    extra = row.pop("extra", None)
    row.update(migration_id=migration_id, phase=phase, slice=slice_, recorded_at=now, loss_rate=w.loss_rate,
               extra=json.dumps(extra, sort_keys=True, default=str) if extra else "{}")
    return row


def _reported_fingerprint(m, ws: Sequence[ChannelWindow]) -> str | None:
    """The first schema fingerprint the windows report that differs from the frozen one, when none
    was reported before (`status` shows it; control/stall.py names it)."""
    if not m.schema_fingerprint or m.reported_fingerprint:
        return None
    for w in ws:
        fp = w.extra.get("schema_fingerprint") if w.extra else None
        if fp and fp != m.schema_fingerprint:
            return str(fp)
    return None


# What record_windows reads of the migration: one row of a few columns, not the ORM object (an
# agent writes every window; loading the migration with its config snapshot was a third of it).
_RECORD_COLS = (Migration.id, Migration.phase, Migration.slice, Migration.paused_phase, Migration.paused_slice,
                Migration.phase_since, Migration.schema_fingerprint, Migration.reported_fingerprint)
_RECORD_SELECT = select(*_RECORD_COLS).where(Migration.id == bindparam("mid"))  # built once: a Core read



def record_windows(session: Session, migration_id: int, ws: Sequence[ChannelWindow], now: float | None = None) -> int:
    """Store windows (the one write path: agents, the library and tests); a re-sent (host, channel,
    index) is skipped. One statement (store/bulk.py); returns how many were new."""
    if not ws:
        return 0
    m = core_connection(session).execute(_RECORD_SELECT, {"mid": migration_id}).first()
    if m is None:
        raise StoreError(f"no migration {migration_id} in this database")
    ts = _now(now)
    cache: dict[bool, tuple[str, int]] = {}
    rows = []
    for w in ws:
        late = w.start < m.phase_since
        if late not in cache:
            cache[late] = _window_phase(session, m, w.start)
        rows.append(_window_row(migration_id, *cache[late], w, ts))
    fp = _reported_fingerprint(m, ws)
    if fp is not None:
        session.execute(update(Migration).where(Migration.id == migration_id).values(reported_fingerprint=fp))
    return insert_rows(session, Window.__table__, rows, conflict=("migration_id", "index", "host", "channel"))


def _host(session: Session, migration_id: int, host: str) -> Host:
    h = session.scalars(select(Host).where(Host.migration_id == migration_id, Host.name == host)).one_or_none()
    if h is None:
        raise StoreError(f"host {host!r} is not part of migration {migration_id}")
    return h


def heartbeat(session: Session, migration_id: int, host: str, now: float | None = None,
              mode: str | None = None) -> str:
    """An agent is alive; returns its desired mode (so one round trip does both).

    mode: what the host's mode map reads now. When it differs from the applied mode on record
    (an agent restarted and its new program starts in PERF), it becomes the applied mode, so a
    transition waiting for it is not left waiting on what a dead agent last reported."""
    ts = _now(now)
    params = {"mid": migration_id, "host": host, "ts": ts}
    if mode is not None:
        if mode not in MODES:
            raise MigratorError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        params["mode"] = mode
    # One UPDATE ... RETURNING, built once (every host, every window: no row loaded, no ORM
    # bookkeeping: a third of what the ORM-enabled update cost). The session's pending changes go
    # first (as autoflush would), and a Host it holds is expired after, so it reads what was written.
    row = core_connection(session).execute(_BEAT if mode is None else _BEAT_MODE, params).first()
    if row is None:
        raise StoreError(f"host {host!r} is not part of migration {migration_id}")
    expire_held(session, Host, migration_id=migration_id, name=host)
    return row[0]


_BEAT_WHERE = (Host.migration_id == bindparam("mid"), Host.name == bindparam("host"))
_BEAT = update(Host).where(*_BEAT_WHERE).values(last_heartbeat=bindparam("ts")).returning(Host.desired_mode)
# The mode read from the host's map becomes the applied mode; applied_at moves only when it changed.
_BEAT_MODE = (update(Host).where(*_BEAT_WHERE)
              .values(last_heartbeat=bindparam("ts"), applied_mode=bindparam("mode"),
                      applied_at=case((Host.applied_mode.is_distinct_from(bindparam("mode")), bindparam("ts")),
                                      else_=Host.applied_at))
              .returning(Host.desired_mode))


def desired_mode(session: Session, migration_id: int, host: str) -> str:
    """The mode the controller wants on `host` (PERF, DUAL or RING)."""
    return _host(session, migration_id, host).desired_mode


def report_applied(session: Session, migration_id: int, host: str, mode: str, now: float | None = None) -> None:
    """An agent has written `mode` into its kernel mode map."""
    if mode not in MODES:
        raise MigratorError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    h = _host(session, migration_id, host)
    ts = _now(now)
    h.applied_mode, h.applied_at, h.last_heartbeat = mode, ts, ts


SELF_SCOPE = "self"  # verdict scope of a host's own rollback decision (agent/selfprotect.py)


def report_self_protect(session: Session, migration_id: int, host: str, protection: dict,
                        now: float | None = None) -> Verdict:
    """A host put itself on PERF (its own ring windows breached N in a row): store its reason as a
    verdict of scope 'self' naming the ring windows of the streak (already recorded before it)."""
    m = get_migration(session, migration_id)
    _host(session, migration_id, host)
    indexes = [int(i) for i in protection.get("indexes") or []]
    ids = dict(session.execute(select(Window.index, Window.id).where(
        Window.migration_id == migration_id, Window.host == host, Window.channel == "ring",
        Window.index.in_(indexes))).all()) if indexes else {}
    last = indexes[-1] if indexes else -1
    row = session.execute(select(Window.phase, Window.slice).where(Window.id == ids[last])).first() \
        if last in ids else None
    phase, slice_ = (row[0], row[1]) if row else ((m.paused_phase, m.paused_slice or 0) if m.phase == "PAUSED"
                                                  else (m.phase, m.slice))
    values = {**protection, "window_ids": [ids.get(i) for i in indexes]}
    v = Verdict(migration_id=migration_id, window_id=ids.get(last), scope=SELF_SCOPE, host=host, index=last,
                phase=phase, slice=slice_, verdict="breach", rule=",".join(sorted(set(protection.get("rules") or [])))[:64],
                values=json.dumps(values, sort_keys=True, default=str), streak=len(indexes),
                decided_at=float(protection.get("at") or _now(now)))
    session.add(v)
    session.flush()
    return v


def self_protect_reports(session: Session, migration_id: int, since: float | None = None) -> list[dict]:
    """Hosts' self-protection reports (scope 'self' verdicts) decided after `since`, oldest first."""
    q = select(Verdict).where(Verdict.migration_id == migration_id, Verdict.scope == SELF_SCOPE)
    if since is not None:
        q = q.where(Verdict.decided_at > since)
    out = []
    for v in session.scalars(q.order_by(Verdict.id)):
        d = json.loads(v.values)
        out.append({"id": v.id, "host": v.host, "index": v.index, "phase": v.phase, "slice": v.slice,
                    "at": v.decided_at, "rule": v.rule, "reason": d.get("reason", ""),
                    "window_ids": [i for i in d.get("window_ids", []) if i is not None], "report": d})
    return out


def report_fingerprint(session: Session, migration_id: int, fingerprint: str) -> None:
    """An agent or the data plane sees this event schema fingerprint; a change blocks advancing."""
    m = get_migration(session, migration_id)
    if m.schema_fingerprint and fingerprint != m.schema_fingerprint and not m.reported_fingerprint:
        m.reported_fingerprint = str(fingerprint)


# ---- read side -------------------------------------------------------------------------------

def transition_dict(t: Transition) -> dict:
    """A transition row as the plain dict `history` prints and --json emits."""
    return {"id": t.id, "from": t.from_phase, "from_slice": t.from_slice, "to": t.to_phase,
            "to_slice": t.to_slice, "actor": t.actor, "reason": t.reason,
            "window_ids": json.loads(t.window_ids), "status": t.status, "at": t.created_at,
            "confirmed_at": t.confirmed_at,
            # per host at confirmation: mode, applied | sent | lost, last report (store/hostlease.py)
            "hosts": json.loads(t.host_status) if t.host_status else None}


def history(session: Session, migration_id: int) -> list[dict]:
    """Every transition of a migration, oldest first (pending intents included, marked 'intent')."""
    rows = session.scalars(select(Transition).where(Transition.migration_id == migration_id)
                           .order_by(Transition.id)).all()
    return [transition_dict(t) for t in rows]


WINDOW_COLUMNS = ("id", "phase", "slice", "host", "channel", "index", "start", "end", "mode", "attempts",
                  "delivered", "dropped_full", "dropped_other", "lost", "filled_from_ring", "producer_ns", "peak_bytes",
                  "loss_rate", "lag_p50_ms",
                  "lag_p99_ms", "lag_max_ms", "inversions", "consumer_cpu_s", "residual", "settled")


def list_windows(session: Session, migration_id: int, *, phase: str | None = None, host: str | None = None,
                 channel: str | None = None, last: int | None = None) -> list[dict]:
    """Windows with their host verdicts, newest `last` of them (all when None), oldest first."""
    cols = [getattr(Window, c) for c in WINDOW_COLUMNS]
    q = select(*cols).where(Window.migration_id == migration_id)
    if phase:
        q = q.where(Window.phase == phase)
    if host:
        q = q.where(Window.host == host)
    if channel:
        q = q.where(Window.channel == channel)
    q = q.order_by(Window.id.desc())
    if last is not None:
        q = q.limit(last)
    rows = [dict(r._mapping) for r in session.execute(q)]
    rows.reverse()
    if rows:
        ids = [r["id"] for r in rows]
        verdicts: dict[int, tuple] = {}
        for chunk in range(0, len(ids), 500):
            for wid, v, rule in session.execute(
                    select(Verdict.window_id, Verdict.verdict, Verdict.rule)
                    .where(Verdict.window_id.in_(ids[chunk:chunk + 500]), Verdict.scope == "host")):
                verdicts[wid] = (v, rule)
        for r in rows:
            r["verdict"], r["rule"] = verdicts.get(r["id"], (None, None))
    return rows


def hosts(session: Session, migration_id: int) -> list[dict]:
    """Hosts with slice, desired/applied mode and last heartbeat, in canary order."""
    rows = session.scalars(select(Host).where(Host.migration_id == migration_id).order_by(Host.position)).all()
    return [{"name": h.name, "slice": h.slice, "desired_mode": h.desired_mode, "applied_mode": h.applied_mode,
             "applied_at": h.applied_at, "last_heartbeat": h.last_heartbeat} for h in rows]


def lease_of(session: Session, migration_id: int) -> Lease | None:
    """The controller lease on a migration, if any controller ever took one."""
    return session.get(Lease, migration_id)


def iter_window_rows(session: Session, migration_id: int) -> Iterable:
    """All windows of a migration in index order (for what-if replays)."""
    return session.execute(select(Window).where(Window.migration_id == migration_id)
                           .order_by(Window.index, Window.host, Window.channel)).scalars()



# ---- read side: `migrator list` and the per-host table of `status` ---------------------------

def list_migrations(session: Session) -> list[dict]:
    """Every migration, oldest first: id, name, phase, slice, slices, created, hosts, windows and
    its newest transition (None before `start`). A fixed number of queries, whatever the count."""
    hosts_of = dict(session.execute(select(Host.migration_id, func.count()).group_by(Host.migration_id)).all())
    slices_of = dict(session.execute(select(Slice.migration_id, func.count()).group_by(Slice.migration_id)).all())
    windows_of = dict(session.execute(select(Window.migration_id, func.count()).group_by(Window.migration_id)).all())
    newest = select(func.max(Transition.id)).group_by(Transition.migration_id).scalar_subquery()
    last_of = {t.migration_id: t for t in session.scalars(select(Transition).where(Transition.id.in_(newest)))}
    out = []
    for m in session.scalars(select(Migration).order_by(Migration.id)):
        t = last_of.get(m.id)
        out.append({"id": m.id, "name": m.name, "phase": m.phase, "slice": m.slice, "slices": slices_of.get(m.id, 0),
                    "paused_phase": m.paused_phase, "created_at": m.created_at, "phase_since": m.phase_since,
                    "hosts": hosts_of.get(m.id, 0), "windows": windows_of.get(m.id, 0),
                    "last_transition": transition_dict(t) if t is not None else None})
    return out


_HOST_WINDOW_COLUMNS = ("host", "channel", "index", "mode", "attempts", "loss_rate", "lag_p99_ms", "producer_ns",
                        "peak_bytes", "end")


def host_status(session: Session, migration_id: int, *, position: tuple[str, int] | None = None,
                rollback_after: int = 1, lookback: int = 2) -> list[dict]:
    """Per host, in canary order: slice, desired/applied mode, heartbeat, its last ring and perf
    window, its last host verdict and `streak`: its own newest verdicts in a row that breached,
    counted within `position` (phase, slice), or within its newest verdict's when None.

    Bounded work on any history size: the windows of the newest `lookback` indexes in one query (a
    host silent for longer costs one indexed lookup per channel) and the newest host verdicts, as
    many as `rollback_after` + 1 per host."""
    hs = hosts(session, migration_id)
    names = [h["name"] for h in hs]
    last: dict[tuple[str, str], dict] = {}
    top = session.scalar(select(func.max(Window.index)).where(Window.migration_id == migration_id))
    cols = [getattr(Window, c) for c in _HOST_WINDOW_COLUMNS]
    if top is not None:
        for r in session.execute(select(*cols).where(Window.migration_id == migration_id,
                                                     Window.index >= top - lookback).order_by(Window.index)):
            last[(r.host, r.channel)] = dict(r._mapping)  # ascending: the newest one stays
        for name in names:
            for ch in ("ring", "perf"):
                if (name, ch) not in last:
                    r = session.execute(select(*cols).where(Window.migration_id == migration_id, Window.host == name,
                                                            Window.channel == ch)
                                        .order_by(Window.index.desc()).limit(1)).first()
                    if r is not None:
                        last[(name, ch)] = dict(r._mapping)
    verdicts: dict[str, list] = {}
    limit = min(max(len(names), 1) * (rollback_after + 1), 50_000)
    for v in session.execute(select(Verdict.host, Verdict.index, Verdict.verdict, Verdict.rule, Verdict.phase,
                                    Verdict.slice).where(Verdict.migration_id == migration_id, Verdict.scope == "host")
                             .order_by(Verdict.id.desc()).limit(limit)):
        verdicts.setdefault(v.host, []).append(v)  # newest first
    out = []
    for h in hs:
        vs = verdicts.get(h["name"], [])
        where = position if position is not None else ((vs[0].phase, vs[0].slice) if vs else None)
        streak = 0
        for v in vs:
            if (v.phase, v.slice) != where or v.verdict != "breach":
                break
            streak += 1
        lv = vs[0] if vs else None
        out.append({**h, "ring": last.get((h["name"], "ring")), "perf": last.get((h["name"], "perf")),
                    "verdict": ({"index": lv.index, "verdict": lv.verdict, "rule": lv.rule, "phase": lv.phase,
                                 "slice": lv.slice} if lv else None),
                    "streak": streak})
    return out
