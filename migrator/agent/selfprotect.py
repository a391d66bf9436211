"""A host that protects itself: the rollback rule applied by the agent to its own ring windows.

The controller's rollback goes agent -> database -> controller -> database -> agent, tens of
milliseconds, and not at all while the database is unreachable. So every Feed (the agent's and
the library's alike) also judges its own ring window at each close, with the controller's own
code (control/policy.py: judge_host, next_streak; same thresholds, same `no_data` handling):

* Armed only while the host acts on the ring (mode RING) and the migration, as last read, is not
  final. Windows closed in another mode restart the streak (the host was not on the ring).
* The streak lives within one phase position, as the controller's does: it counts only ring
  windows that started at or after the position's confirmation (the migration's phase_since, as
  the link last read it: `position`), and a new position starts it from 0. A window that started
  before the confirmation (the host switched to RING while the transition was being applied) is
  recorded under the previous position, which the controller never judged on the ring: it never
  counts here either. `what-if` replays this same class over the stored windows, grouped by the
  position they were recorded in (control/policy.py: what_if).
* Local rules: the absolute ones (loss rate, lag p99, inversions, parse errors, payload
  mismatches). The comparative ones (loss delta, lag / CPU ratio against the PERF hosts) need
  other hosts' windows; the controller still applies them.
* When the streak reaches `rollback_after`, the Feed writes PERF into the mode map at once,
  through the same exactly-once handover as any switch, and records a Protection: which rules,
  which windows (named `#n` as in every view when the host knows the migration's first window
  index, from the link's Desired; otherwise without indexes). The deciding ring window carries it
  in extra["self_protect"], and the link writes it to the database as a verdict of scope "self"
  (queued while the database is down).
  The controller turns it into ONE transition to ROLLED_BACK with this reason.

The hold: a self-protected host stays on PERF whatever desired_mode says, until the migration's
next confirmed transition after the protection (by its confirmed_at against the protection's
time: the controller's ROLLED_BACK, or an operator's move such as `migrator pause` then
`migrator resume`), or until the migration is final. The controller ignores a host report older
than the last confirmed transition by the same comparison, so an operator's resume both releases
the host and retires its report.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from migrator.config import Thresholds
from migrator.control.policy import HostBreaker, StreakState
from migrator.control.story import window_name
from migrator.shared.records import ChannelWindow
from migrator.shared.vocab import FINAL


@dataclass
class Protection:
    """Why and when a host put itself on PERF: the host's reason, as reported to the database."""

    host: str
    at: float  # wall time of the decision
    window_end: float  # end of the deciding window (its epoch ended: dataplane/pipeline.py)
    closed_at: float  # when its books were final (one RCU grace period later): the earliest it can be judged
    indexes: list[int]  # the ring windows of the streak, oldest first (the last one decided)
    rules: list[str]  # the rule(s) each of those windows broke, same order
    rollback_after: int
    values: dict = field(default_factory=dict)  # the deciding window's numbers, as judge_host gives them
    read_back: float | None = None  # wall time the mode map read PERF
    # The migration's first window index as the host last read it (None: unknown), to name windows `#n`.
    first_index: int | None = None

    @property
    def names(self) -> list[str]:
        """The streak's windows named as every view names them (`#n`, control/story.py), or [] when
        the host does not know the migration's first index (a raw index names no window for people)."""
        if self.first_index is None:
            return []
        return [window_name(i, self.first_index) for i in self.indexes]

    @property
    def reason(self) -> str:
        """One line for the transition: which rules, which windows (by their `#n` names, when known;
        `history` names the transition's windows in any case)."""
        last = self.rules[-1] if self.rules else "?"
        which = f"{' '.join(self.names)}, " if self.names else ""
        return (f"{self.host} protected itself: {len(self.indexes)} consecutive breaching ring windows "
                f"({which}rollback_after {self.rollback_after}); last: {self.host}: {last}")

    def as_dict(self) -> dict:
        """The plain dict the window extra and the database carry."""
        return {"host": self.host, "at": self.at, "window_end": self.window_end, "closed_at": self.closed_at,
                "indexes": list(self.indexes),
                "rules": list(self.rules), "rollback_after": self.rollback_after, "values": self.values,
                "read_back": self.read_back, "first_index": self.first_index, "names": self.names,
                "reason": self.reason}


class SelfProtect:
    """The local rollback rule of one host, kept across windows (and across program reloads)."""

    def __init__(self, host: str, thresholds: Thresholds, rollback_after: int, no_data: str,
                 position: Callable[[], object] | None = None) -> None:
        self.host, self.thresholds = host, thresholds
        self.rollback_after, self.no_data = rollback_after, no_data
        # What the database asks now (agent/link.py: Desired, or None): its phase_since is the
        # confirmation of the phase position the streak lives in. None: every RING window counts.
        self.position = position
        self._since: float | None = None  # the phase_since of the position being counted
        self.breaker = HostBreaker(host, thresholds, rollback_after, no_data)  # the rule what-if replays
        self.held: Protection | None = None
        self.protections: list[Protection] = []  # every firing, oldest first

    @classmethod
    def from_config(cls, host: str, cfg, position: Callable[[], object] | None = None) -> "SelfProtect":
        """The rule with the migration's thresholds, rollback_after and no_data."""
        return cls(host, cfg.thresholds, cfg.rollback_after, cfg.no_data, position)

    def observe(self, ring: ChannelWindow, phase: str | None, closed_at: float | None = None) -> Protection | None:
        """Judge one closed ring window (its books final at closed_at, default now); a Protection
        when this window brings the streak to N."""
        if self.held is not None:
            return None
        desired = self.position() if self.position is not None else None
        since = getattr(desired, "phase_since", None)
        if since is not None and since != self._since:  # a new phase position: a new streak
            self._since = since
            self.breaker.reset()
        if since is not None and ring.start < since:
            return None  # started before this position was confirmed: not this position's window
        if phase is not None and phase in FINAL:
            self.breaker.reset()
            return None
        v, streak = self.breaker.step(ring)
        if streak is None:
            return None
        now = time.time()
        p = Protection(self.host, now, ring.end, closed_at if closed_at is not None else now,
                       [i for i, _, _ in streak], [r for _, r, _ in streak], self.rollback_after, dict(v.values),
                       first_index=getattr(desired, "first_index", None))
        self.held = p
        self.protections.append(p)
        return p

    @property
    def state(self) -> StreakState:
        """The streak counted so far in this position."""
        return self.breaker.state

    def holding(self, phase: str | None, last_confirmed_at: float | None) -> bool:
        """Whether the host must stay on PERF now; releases the hold once the migration moved on."""
        if self.held is None:
            return False
        if (phase is not None and phase in FINAL) or (
                last_confirmed_at is not None and last_confirmed_at > self.held.at):
            self.held = None
            return False
        return True
