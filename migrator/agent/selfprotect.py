"""A host that protects itself: the rollback rule applied by the agent to its own ring windows.

The controller's rollback goes agent -> database -> controller -> database -> agent, tens of
milliseconds, and not at all while the database is unreachable. So every Feed (the agent's and
the library's alike) also judges its own ring window at each close, with the controller's own
code (control/policy.py: judge_host, next_streak; same thresholds, same `no_data` handling):

* Armed only while the host acts on the ring (mode RING) and the migration, as last read, is not
  final. Windows closed in another mode restart the streak (the host was not on the ring).
* Local rules: the absolute ones (loss rate, lag p99, inversions, parse errors, payload
  mismatches). The comparative ones (loss delta, lag / CPU ratio against the PERF hosts) need
  other hosts' windows; the controller still applies them.
* When the streak reaches `rollback_after`, the Feed writes PERF into the mode map at once,
  through the same exactly-once handover as any switch, and records a Protection: which rules,
  which windows. The deciding ring window carries it in extra["self_protect"], and the link
  writes it to the database as a verdict of scope "self" (queued while the database is down).
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
from dataclasses import dataclass, field

from migrator.config import Thresholds
from migrator.control.policy import BREACH, StreakState, judge_host, next_streak
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

    @property
    def reason(self) -> str:
        """One line for the transition: which rules, which windows."""
        last = self.rules[-1] if self.rules else "?"
        return (f"{self.host} protected itself: {len(self.indexes)} consecutive breaching ring windows "
                f"(indexes {self.indexes[0]}..{self.indexes[-1]}, rollback_after {self.rollback_after}); "
                f"last: {self.host}: {last}")

    def as_dict(self) -> dict:
        """The plain dict the window extra and the database carry."""
        return {"host": self.host, "at": self.at, "window_end": self.window_end, "closed_at": self.closed_at,
                "indexes": list(self.indexes),
                "rules": list(self.rules), "rollback_after": self.rollback_after, "values": self.values,
                "read_back": self.read_back, "reason": self.reason}


class SelfProtect:
    """The local rollback rule of one host, kept across windows (and across program reloads)."""

    def __init__(self, host: str, thresholds: Thresholds, rollback_after: int, no_data: str) -> None:
        self.host, self.thresholds = host, thresholds
        self.rollback_after, self.no_data = rollback_after, no_data
        self.state = StreakState()
        self._rules: list[tuple[int, str]] = []  # (index, rule) of each window counted in the streak
        self.held: Protection | None = None
        self.protections: list[Protection] = []  # every firing, oldest first

    @classmethod
    def from_config(cls, host: str, cfg) -> "SelfProtect":
        """The rule with the migration's thresholds, rollback_after and no_data."""
        return cls(host, cfg.thresholds, cfg.rollback_after, cfg.no_data)

    def observe(self, ring: ChannelWindow, phase: str | None, closed_at: float | None = None) -> Protection | None:
        """Judge one closed ring window (its books final at closed_at, default now); a Protection
        when this window brings the streak to N."""
        if self.held is not None:
            return None
        if ring.mode != "RING" or (phase is not None and phase in FINAL):
            self.state, self._rules = StreakState(), []
            return None
        v = judge_host(self.host, ring, None, self.thresholds, expected_mode="RING", relative=True)
        before = self.state.streak
        self.state = next_streak(self.state, v.verdict, ring.index, self.no_data)
        if self.state.streak == 0:
            self._rules = []
        elif self.state.streak > before:
            self._rules.append((ring.index, v.rule if v.verdict == BREACH else f"no data ({v.rule})"))
        if self.state.streak < self.rollback_after:
            return None
        streak = self._rules[-self.rollback_after:]
        now = time.time()
        p = Protection(self.host, now, ring.end, closed_at if closed_at is not None else now,
                       [i for i, _ in streak], [r for _, r in streak], self.rollback_after, dict(v.values))
        self.held = p
        self.protections.append(p)
        self.state, self._rules = StreakState(), []
        return p

    def holding(self, phase: str | None, last_confirmed_at: float | None) -> bool:
        """Whether the host must stay on PERF now; releases the hold once the migration moved on."""
        if self.held is None:
            return False
        if (phase is not None and phase in FINAL) or (
                last_confirmed_at is not None and last_confirmed_at > self.held.at):
            self.held = None
            return False
        return True
