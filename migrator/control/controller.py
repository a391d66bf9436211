"""The controller: judge new windows, keep the streak, advance or roll back by itself, hold a lease.

`Controller.step(session, now)` does one round inside the caller's transaction: it judges every
window index that is complete (all needed windows in) or late (`grace_windows` windows past its
end), writes host and group verdicts, updates the streak, and, when the policy says so, writes a
transition intent. The loop (`run_controller`) commits that, then applies and confirms it through
phases.finish_transition, which is also what recovers an intent left behind by a crash.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from migrator.config import Config, config_from_snapshot
from migrator.errors import ApplyTimeout, DatabaseUnavailable, GuardFailed, LeaseHeld, MigratorError, StoreError
from migrator.control.phases import (
    FINAL,
    MEASURED,
    DbApplier,
    ModeApplier,
    Phase,
    finish_transition,
    label,
    lock_migration,
    next_step,
    recover_transition,
    request_transition,
    slice_count,
)
from migrator.control.liveness import lost_hosts, lost_reason
from migrator.control.policy import (
    BREACH,
    NO_DATA,
    PASS,
    GroupVerdict,
    StreakState,
    judge_group,
    judged_hosts,
    needed,
    next_streak,
    overlaps_pause,
)
from migrator.control.stall import Stall, stall_of
from migrator.control.story import group_windows
from migrator.store.api import self_protect_reports
from migrator.store.bulk import insert_rows
from migrator.store.db import core_connection
from migrator.store.models import Host, Lease, Migration, Transition, Verdict, Window

log = logging.getLogger("migrator.control.controller")

# Back-off while the database is unavailable: first retry after BACKOFF_START s, doubling up to BACKOFF_MAX.
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0

# Driver messages that mean the schema is not what this code expects (a missing or newer migration):
# waiting does not heal these, so the loop gives up instead of retrying.
_SCHEMA_ERRORS = ("no such table", "no such column", "has no column named", "undefinedtable", "undefinedcolumn",
                  "does not exist", "unknown column", "doesn't exist")


def transient_db_error(exc: BaseException) -> bool:
    """True for a driver error the loop should ride out (disk full, locked, server gone, I/O error).

    IntegrityError is a bug or race in our own writes, and schema errors cannot heal: both are not.
    """
    if not isinstance(exc, (OperationalError, DatabaseError)) or isinstance(exc, IntegrityError):
        return False
    low = " ".join(str(getattr(exc, "orig", None) or exc).split()).lower()
    return not any(k in low for k in _SCHEMA_ERRORS)


class _Outage:
    """Tracks one database outage: one log line when it starts, one when the database is back."""

    def __init__(self, where) -> None:
        self.where, self.since, self.delay = where, None, BACKOFF_START

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; returns how long to wait before the next one."""
        from migrator.store.guard import translate

        if self.since is None:
            self.since, self.delay = time.monotonic(), BACKOFF_START
            log.warning("database unavailable: %s; retrying", translate(exc, self.where).problem)
        else:
            self.delay = min(self.delay * 2, BACKOFF_MAX)
        return self.delay

    def ok(self) -> None:
        if self.since is not None:
            log.warning("database back after %.1f s", time.monotonic() - self.since)
            self.since, self.delay = None, BACKOFF_START

    def check_schema(self) -> None:
        """During an outage, before a retry: give up if the database is now at another revision."""
        if self.since is None:
            return
        from migrator.store.migrate import check_revision

        engine = self.where.engine
        try:
            check_revision(engine, engine.url, upgrade_if_older=False)
        except DatabaseUnavailable as exc:  # still down: the caller backs off again
            if isinstance(exc.__cause__, (OperationalError, DatabaseError)):
                raise exc.__cause__ from None
            raise

def insert_verdicts(session: Session, rows: list[dict]) -> None:
    """A round's verdicts in one statement (store/bulk.py)."""
    insert_rows(session, Verdict.__table__, rows)


# Columns the policy reads; loading only these keeps a 1000-host step cheap.
_JUDGE_COLS = [Window.id, Window.host, Window.channel, Window.index, Window.start, Window.end, Window.mode,
               Window.attempts, Window.delivered, Window.dropped_full, Window.dropped_other, Window.lost,
               Window.lag_p99_ms, Window.inversions, Window.consumer_cpu_s, Window.parse_errors,
               Window.payload_mismatches, Window.residual, Window.settled, Window.producer_ns]


@dataclass
class StepResult:
    """What one controller round did: windows judged, a transition written, or why a move is blocked."""

    phase: str
    slice: int
    judged: list[GroupVerdict] = field(default_factory=list)
    transition_id: int | None = None
    target: str | None = None
    blocked: str | None = None
    pending: bool = False
    stall: Stall | None = None  # why the migration cannot advance now (control/stall.py), None when it can


def default_holder() -> str:
    """A lease holder id (host:pid:random) naming this controller, so a dead one on the same host can be spotted."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(holder: str) -> bool:
    """True when the holder id names a process on this host that no longer exists.

    A controller killed with SIGKILL cannot release its lease; on the same host we can tell it is
    gone and take over at once instead of making the operator wait for the expiry.
    """
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def pause_spans(session: Session, migration_id: int, since: float) -> list[tuple[float, float]]:
    """(began, ended) of each pause of the migration confirmed at or after `since` (the current phase
    position's start), from the pause's intent to its resume's confirmation; one still on ends at inf.
    Derived from the transitions table, the audit of every move."""
    rows = session.execute(select(Transition.from_phase, Transition.to_phase, Transition.created_at,
                                  Transition.confirmed_at)
                           .where(Transition.migration_id == migration_id, Transition.status == "confirmed",
                                  Transition.confirmed_at >= since)
                           .order_by(Transition.id)).all()
    spans: list[tuple[float, float]] = []
    began = None
    for from_phase, to_phase, created_at, confirmed_at in rows:
        if to_phase == Phase.PAUSED:
            began = created_at
        elif from_phase == Phase.PAUSED and began is not None:
            spans.append((began, confirmed_at))
            began = None
    if began is not None:
        spans.append((began, float("inf")))
    return spans


def acquire_lease(session: Session, migration_id: int, holder: str, now: float, ttl: float) -> str | None:
    """Take or renew the migration's lease; LeaseHeld while another live holder's lease is unexpired.

    Returns the holder it was taken over from (its lease lapsed, or it is a dead process on this
    host), else None (a new lease, or our own renewed)."""
    lease = session.get(Lease, migration_id, with_for_update=True)
    if lease is None:
        session.add(Lease(migration_id=migration_id, holder=holder, acquired_at=now, expires_at=now + ttl))
        session.flush()
        return None
    if lease.holder != holder and lease.expires_at > now and not holder_is_dead(lease.holder):
        raise LeaseHeld(migration_id, lease.holder, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expires_at)))
    previous = None
    if lease.holder != holder:
        previous = lease.holder
        lease.holder, lease.acquired_at = holder, now
    lease.expires_at = now + ttl
    return previous


def release_lease(session: Session, migration_id: int, holder: str) -> None:
    """Give the lease up (only our own)."""
    session.execute(delete(Lease).where(Lease.migration_id == migration_id, Lease.holder == holder))


class Controller:
    """Drives one migration. Stateless between steps: everything it needs is re-read from the store."""

    def __init__(self, session_factory: sessionmaker[Session], migration_id: int, *,
                 applier: ModeApplier | None = None, holder: str | None = None, lease_seconds: float = 15.0,
                 grace_windows: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        self.session_factory, self.migration_id = session_factory, migration_id
        self.applier = applier or DbApplier()
        self.holder = holder or default_holder()
        self.lease_seconds, self.grace_windows, self.clock = lease_seconds, grace_windows, clock
        self._config: Config | None = None
        self._stall_seen: tuple[str, str] | None = None  # (cause, position) of the stall last logged

    def config(self, m: Migration) -> Config:
        """The plan the migration was started with (its stored config snapshot), parsed once."""
        if self._config is None:
            self._config = config_from_snapshot(m.config_json, "", f"migration {m.id} config snapshot")
        return self._config

    # -- one round ---------------------------------------------------------------------------

    def step(self, session: Session, now: float) -> StepResult:
        """Judge what is judgeable, update the streak, and write an intent if a move is due."""
        m = lock_migration(session, self.migration_id)
        res = StepResult(m.phase, m.slice)
        if m.pending_transition_id is not None:
            res.pending, res.transition_id = True, m.pending_transition_id
            return res
        paused = m.phase == Phase.PAUSED
        phase, slice_ = (m.paused_phase, m.paused_slice or 0) if paused else (m.phase, m.slice)
        if phase not in MEASURED:
            return res
        cfg = self.config(m)
        # Plain rows (Core on the session's connection): ORM-enabled selects spent a tenth of a
        # 1,000-host round on its 2,000 rows.
        conn = core_connection(session)
        hosts = [(h, s) for h, s in conn.execute(
            select(Host.name, Host.slice).where(Host.migration_id == m.id).order_by(Host.position))]
        judged = judged_hosts(phase, slice_, hosts)
        need = needed(phase, judged, hosts)
        rows = conn.execute(select(*_JUDGE_COLS).where(
            Window.migration_id == m.id, Window.index > m.judged_index, Window.start >= m.phase_since)).all()
        by_index: dict[int, dict[str, dict]] = defaultdict(dict)
        for r in rows:
            by_index[r.index].setdefault(r.host, {})[r.channel] = r
        state = StreakState(m.streak, tuple(json.loads(m.streak_window_ids)), m.clean_windows)
        pauses = pause_spans(session, m.id, m.phase_since)
        grace = self.grace_windows * cfg.window_seconds
        verdict_rows: list[dict] = []
        fired = False
        for index in sorted(by_index):
            group = by_index[index]
            have = {(h, c) for h, chans in group.items() for c in chans}
            if not need <= have and now < max(w.end for chans in group.values() for w in chans.values()) + grace:
                break  # incomplete and not late yet: judge in order, so wait
            gv = judge_group(phase, index, judged, group, cfg.thresholds)
            ws = [w for chans in group.values() for w in chans.values()]
            paused_window = overlaps_pause(min(w.start for w in ws), max(w.end for w in ws), pauses)
            state = next_streak(state, gv.verdict, gv.window_id, cfg.no_data, counts_clean=not paused_window)
            res.judged.append(gv)
            verdict_rows.extend(
                {"migration_id": m.id, "window_id": hv.window_id, "scope": "host", "host": hv.host, "index": index,
                 "phase": phase, "slice": slice_, "verdict": hv.verdict, "rule": hv.rule,
                 "values": json.dumps(hv.values), "streak": 0, "decided_at": now} for hv in gv.hosts)
            verdict_rows.append(
                {"migration_id": m.id, "window_id": gv.window_id, "scope": "slice", "host": None, "index": index,
                 "phase": phase, "slice": slice_, "verdict": gv.verdict, "rule": gv.rule,
                 "values": json.dumps(gv.values), "streak": state.streak, "decided_at": now})
            m.judged_index = index
            if state.streak >= cfg.rollback_after:
                fired = True
                break
        if verdict_rows:
            insert_verdicts(session, verdict_rows)
        m.streak, m.streak_window_ids, m.clean_windows = state.streak, json.dumps(list(state.window_ids)), state.clean
        slices = slice_count(session, m.id)
        here = label(phase, slice_, slices)
        if self._on_host_protected(session, m, now, here, fired, res):
            return res
        if fired:
            # Every judged host's window of each group of the streak (control/story.py), not one per index.
            ids = group_windows(session, m.id, phase, slice_, state.window_ids[-cfg.rollback_after:])
            last = res.judged[-1]
            t = request_transition(
                session, m.id, Phase.ROLLED_BACK, actor="auto", now=now, holder=self.holder, window_ids=ids,
                reason=f"{cfg.rollback_after} consecutive breaching windows in {here}; last: {last.rule}",
                evidence={"rules": [g.rule for g in res.judged[-cfg.rollback_after:]]})
            res.transition_id, res.target = t.id, t.to_phase
            return res
        if self._on_lost(session, m, judged, now, cfg, here, paused, res):
            return res
        if paused:
            return res  # pausing stops advancing, never protecting
        if self._on_stall(session, m, now, cfg, here, state.clean, res):
            return res
        rule = cfg.phase_rule(phase)
        if state.clean >= rule.min_clean_windows:
            if rule.manual_gate:
                res.blocked = f"{here}: {state.clean} clean windows; manual gate: waiting for `migrator advance`"
                return res
            target, to_slice = next_step(phase, slice_, slices)
            # The evidence: the clean slice windows that justified the move, oldest first (none of a pause).
            clean_ids = []
            for wid, start, end in session.execute(
                    select(Verdict.window_id, Window.start, Window.end).outerjoin(Window, Window.id == Verdict.window_id)
                    .where(Verdict.migration_id == m.id, Verdict.scope == "slice", Verdict.phase == phase,
                           Verdict.slice == slice_, Verdict.verdict == PASS, Verdict.decided_at >= m.phase_since)
                    .order_by(Verdict.index.desc())):
                if start is None or not overlaps_pause(start, end, pauses):
                    clean_ids.append(wid)
                if len(clean_ids) >= max(state.clean, 1):
                    break
            clean_ids.reverse()
            # every judged host's window of those groups, as a rollback lists them (control/story.py)
            evidence = group_windows(session, m.id, phase, slice_, clean_ids)
            try:
                t = request_transition(session, m.id, target, to_slice=to_slice, actor="auto", now=now,
                                       holder=self.holder, min_clean=rule.min_clean_windows,
                                       window_ids=evidence or [i for i in clean_ids if i is not None],
                                       reason=f"{state.clean} clean windows in {here} (min {rule.min_clean_windows})")
            except GuardFailed as exc:
                res.blocked = str(exc)
                return res
            res.transition_id, res.target = t.id, t.to_phase
        return res

    def _on_host_protected(self, session: Session, m: Migration, now: float, here: str, fired: bool,
                           res: StepResult) -> bool:
        """A host put itself on PERF (agent/selfprotect.py): ONE transition to ROLLED_BACK carrying the
        host's reason, also when this round's own streak fired on the same windows.

        Only reports newer than the last confirmed transition count: an operator who moved the
        migration since (pause, resume) has retired them, and the host stops holding PERF alike."""
        since = session.scalar(select(func.max(Transition.confirmed_at)).where(Transition.migration_id == m.id))
        reports = self_protect_reports(session, m.id, since)
        if not reports:
            return False
        first = reports[0]
        actor = f"host {first['host']}"
        evidence = {"self_protect": [r["report"] for r in reports]}
        if fired:
            evidence["controller_rules"] = [g.rule for g in res.judged[-self.config(m).rollback_after:]]
        t = request_transition(session, m.id, Phase.ROLLED_BACK, actor=actor if len(actor) <= 16 else "host",
                               now=now, holder=self.holder, window_ids=first["window_ids"],
                               reason=f"{first['reason']} (in {here})", evidence=evidence)
        res.transition_id, res.target = t.id, t.to_phase
        return True

    def _on_stall(self, session: Session, m: Migration, now: float, cfg: Config, here: str, clean: int,
                  res: StepResult) -> bool:
        """Why the migration cannot advance (control/stall.py): logged once per change of cause or
        position, kept on the result; after [agents] stall_pause_windows windows, a pause with that reason."""
        stall = res.stall = stall_of(session, m, cfg, now, here, clean_windows=clean)
        seen = (stall.cause, here) if stall else None
        if seen != self._stall_seen:
            if stall:
                log.warning("migration %d cannot advance in %s: %s", m.id, here, stall.reason)
            elif self._stall_seen is not None and self._stall_seen[1] == here:
                log.info("migration %d in %s can advance again (%s resolved)", m.id, here,
                         self._stall_seen[0].replace("_", " "))
            self._stall_seen = seen
        limit = cfg.agents.stall_pause_windows
        if not stall or not stall.pauses or not limit or stall.windows < limit:
            return False
        t = request_transition(session, m.id, Phase.PAUSED, actor="auto", now=now, holder=self.holder,
                               reason=f"stalled for {stall.windows} windows ([agents] stall_pause_windows = "
                                      f"{limit}) in {here}: {stall.reason}",
                               evidence={"stall": stall.to_dict()})
        res.transition_id, res.target = t.id, t.to_phase
        return True

    def _on_lost(self, session: Session, m: Migration, judged: list[str], now: float, cfg: Config, here: str,
                 paused: bool, res: StepResult) -> bool:
        """[agents]: pause or roll back when a judged host has not reported for lost_after_windows windows."""
        ag = cfg.agents
        lost = lost_hosts(session, m.id, judged, now, ag.lost_after_windows * cfg.window_seconds)
        target = Phase.ROLLED_BACK if ag.on_lost == "rollback" else Phase.PAUSED
        if not lost or (paused and target == Phase.PAUSED):
            return False
        t = request_transition(session, m.id, target, actor="auto", now=now, holder=self.holder,
                               reason=f"{lost_reason(lost, ag.lost_after_windows, cfg.window_seconds)} (in {here})",
                               evidence={"lost": {h: last for h, last in lost}})
        res.transition_id, res.target = t.id, t.to_phase
        return True

    # -- the loop ----------------------------------------------------------------------------

    def finish(self, recovering: bool = False) -> Transition | None:
        """Apply and confirm a pending intent (ours or, recovering, a crashed process's, which is
        logged); retried later on timeout."""
        done = recover_transition if recovering else finish_transition
        try:
            return done(self.session_factory, self.migration_id, self.applier, self.clock)
        except ApplyTimeout as exc:
            log.warning("%s", exc)
            return None

    def run(self, *, stop: threading.Event | None = None, deadline: float | None = None,
            poll_interval: float | None = None, on_step: Callable[[StepResult], None] | None = None,
            standby: Callable[[LeaseHeld], None] | None = None,
            on_lease: Callable[[str | None], None] | None = None) -> str:
        """Lease, recover, then step until a final phase, `stop`, or `deadline` (clock time). Returns the phase.

        Database errors that can heal (disk full, locked, server gone, I/O error) are ridden out:
        the round's transaction is rolled back whole, one line is logged per outage, and the round
        is retried with back-off (BACKOFF_START doubling to BACKOFF_MAX s). Errors that cannot heal
        (a missing table or column, a database at another revision) raise a StoreError.

        standby: without it, a lease another live controller holds raises LeaseHeld. With it, this
        controller waits as a standby instead: `standby(exc)` is called once per holder it waits
        for, the lease is tried again every `standby_poll` s, and it is taken over when it lapses
        or its holder is a dead process on this host. A lease lost mid-run (taken over after we
        stalled past its expiry) sends us back to standing by. Nothing is written while standing
        by: the half-done transition a dead holder left is finished only once the lease is ours.

        on_lease(previous holder or None): called each time the lease becomes ours, before the
        half-done transition is finished (`migrator start` starts the migration and its services
        there, so a standby touches nothing before it is the active controller).
        """
        stop = stop or threading.Event()
        sf = self.session_factory
        outage = _Outage(sf)
        interval = poll_interval
        phase = None
        leased = False  # the lease row is ours (released on the way out)
        ready = False   # ... and what a predecessor left half-done is finished
        waiting_for: str | None = None  # the holder we stand by for
        try:
            while not stop.is_set() and (deadline is None or self.clock() < deadline):
                try:
                    outage.check_schema()
                    if not ready:
                        with sf() as s, s.begin():
                            previous = acquire_lease(s, self.migration_id, self.holder, self.clock(),
                                                     self.lease_seconds)
                            m = s.get(Migration, self.migration_id)
                            phase = m.phase
                            if interval is None:
                                interval = min(1.0, self.config(m).window_seconds / 4)
                        leased = True
                        previous = previous or waiting_for
                        if previous is not None:
                            log.warning("migration %d: this controller (%s) took the lease over from %s",
                                        self.migration_id, self.holder, previous,
                                        extra={"migration_id": self.migration_id})
                        waiting_for = None
                        if on_lease:
                            on_lease(previous)
                        self.finish(recovering=True)
                        ready = True
                    now = self.clock()
                    with sf() as s, s.begin():  # one transaction: an error rolls the whole round back
                        acquire_lease(s, self.migration_id, self.holder, now, self.lease_seconds)
                        res = self.step(s, now)
                    if res.transition_id is not None:
                        log_transition(self.finish(), self.migration_id)
                    with sf() as s:
                        phase = s.get(Migration, self.migration_id).phase
                except IntegrityError:
                    raise  # a bug or a race in our own writes, not an outage
                except (OperationalError, DatabaseError) as exc:
                    if not transient_db_error(exc):
                        raise self._fatal(exc) from exc
                    stop.wait(outage.failed(exc))
                    continue
                except LeaseHeld as exc:
                    if standby is None:
                        raise
                    outage.ok()
                    if ready:
                        log.warning("migration %d: lost the lease to %s; standing by",
                                    self.migration_id, exc.holder, extra={"migration_id": self.migration_id})
                    leased = ready = False
                    if exc.holder != waiting_for:
                        waiting_for = exc.holder
                        standby(exc)
                    with sf() as s:
                        phase = s.get(Migration, self.migration_id).phase
                    if phase in FINAL:
                        break  # the holder finished it: nothing left to stand by for
                    stop.wait(self.standby_poll)
                    continue
                outage.ok()
                if on_step:
                    on_step(res)
                if phase in FINAL:
                    break
                stop.wait(interval)
        finally:
            if leased:
                try:
                    with sf() as s, s.begin():
                        release_lease(s, self.migration_id, self.holder)
                except (OperationalError, DatabaseError) as exc:  # it expires by itself
                    log.warning("could not release the lease (it expires in %g s): %s", self.lease_seconds,
                                " ".join(str(getattr(exc, "orig", None) or exc).split()))
        if phase is None:  # stopped before the first round got through
            from migrator.store.guard import database_errors

            with database_errors(sf), sf() as s:
                phase = s.get(Migration, self.migration_id).phase
        return phase

    @property
    def standby_poll(self) -> float:
        """How often a standby tries the lease: a tenth of its length, between 0.2 and 1 s."""
        return max(0.2, min(1.0, self.lease_seconds / 10))

    def _fatal(self, exc: BaseException) -> StoreError:
        """The error to give up with for a database error that waiting cannot heal."""
        from migrator.store.guard import translate

        err = translate(exc, self.session_factory)
        return StoreError(f"database {err.url}: its schema is not what this migrator expects ({err.problem}) "
                          "(fix: run `migrator init` with this migrator to upgrade it, or use the migrator "
                          "that created it)")


def log_transition(t: Transition | None, migration_id: int) -> None:
    """One INFO line per transition this process applied and confirmed: from, to, who, why."""
    if t is not None:
        log.info("migration %d: %s -> %s (%s: %s)", migration_id, label(t.from_phase, t.from_slice),
                 label(t.to_phase, t.to_slice), t.actor, t.reason,
                 extra={"migration_id": migration_id, "transition_id": t.id})


def start_migration(session_factory: sessionmaker[Session], migration_id: int, *, schema_fingerprint: str,
                    applier: ModeApplier | None = None, clock: Callable[[], float] = time.time) -> None:
    """PLANNED -> DUAL_INSTRUMENT, freezing the schema fingerprint; a no-op when already started."""
    applier = applier or DbApplier()
    recover_transition(session_factory, migration_id, applier, clock)
    with session_factory() as s, s.begin():
        m = lock_migration(s, migration_id)
        if m.phase != Phase.PLANNED:
            return
        request_transition(s, migration_id, Phase.DUAL_INSTRUMENT, actor="manual", now=clock(),
                           reason=f"start (schema fingerprint {schema_fingerprint})",
                           schema_fingerprint=schema_fingerprint)
    log_transition(finish_transition(session_factory, migration_id, applier, clock), migration_id)


def run_controller(session_factory: sessionmaker[Session], migration_id: int, *, applier: ModeApplier | None = None,
                   stop: threading.Event | None = None, deadline: float | None = None,
                   poll_interval: float | None = None, holder: str | None = None, lease_seconds: float = 15.0,
                   grace_windows: float = 2.0, clock: Callable[[], float] = time.time,
                   on_step: Callable[[StepResult], None] | None = None,
                   standby: Callable[[LeaseHeld], None] | None = None,
                   on_lease: Callable[[str | None], None] | None = None) -> str:
    """Run the controller loop in-process until the migration is final, `stop` is set or `deadline` passes.

    standby / on_lease: see Controller.run (wait for a held lease instead of raising LeaseHeld)."""
    ctl = Controller(session_factory, migration_id, applier=applier, holder=holder, lease_seconds=lease_seconds,
                     grace_windows=grace_windows, clock=clock)
    return ctl.run(stop=stop, deadline=deadline, poll_interval=poll_interval, on_step=on_step,
                   standby=standby, on_lease=on_lease)


__all__ = ["Controller", "StepResult", "run_controller", "start_migration", "acquire_lease", "release_lease",
           "MigratorError", "PASS", "BREACH", "NO_DATA"]
