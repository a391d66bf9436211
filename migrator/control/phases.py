"""The phase machine: legal moves, guards, desired modes, and intent -> apply -> confirm.

PLANNED -> DUAL_INSTRUMENT -> SHADOW -> CANARY (slice 1..K, in order) -> COMPLETE;
ROLLED_BACK from DUAL_INSTRUMENT, SHADOW, CANARY (or PAUSED); PAUSED from those three and back
to exactly where it paused; ABORTED from any non-final phase. Final: COMPLETE, ROLLED_BACK, ABORTED.

A transition is never one transaction, because the kernel side sits in the middle:
  1. `request_transition` writes the intent row (desired modes included) in the caller's session;
     the caller commits it before anything is applied.
  2. `finish_transition` applies the modes through a ModeApplier (idempotent), then
  3. `confirm_transition` marks the row confirmed and moves the migration's phase, in one
     transaction, guarded by `status = 'intent'` so it happens exactly once.
A crash anywhere leaves at most one intent row, which the next writer re-applies and confirms.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable, Protocol

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator.errors import (
    ApplyTimeout,
    GuardFailed,
    MigratorError,
    StoreError,
    TransitionNotAllowed,
    TransitionPending,
)
from migrator.store.models import Host, Migration, Transition
from migrator.store.push import announce, perf_payload
from migrator.store.hostlease import host_outcomes
from migrator.shared.vocab import FINAL, MEASURED, Phase


log = logging.getLogger("migrator.control.phases")

LEGAL: dict[Phase, frozenset[Phase]] = {
    Phase.PLANNED: frozenset({Phase.DUAL_INSTRUMENT, Phase.ABORTED}),
    Phase.DUAL_INSTRUMENT: frozenset({Phase.SHADOW, Phase.ROLLED_BACK, Phase.PAUSED, Phase.ABORTED}),
    Phase.SHADOW: frozenset({Phase.CANARY, Phase.ROLLED_BACK, Phase.PAUSED, Phase.ABORTED}),
    Phase.CANARY: frozenset({Phase.CANARY, Phase.COMPLETE, Phase.ROLLED_BACK, Phase.PAUSED, Phase.ABORTED}),
    # From PAUSED only back to the phase it paused (checked in check_transition), or out.
    Phase.PAUSED: frozenset({Phase.DUAL_INSTRUMENT, Phase.SHADOW, Phase.CANARY, Phase.ROLLED_BACK, Phase.ABORTED}),
    Phase.COMPLETE: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.ABORTED: frozenset(),
}

# `migrator undo`: the one way out of COMPLETE, taken only when asked for by name (the machine,
# the controller and `rollback` still see COMPLETE as final). Every host goes back to PERF, which
# the channel header still writes after COMPLETE (RING is a mode, not a rebuilt program).
UNDO = (Phase.COMPLETE, Phase.ROLLED_BACK)

# Moves that need the phase's evidence: min clean windows, fingerprint, manual gate.
FORWARD = {(Phase.DUAL_INSTRUMENT, Phase.SHADOW), (Phase.SHADOW, Phase.CANARY),
           (Phase.CANARY, Phase.CANARY), (Phase.CANARY, Phase.COMPLETE)}


def label(phase: str, slice_: int = 0, slices: int = 0) -> str:
    """Human name of a phase position, e.g. 'CANARY slice 2/3'."""
    if phase == Phase.CANARY and slice_:
        return f"CANARY slice {slice_}/{slices}" if slices else f"CANARY slice {slice_}"
    return str(phase)


def check_transition(current: str, target: str, *, slice_: int = 0, to_slice: int = 0,
                     slices: int = 1, paused_phase: str | None = None, paused_slice: int | None = None,
                     undo: bool = False) -> None:
    """Raise TransitionNotAllowed unless current -> target is a legal move of the machine
    (undo=True: only COMPLETE -> ROLLED_BACK, see UNDO)."""
    cur, tgt = Phase(current), Phase(target)
    here, there = label(cur, slice_, slices), label(tgt, to_slice, slices)
    if undo:
        if (cur, tgt) != UNDO:
            raise TransitionNotAllowed(here, "undo", f"undo only leaves COMPLETE; from {cur} use `migrator rollback`"
                                       if cur not in FINAL else f"{cur} is final")
        return
    if tgt not in LEGAL[cur]:
        if cur in FINAL:
            raise TransitionNotAllowed(here, there, f"{cur} is final")
        allowed = ", ".join(sorted(LEGAL[cur]))
        raise TransitionNotAllowed(here, there, f"from {cur} only {allowed}")
    if cur == Phase.PAUSED and tgt in MEASURED:
        if tgt != paused_phase or (tgt == Phase.CANARY and to_slice != paused_slice):
            raise TransitionNotAllowed(here, there, f"resume returns to {label(paused_phase or '?', paused_slice or 0, slices)}")
        return
    if tgt == Phase.CANARY:
        want = slice_ + 1 if cur == Phase.CANARY else 1
        if to_slice != want or want > slices:
            why = (f"CANARY slice {slice_} is the last; next is COMPLETE" if want > slices
                   else f"slices go in order; next is slice {want}")
            raise TransitionNotAllowed(here, there, why)
    if cur == Phase.CANARY and tgt == Phase.COMPLETE and slice_ != slices:
        raise TransitionNotAllowed(here, there, f"slices {slice_ + 1}..{slices} have not run yet")


def next_step(current: str, slice_: int, slices: int) -> tuple[Phase, int]:
    """Where `advance` goes from here."""
    cur = Phase(current)
    if cur == Phase.PLANNED:
        return Phase.DUAL_INSTRUMENT, 0
    if cur == Phase.DUAL_INSTRUMENT:
        return Phase.SHADOW, 0
    if cur == Phase.SHADOW:
        return Phase.CANARY, 1
    if cur == Phase.CANARY:
        return (Phase.CANARY, slice_ + 1) if slice_ < slices else (Phase.COMPLETE, 0)
    why = "resume it first" if cur == Phase.PAUSED else f"{cur} is final"
    raise TransitionNotAllowed(label(cur, slice_, slices), "the next phase", why)


def modes_for(phase: str, slice_: int, hosts: list[tuple[str, int]]) -> dict[str, str]:
    """Desired mode per host at a phase position; {} for PAUSED (hosts keep what they have).

    `hosts` are (name, first slice that moves it to RING). In CANARY slice k the hosts of slices
    1..k run RING as primary and every other host stays PERF, the untouched baseline.
    """
    ph = Phase(phase)
    if ph == Phase.PAUSED:
        return {}
    if ph in (Phase.DUAL_INSTRUMENT, Phase.SHADOW):
        return {h: "DUAL" for h, _ in hosts}
    if ph == Phase.CANARY:
        return {h: ("RING" if s <= slice_ else "PERF") for h, s in hosts}
    if ph == Phase.COMPLETE:
        return {h: "RING" for h, _ in hosts}
    return {h: "PERF" for h, _ in hosts}


def slice_count(session: Session, migration_id: int) -> int:
    """How many canary slices the migration's plan has (0 before any are recorded)."""
    from migrator.store.models import Slice
    rows = session.scalars(select(Slice.number).where(Slice.migration_id == migration_id)).all()
    return max(rows, default=0)


def lock_migration(session: Session, migration_id: int) -> Migration:
    """The migration row, locked for update where the backend supports it (SQLite: BEGIN IMMEDIATE).

    PostgreSQL: FOR NO KEY UPDATE, which serializes the writers of the row (controllers, manual moves)
    as FOR UPDATE does, but not against the FOR KEY SHARE every agent's window INSERT takes on the
    row its foreign key names. With FOR UPDATE each controller round queued behind the agents'
    open transactions (bench fleet, 200 hosts: 250 ms per lock, most of a rollback's delay)."""
    m = session.scalars(select(Migration).where(Migration.id == migration_id)
                        .with_for_update(key_share=True)).one_or_none()
    if m is None:
        raise StoreError(f"no migration {migration_id} in this database; run `migrator init`")
    return m


def check_guards(m: Migration, target: Phase, *, actor: str, min_clean: int, manual_gate: bool,
                 slices: int, to_slice: int) -> None:
    """Raise GuardFailed when a forward move lacks evidence, has a changed schema, or waits for an operator."""
    cur = Phase(m.phase)
    if (cur, target) not in FORWARD:
        return
    here, there = label(cur, m.slice, slices), label(target, to_slice, slices)
    if m.reported_fingerprint and m.reported_fingerprint != m.schema_fingerprint:
        raise GuardFailed(here, there, "schema_fingerprint",
                          f"event schema changed since DUAL_INSTRUMENT: frozen {m.schema_fingerprint!r}, "
                          f"now {m.reported_fingerprint!r}; roll back or abort")
    if m.clean_windows < min_clean:
        raise GuardFailed(here, there, "min_clean_windows",
                          f"{m.clean_windows} of {min_clean} clean windows so far")
    if manual_gate and actor != "manual":
        raise GuardFailed(here, there, "manual_gate", "waiting for `migrator advance`")


def request_transition(session: Session, migration_id: int, target: str, *, to_slice: int = 0,
                       actor: str = "manual", reason: str = "", window_ids: list[int] | None = None,
                       evidence: dict | None = None, now: float | None = None, holder: str = "",
                       min_clean: int = 0, manual_gate: bool = False,
                       schema_fingerprint: str | None = None, undo: bool = False) -> Transition:
    """Check the move and its guards, then add the intent row; the caller commits it. Never applies.

    schema_fingerprint: frozen on the migration when the move leaves PLANNED for DUAL_INSTRUMENT
    (`start` and `advance` alike), in the same transaction as the intent. undo: COMPLETE -> ROLLED_BACK
    (`migrator undo`), the only move out of COMPLETE."""
    m = lock_migration(session, migration_id)
    if m.pending_transition_id is not None:
        t = session.get(Transition, m.pending_transition_id)
        raise TransitionPending(migration_id, m.pending_transition_id,
                                f"{t.from_phase} -> {t.to_phase}" if t else "?")
    slices = slice_count(session, migration_id)
    tgt = Phase(target)
    check_transition(m.phase, tgt, slice_=m.slice, to_slice=to_slice, slices=slices,
                     paused_phase=m.paused_phase, paused_slice=m.paused_slice, undo=undo)
    check_guards(m, tgt, actor=actor, min_clean=min_clean, manual_gate=manual_gate,
                 slices=slices, to_slice=to_slice)
    if schema_fingerprint is not None and m.phase == Phase.PLANNED and tgt == Phase.DUAL_INSTRUMENT:
        m.schema_fingerprint = schema_fingerprint
    hosts = session.execute(select(Host.name, Host.slice).where(Host.migration_id == migration_id)
                            .order_by(Host.position)).all()
    modes = modes_for(tgt, to_slice, [(h, s) for h, s in hosts])
    t = Transition(migration_id=migration_id, from_phase=m.phase, from_slice=m.slice,
                   to_phase=str(tgt), to_slice=to_slice, actor=actor, reason=reason,
                   window_ids=json.dumps(window_ids or []), evidence=json.dumps(evidence or {}),
                   modes=json.dumps(modes), status="intent",
                   created_at=time.time() if now is None else now, holder=holder)
    session.add(t)
    session.flush()
    m.pending_transition_id = t.id
    return t


def confirm_transition(session: Session, migration_id: int, transition_id: int, now: float) -> bool:
    """Confirm an applied intent and move the phase, in the caller's transaction; False if already done."""
    res = session.execute(update(Transition)
                          .where(Transition.id == transition_id, Transition.status == "intent")
                          .values(status="confirmed", confirmed_at=now))
    if res.rowcount != 1:
        return False
    t = session.get(Transition, transition_id)
    m = lock_migration(session, migration_id)
    # Confirmed per host: a lost or dead host is recorded as lost, never as confirmed (store/hostlease.py).
    t.host_status = json.dumps(host_outcomes(session, m, json.loads(t.modes), now))
    tgt = Phase(t.to_phase)
    keep_evidence = tgt == Phase.PAUSED or Phase(m.phase) == Phase.PAUSED
    if tgt == Phase.PAUSED:
        m.paused_phase, m.paused_slice = m.phase, m.slice
    elif Phase(m.phase) == Phase.PAUSED:
        m.paused_phase, m.paused_slice = None, None
    m.phase, m.slice = str(tgt), t.to_slice
    m.pending_transition_id = None
    announce(session, migration_id, "phase")  # PostgreSQL: the links read phase and settled now (a pause moves no mode)
    if not keep_evidence:
        # A new phase or slice proves itself from scratch; pausing must not wipe a breach streak.
        m.phase_since = now
        m.streak, m.streak_window_ids, m.clean_windows = 0, "[]", 0
    return True


class ModeApplier(Protocol):
    """Puts the desired mode on each host's kernel side; must be idempotent (it is re-run after a crash)."""

    def apply(self, session_factory: sessionmaker[Session], migration_id: int, modes: dict[str, str]) -> None:
        """Put `modes` (host -> PERF/DUAL/RING) in effect on the hosts; safe to repeat after a crash."""


class DbApplier:
    """Writes hosts.desired_mode for the agents; with confirm_timeout, waits until they report it applied."""

    def __init__(self, confirm_timeout: float | None = None, poll_interval: float = 0.05) -> None:
        self.confirm_timeout, self.poll_interval = confirm_timeout, poll_interval

    def apply(self, session_factory: sessionmaker[Session], migration_id: int, modes: dict[str, str]) -> None:
        """Set the hosts' desired modes for their agents; with confirm_timeout, wait until each reports it applied."""
        if not modes:
            return
        with session_factory() as s, s.begin():
            s.connection().execute(
                update(Host.__table__)
                .where(Host.__table__.c.migration_id == migration_id, Host.__table__.c.name == bindparam("h"))
                .values(desired_mode=bindparam("m")),
                [{"h": h, "m": mode} for h, mode in modes.items()],
            )
            # PostgreSQL: the hosts' links read the new modes at commit; a move to PERF alone is
            # put in force before that read (store/push.py).
            what = "modes"
            if set(modes.values()) == {"PERF"}:
                every = s.scalar(select(func.count()).select_from(Host)
                                 .where(Host.migration_id == migration_id)) == len(modes)
                what = perf_payload(sorted(modes), every)
            announce(s, migration_id, what)
        if self.confirm_timeout is None:
            return
        deadline = time.monotonic() + self.confirm_timeout
        while True:
            with session_factory() as s:
                applied = dict(s.execute(select(Host.name, Host.applied_mode)
                                         .where(Host.migration_id == migration_id)).all())
            waiting = sorted(h for h, mode in modes.items() if applied.get(h) != mode)
            if waiting:  # a lost or dead host is not waited for: the transition records it as lost
                with session_factory() as s:
                    found = host_outcomes(s, s.get(Migration, migration_id), {h: modes[h] for h in waiting},
                                          time.time())
                waiting = [h for h in waiting if found.get(h, {}).get("status") != "lost"]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ApplyTimeout(migration_id, waiting, self.confirm_timeout)
            time.sleep(self.poll_interval)


# A drill hook: called with ("before_apply" | "before_confirm", transition id) so crash drills can
# park a process between two steps of a transition and kill it there. None in production.
StepHook = Callable[[str, int], None]


def finish_transition(session_factory: sessionmaker[Session], migration_id: int, applier: ModeApplier,
                      clock=time.time, step_hook: StepHook | None = None) -> Transition | None:
    """Apply and confirm the migration's pending intent, if any; the same path serves crash recovery."""
    with session_factory() as s, s.begin():
        m = s.get(Migration, migration_id)
        if m is None:
            raise StoreError(f"no migration {migration_id} in this database")
        if m.pending_transition_id is None:
            return None
        t = s.get(Transition, m.pending_transition_id)
        modes = json.loads(t.modes)
    if step_hook:
        step_hook("before_apply", t.id)
    if modes:  # PAUSED changes nothing on the hosts
        applier.apply(session_factory, migration_id, modes)
    if step_hook:
        step_hook("before_confirm", t.id)
    with session_factory() as s, s.begin():
        confirm_transition(s, migration_id, t.id, clock())
    return t


def recover_transition(session_factory: sessionmaker[Session], migration_id: int, applier: ModeApplier,
                       clock=time.time) -> Transition | None:
    """finish_transition for what another process (most often a crashed one) left half-done, before
    this one writes anything: one WARNING line names the transition it finished, who wrote it, when."""
    t = finish_transition(session_factory, migration_id, applier, clock)
    if t is not None:
        now = clock()
        log.warning("migration %d: finished transition %d (%s -> %s, %s: %s) left half-done by %s since %s "
                    "(%.1f s ago): modes applied, confirmed", migration_id, t.id, label(t.from_phase, t.from_slice),
                    label(t.to_phase, t.to_slice), t.actor, t.reason, t.holder or "a manual command",
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created_at)), now - t.created_at,
                    extra={"migration_id": migration_id, "transition_id": t.id})
    return t


def transition(session_factory: sessionmaker[Session], migration_id: int, target: str, *,
               applier: ModeApplier, clock=time.time, step_hook: StepHook | None = None, **kw) -> Transition:
    """Finish any pending intent, then request, apply and confirm one move (manual commands use this)."""
    recover_transition(session_factory, migration_id, applier, clock)
    with session_factory() as s, s.begin():
        t = request_transition(s, migration_id, target, now=clock(), **kw)
    finish_transition(session_factory, migration_id, applier, clock, step_hook)
    return t


__all__ = ["Phase", "FINAL", "MEASURED", "LEGAL", "UNDO", "check_transition", "next_step", "modes_for",
           "request_transition", "confirm_transition", "finish_transition", "recover_transition", "transition",
           "ModeApplier", "DbApplier", "MigratorError"]
