"""Why a migration cannot advance: one reason, derived from the stored rows, for the controller's log,
`status` and the automatic pause ([agents] stall_pause_windows).

A migration in DUAL_INSTRUMENT, SHADOW or CANARY stalls when, in the current phase position (since
its last confirmed move, so a resume starts the count over):

- "schema": an agent reported another event schema fingerprint than the one `start` froze; no
  forward move will pass its guard (roll back or abort, or fix the process that serves the channel);
- "no_agent": no agent has stored a window since the position began;
- "no_data": the last judged windows were no-data (fewer than thresholds.min_events attempts, or a
  needed host sent no window in time), so no clean window can count;
- "gate": the clean windows are in and a manual gate waits for `migrator advance`.

The first that applies is the reason. `windows` says how long it has lasted, in windows: judged
windows since the first one that carried the new fingerprint (schema), window lengths since the
position began (no_agent), trailing no-data windows (no_data). A manual gate never pauses: it is a
wait the plan asked for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migrator.config import Config
from migrator.control.policy import NO_DATA
from migrator.shared.vocab import MEASURED, Phase
from migrator.store.models import Host, Migration, Transition, Verdict, Window

CAUSES = ("schema", "no_agent", "no_data", "gate")


@dataclass(frozen=True)
class Stall:
    """Why the migration cannot advance now, and for how many windows it has not."""

    cause: str  # one of CAUSES
    reason: str  # one line for people: the log, status's phase line, the pause's reason
    windows: int  # how long it has lasted, in windows (see the module's docstring)
    pauses: bool = True  # False for the manual gate: stall_pause_windows never pauses it

    def to_dict(self) -> dict:
        return asdict(self)


# A position's first window starts at or after the position began, and is stored once it has ended
# and its books closed: before two window lengths and a second more, none is expected yet.
FIRST_WINDOW_WINDOWS = 2
FIRST_WINDOW_GRACE_S = 1.0


def position_since(session: Session, m: Migration) -> float:
    """When the current phase position began for stall counting: the last confirmed move (a resume
    too, which keeps phase_since), never before phase_since."""
    last = session.scalar(select(func.max(Transition.confirmed_at)).where(
        Transition.migration_id == m.id, Transition.status == "confirmed"))
    return max(m.phase_since, last or m.phase_since)


def stall_of(session: Session, m: Migration, cfg: Config, now: float, here: str = "",
             clean_windows: int | None = None) -> Stall | None:
    """The stall of migration `m` at `now`, or None when it can advance (or is not measuring: PLANNED,
    PAUSED, final, or a transition being applied). `clean_windows`: the controller's count of this
    round (default: the stored one)."""
    if m.phase not in MEASURED or m.pending_transition_id is not None:
        return None
    here = here or m.phase
    since = position_since(session, m)
    ws = cfg.window_seconds
    if m.reported_fingerprint and m.schema_fingerprint and m.reported_fingerprint != m.schema_fingerprint:
        fp = m.reported_fingerprint
        first = session.scalar(select(func.min(Window.index)).where(
            Window.migration_id == m.id, Window.start >= since,
            Window.extra.like(f'%"schema_fingerprint": "{fp}"%')))
        q = select(func.count()).select_from(Verdict).where(
            Verdict.migration_id == m.id, Verdict.scope == "slice", Verdict.decided_at >= since)
        if first is not None:
            q = q.where(Verdict.index >= first)
        n = session.scalar(q) or 0
        return Stall("schema", f"event schema changed since start: frozen {m.schema_fingerprint}, reported {fp}; "
                               f"no forward move passes its guard in {here} (roll back or abort, or serve the "
                               "frozen schema again and start a new migration)", n)
    any_window = session.scalar(select(Window.id).where(Window.migration_id == m.id, Window.start >= since).limit(1))
    if any_window is None and now - since < FIRST_WINDOW_WINDOWS * ws + FIRST_WINDOW_GRACE_S:
        return None  # the position's first window cannot have closed and been written yet: no stall
    if any_window is None:
        hosts = session.execute(select(Host.name, Host.last_heartbeat).where(Host.migration_id == m.id)
                                .order_by(Host.position)).all()
        silent = [h for h, beat in hosts if beat is None]
        who = (f"no agent has reported yet ({_names(silent)})" if len(silent) == len(hosts) else
               f"no window from any agent since {here} began" + (f"; never reported: {_names(silent)}" if silent else ""))
        return Stall("no_agent", f"waiting for agents: {who} (start `migrator agent -H HOST` on each host, "
                                 "or the process that serves the channel)", max(0, int((now - since) / ws)))
    limit = max(cfg.agents.stall_pause_windows, 100) + 1
    rows = session.execute(select(Verdict.verdict, Verdict.rule).where(
        Verdict.migration_id == m.id, Verdict.scope == "slice", Verdict.decided_at >= since)
        .order_by(Verdict.index.desc()).limit(limit)).all()
    k = 0
    for verdict, _rule in rows:
        if verdict != NO_DATA:
            break
        k += 1
    if k:
        more = "+" if k == limit else ""
        last = "the last window was" if k == 1 else f"the last {k}{more} windows were"
        return Stall("no_data", f"too few events: {last} no-data (last: {rows[0].rule}; "
                                f"fewer than thresholds.min_events = {cfg.thresholds.min_events} attempts, or a host "
                                "sent no window in time); no clean window counts", k)
    rule = cfg.phase_rule(m.phase)
    clean = m.clean_windows if clean_windows is None else clean_windows
    if rule.manual_gate and clean >= rule.min_clean_windows:
        return Stall("gate", f"manual gate: {clean} clean windows in {here}; waiting for `migrator advance`", 0,
                     pauses=False)
    return None


def _names(hosts: list[str], most: int = 5) -> str:
    return ", ".join(hosts[:most]) + (f" and {len(hosts) - most} more" if len(hosts) > most else "")


__all__ = ["Stall", "CAUSES", "stall_of", "position_since", "Phase"]
