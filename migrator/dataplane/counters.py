"""Kernel-side counters of one channel, and how they enter a window's books."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counters:
    """Kernel-side counters of one channel, summed over CPUs."""

    attempts: int = 0
    ok: int = 0
    full: int = 0
    other: int = 0
    ns: int = 0  # time spent in the timed emits (every MIGRATOR_TIME_EVERY-th seq), ns
    timed: int = 0  # how many emits were timed

    def __sub__(self, o: "Counters") -> "Counters":
        return Counters(self.attempts - o.attempts, self.ok - o.ok, self.full - o.full, self.other - o.other,
                        self.ns - o.ns, self.timed - o.timed)

    @property
    def producer_ns(self) -> float | None:
        """Mean ns one emit on this channel cost the traced code (None: no emit was timed)."""
        return self.ns / self.timed if self.timed > 0 else None

    def losses(self, channel: str) -> "Losses":
        """How this channel's refusals enter the books: dropped by cause, and lost.

        perf's -ENOSPC is the kernel's own "lost" (what PERF_RECORD_LOST reports); a ring
        refusal is a drop, "full" when the ring had no room (-EAGAIN, or no reservation), else "other" (bpf/migrator.h).
        """
        if channel == "perf":
            return Losses(dropped_full=0, dropped_other=self.other, lost=self.full)
        return Losses(dropped_full=self.full, dropped_other=self.other, lost=0)


@dataclass(frozen=True)
class Losses:
    """A channel's undelivered records by cause, as the window books count them."""

    dropped_full: int
    dropped_other: int
    lost: int

    @property
    def dropped(self) -> int:
        """Refusals of both causes together (buffer full and other)."""
        return self.dropped_full + self.dropped_other
