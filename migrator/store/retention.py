"""Retention: the windows of finished migrations, once older than `[store] keep_windows`, are rolled
up into `window_rollups` (one row per migration, host, channel, phase and slice) and deleted.

What is kept, and why:

* Migrations that are not final (PLANNED, a measured phase, PAUSED) are never touched.
* A window named by a transition (`transitions.window_ids`: the windows that decided a move) is
  never deleted nor rolled up, so every id `history` prints, and the deciding-windows table of
  `report`, still resolves to the window itself with its host verdict.
* The host verdicts of a deleted window are counted into its rollup (passes, breaches, no_data)
  and deleted with it; verdicts of other scopes (the slice streak, hosts' self-protection) stay,
  their window_id set to NULL when it named a deleted window.

The work goes in batches of at most `batch` windows (oldest ids first), each one rolled up and
deleted in the same transaction, so the rollups always account for exactly the windows that are
gone. `prune` does at most `max_batches` batches in the caller's session and never commits: a
caller that wants a transaction per batch calls it again while `done` is False.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from sqlalchemy import and_, case, delete, func, not_, select, update
from sqlalchemy.orm import Session

from migrator.shared.vocab import FINAL
from migrator.store.models import Migration, Transition, Verdict, Window, WindowRollup

BATCH = 20_000

_SUMS = ("attempts", "delivered", "dropped_full", "dropped_other", "lost", "filled_from_ring", "parse_errors",
         "payload_mismatches", "inversions")
ROLLUP_COLUMNS = ("host", "channel", "phase", "slice", "first_index", "last_index", "first_start", "last_end",
                  "windows", *_SUMS, "residual", "unsettled", "consumer_cpu_s", "lag_p99_max_ms", "lag_max_ms",
                  "passes", "breaches", "no_data")


@dataclass
class MigrationPrune:
    """What prune did (or, dry, would do) to one finished migration."""

    migration_id: int
    phase: str
    windows: int = 0  # windows rolled up and deleted
    kept_deciding: int = 0  # old windows kept because a transition names them
    host_verdicts: int = 0  # host verdicts counted into rollups and deleted
    rollups: int = 0  # rollup rows of the migration afterwards (dry: that there would be)
    done: bool = True  # nothing older than the cutoff left to prune


@dataclass
class PruneReport:
    """The outcome of one `prune` call: per finished migration with old windows, and the totals."""

    keep_seconds: float
    cutoff: float
    dry_run: bool
    migrations: list[MigrationPrune] = field(default_factory=list)
    skipped_active: list[int] = field(default_factory=list)  # migrations not final: never pruned

    @property
    def windows(self) -> int:
        return sum(m.windows for m in self.migrations)

    @property
    def done(self) -> bool:
        return all(m.done for m in self.migrations)

    def to_dict(self) -> dict:
        return {"keep_seconds": self.keep_seconds, "cutoff": self.cutoff, "dry_run": self.dry_run,
                "windows": self.windows, "done": self.done, "skipped_active": self.skipped_active,
                "migrations": [asdict(m) for m in self.migrations]}


def deciding_window_ids(session: Session, migration_id: int) -> set[int]:
    """Every window id a transition of the migration names (they are never pruned)."""
    ids: set[int] = set()
    for raw in session.scalars(select(Transition.window_ids).where(Transition.migration_id == migration_id)):
        ids.update(int(i) for i in json.loads(raw or "[]") if i is not None)
    return ids


def _old(migration_id: int, cutoff: float, keep: set[int]):
    cond = and_(Window.migration_id == migration_id, Window.end < cutoff)
    return and_(cond, not_(Window.id.in_(sorted(keep)))) if keep else cond


def _aggregate(session: Session, where) -> dict[tuple, dict]:
    """Rollup rows of the windows matching `where`, keyed by (host, channel, phase, slice)."""
    settled = Window.settled.is_(True)
    cols = [Window.host, Window.channel, Window.phase, Window.slice,
            func.min(Window.index), func.max(Window.index), func.min(Window.start), func.max(Window.end),
            func.count(), *(func.coalesce(func.sum(getattr(Window, c)), 0) for c in _SUMS),
            func.coalesce(func.sum(case((settled, Window.residual), else_=0)), 0),
            func.coalesce(func.sum(case((settled, 0), else_=1)), 0),
            func.coalesce(func.sum(Window.consumer_cpu_s), 0.0), func.max(Window.lag_p99_ms),
            func.max(Window.lag_max_ms)]
    key = (Window.host, Window.channel, Window.phase, Window.slice)
    out = {}
    for r in session.execute(select(*cols).where(where).group_by(*key)):
        d = dict(zip(ROLLUP_COLUMNS[:-3], r))
        d.update(passes=0, breaches=0, no_data=0)
        out[tuple(r[:4])] = d
    verdicts = (select(Window.host, Window.channel, Window.phase, Window.slice, Verdict.verdict, func.count())
                .join(Verdict, and_(Verdict.window_id == Window.id, Verdict.scope == "host")).where(where)
                .group_by(*key, Verdict.verdict))
    for host, ch, phase, sl, verdict, n in session.execute(verdicts):
        col = {"pass": "passes", "breach": "breaches"}.get(verdict, "no_data")
        out[(host, ch, phase, sl)][col] += int(n)
    return out


def _merge(session: Session, migration_id: int, rows: dict[tuple, dict], now: float) -> None:
    """Add `rows` into the migration's rollups (a later batch of the same phase position adds up)."""
    have = {(r.host, r.channel, r.phase, r.slice): r for r in session.scalars(
        select(WindowRollup).where(WindowRollup.migration_id == migration_id))}
    for key, d in rows.items():
        r = have.get(key)
        if r is None:
            session.add(WindowRollup(migration_id=migration_id, pruned_at=now, **d))
            continue
        r.first_index, r.last_index = min(r.first_index, d["first_index"]), max(r.last_index, d["last_index"])
        r.first_start, r.last_end = min(r.first_start, d["first_start"]), max(r.last_end, d["last_end"])
        for c in ("windows", *_SUMS, "residual", "unsettled", "consumer_cpu_s", "passes", "breaches", "no_data"):
            setattr(r, c, getattr(r, c) + d[c])
        for c in ("lag_p99_max_ms", "lag_max_ms"):
            vals = [v for v in (getattr(r, c), d[c]) if v is not None]
            setattr(r, c, max(vals) if vals else None)
        r.pruned_at = now
    session.flush()


def _prune_migration(session: Session, m: Migration, cutoff: float, *, dry_run: bool, batch: int,
                     max_batches: int | None, now: float) -> MigrationPrune:
    res = MigrationPrune(m.id, m.phase)
    keep = deciding_window_ids(session, m.id)
    if keep:
        res.kept_deciding = session.scalar(select(func.count()).select_from(Window).where(
            Window.migration_id == m.id, Window.end < cutoff, Window.id.in_(sorted(keep)))) or 0
    old = _old(m.id, cutoff, keep)
    if dry_run:
        rows = _aggregate(session, old)
        res.windows = sum(d["windows"] for d in rows.values())
        res.host_verdicts = sum(d["passes"] + d["breaches"] + d["no_data"] for d in rows.values())
        have = set(session.execute(select(WindowRollup.host, WindowRollup.channel, WindowRollup.phase,
                                          WindowRollup.slice).where(WindowRollup.migration_id == m.id)).all())
        res.rollups = len(have | {tuple(k) for k in rows})
        return res
    batches = 0
    while max_batches is None or batches < max_batches:
        ids = session.scalars(select(Window.id).where(old).order_by(Window.id).limit(batch)).all()
        if not ids:
            break
        # One id range per batch (no list of 20,000 bound parameters): the old windows in it.
        in_batch = and_(old, Window.id.between(ids[0], ids[-1]))
        rows = _aggregate(session, in_batch)
        _merge(session, m.id, rows, now)
        doomed = select(Window.id).where(in_batch).scalar_subquery()
        res.host_verdicts += session.execute(delete(Verdict).where(
            Verdict.window_id.in_(doomed), Verdict.scope == "host").execution_options(
            synchronize_session=False)).rowcount or 0
        session.execute(update(Verdict).where(Verdict.window_id.in_(doomed), Verdict.scope != "host")
                        .values(window_id=None).execution_options(synchronize_session=False))
        n = session.execute(delete(Window).where(in_batch).execution_options(synchronize_session=False)).rowcount
        res.windows += n or 0
        batches += 1
        if len(ids) < batch:
            break
    else:
        res.done = session.scalar(select(Window.id).where(old).limit(1)) is None
    res.rollups = session.scalar(select(func.count()).select_from(WindowRollup)
                                 .where(WindowRollup.migration_id == m.id)) or 0
    return res


def prune(session: Session, keep_seconds: float, *, now: float | None = None, dry_run: bool = False,
          migration_id: int | None = None, batch: int = BATCH, max_batches: int | None = None) -> PruneReport:
    """Roll up and delete the windows of finished migrations that ended before now - keep_seconds.

    migration_id: only that migration (still only if it is final). dry_run: count, write nothing.
    max_batches: stop after that many batches per migration (`done` False when some are left), so
    a caller can commit between calls. Never commits (the caller owns the session)."""
    ts = time.time() if now is None else now
    report = PruneReport(keep_seconds, ts - keep_seconds, dry_run)
    q = select(Migration).order_by(Migration.id)
    if migration_id is not None:
        q = q.where(Migration.id == migration_id)
    for m in session.scalars(q).all():
        if m.phase not in {str(p) for p in FINAL}:
            report.skipped_active.append(m.id)
            continue
        if session.scalar(select(Window.id).where(Window.migration_id == m.id, Window.end < report.cutoff)
                          .limit(1)) is None:
            continue  # nothing old enough: not listed
        report.migrations.append(_prune_migration(session, m, report.cutoff, dry_run=dry_run, batch=batch,
                                                  max_batches=max_batches, now=ts))
    return report


def rollups(session: Session, migration_id: int) -> list[dict]:
    """The rollups of a migration, in (phase position, host, channel) order of their first window."""
    rows = session.scalars(select(WindowRollup).where(WindowRollup.migration_id == migration_id)
                           .order_by(WindowRollup.first_index, WindowRollup.host, WindowRollup.channel)).all()
    return [{"id": r.id, **{c: getattr(r, c) for c in ROLLUP_COLUMNS}, "pruned_at": r.pruned_at} for r in rows]


def rolled_up_windows(session: Session, migration_id: int) -> int:
    """How many windows of the migration prune has rolled up (0: none, the windows are all there)."""
    return int(session.scalar(select(func.coalesce(func.sum(WindowRollup.windows), 0))
                              .where(WindowRollup.migration_id == migration_id)) or 0)


__all__ = ["prune", "PruneReport", "MigrationPrune", "rollups", "rolled_up_windows", "deciding_window_ids", "BATCH"]
