"""Exactly once downstream across channel switches: which channel owns which sequence numbers.

Both channels of a MIGRATOR_CHANNEL carry one per-channel sequence. A switch of the acting
channel always passes through DUAL (the kernel writes every record to both) and cuts at a seq
S read from the sequence map while in DUAL: the old channel owns every seq below S, the new one
every seq from S on. Owners are kept as cut points, so any number of switches (PERF -> RING ->
PERF -> RING ...) leaves every seq owned by exactly one channel, and a record is delivered only
by its owner: nothing is delivered twice, and nothing the kernel wrote to its owner is skipped.

Why this needs no timing assumption: every record carries the mode it was emitted in (flags bits
0-1, read in the same program run that fetched its seq). A record emitted in PERF or RING exists on
one channel only, so that channel delivers it, whatever its seq. Only a record emitted in DUAL has
two copies, and the seq decides which one is delivered. So a program run that read the old mode
just before a switch, and fetched its seq just after the cut was read, is still delivered exactly
once: from the only channel it went to.

The same rule makes DUAL never worse than perf alone: when perf refuses a DUAL record (full), the
kernel flags its ring copy (FLAG_PERF_LOST; perf is written first), which is then that record's only
copy, so the ring delivers it whoever owns its seq: a "fill" when perf owns it.
"""
from __future__ import annotations

import numpy as np

from migrator.dataplane.frames import FLAG_MODE_MASK, FLAG_PERF_LOST
from migrator.shared.vocab import CHANNELS, MODE_VALUES

DUAL = MODE_VALUES["DUAL"]


class Handover:
    """Owner channel per range of sequence numbers; starts with `acting` owning everything."""

    def __init__(self, acting: str = "perf") -> None:
        if acting not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {acting!r}")
        self.cuts: list[int] = []  # ascending seqs where ownership changes
        self.owners: list[str] = [acting]  # owners[i] owns [cuts[i-1], cuts[i])

    @property
    def acting(self) -> str:
        """The channel that owns every seq from the last cut on."""
        return self.owners[-1]

    def cut(self, seq: int, to: str) -> None:
        """From `seq` on, records are delivered from `to`; earlier ones keep their owners."""
        if to not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {to!r}")
        if to == self.acting:
            return
        if self.cuts and seq < self.cuts[-1]:
            raise ValueError(f"cut at seq {seq} precedes the previous cut at {self.cuts[-1]}")
        self.cuts.append(int(seq))
        self.owners.append(to)

    def by_seq(self, channel: str, seq: np.ndarray) -> np.ndarray:
        """Boolean mask: which of these seqs `channel` owns (the cut points alone)."""
        if len(self.owners) == 1:
            return np.full(len(seq), self.owners[0] == channel)
        idx = np.searchsorted(np.asarray(self.cuts, dtype=np.uint64), seq.astype(np.uint64), side="right")
        return np.asarray([o == channel for o in self.owners])[idx]

    def owned(self, channel: str, seq: np.ndarray, flags: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask: which of these records `channel` delivers: by seq, and, given their header
        flags, every record that is its only copy too (emitted in a one-channel mode, or a ring copy
        of a record perf refused)."""
        mine = self.by_seq(channel, seq)
        if flags is not None:
            mine |= only_copy(channel, flags)
        return mine

    def fills(self, flags: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """Boolean mask over ring records: those delivered in perf's place (perf owns the seq but
        refused the record)."""
        return ((flags & FLAG_PERF_LOST) != 0) & self.by_seq("perf", seq)


def only_copy(channel: str, flags: np.ndarray) -> np.ndarray:
    """Boolean mask: records that are the only copy of their event on `channel`."""
    alone = (flags & FLAG_MODE_MASK) != DUAL
    if channel == "ring":
        alone |= (flags & FLAG_PERF_LOST) != 0
    return alone
