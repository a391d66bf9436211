"""Payload comparison of the two channels in DUAL: the ring record of a seq against perf's.

In DUAL one emission goes to both channels with one seq (bpf/migrator.h), so the two payloads
of a seq must be byte-identical; a difference means the ring path corrupts what it carries.
Every record emitted in DUAL (its header's mode bits) gets a 64-bit digest of its payload
bytes and length (`digests`; the pairing hashes in the same native pass). A digest waits in a fixed,
direct-mapped table (slot = seq mod capacity) until the record of the same seq arrives on the
other channel; then the two digests are compared and the slot is freed. A record seen on one
channel only (the other copy was dropped, lost, or not read yet when a later seq took its
slot) is never a mismatch: it is simply not compared. Memory is bounded by the capacity
(17 bytes a slot), whatever the channels do.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from migrator.dataplane.frames import FLAG_MODE_MASK, Frames
from migrator.dataplane.native import addr, lib
from migrator.shared.vocab import MODE_VALUES

DUAL = MODE_VALUES["DUAL"]
SIDES = {"perf": 1, "ring": 2}  # table side codes; 0 is an empty slot
DEFAULT_CAPACITY = 1 << 18  # above the records a default 16 MiB ring holds at ~64 bytes each


def digests(frames: Frames) -> np.ndarray:
    """One uint64 per record: a digest of its payload bytes and its length, a pure function of
    both (native.c mg_digests gives the formula: a position-weighted sum of mixed 64-bit words,
    so a change confined to one word always changes it). Equal digests are all the comparison
    asks, so the same function on both channels is all that matters."""
    n = len(frames)
    out = np.empty(n, np.uint64)
    if n:
        hdr = frames.hdr
        off = np.ascontiguousarray(frames.off, dtype=np.int64)
        lib().mg_digests(addr(frames.buf), addr(off), addr(hdr), hdr.strides[0], n, addr(out))
    return out


@dataclass
class CompareCounts:
    """What the comparison saw since the last take: pairs compared, and how many differed."""

    compared: int = 0
    mismatches: int = 0
    mismatch_seqs: tuple[int, ...] = ()  # the first few differing seqs, as evidence
    skipped: int = 0  # DUAL records not hashed because the consumer was behind (see PayloadCompare)


class PayloadCompare:
    """Pairs the DUAL records of both channels by seq and counts payloads that differ.

    The comparison is a measurement and must never cost the acting channel a record: `room`
    (when given) is asked before a batch is hashed, and while it says the consumer is behind
    (a buffer filling up) the batch's DUAL records are only counted as skipped. A skipped
    record's copy on the other channel then finds no pair: not compared, never a mismatch.
    The hashing and the pairing are one native pass over all the batches of a measuring pass
    (native.c mg_pair), in consumption order.
    """

    EVIDENCE = 8

    def __init__(self, capacity: int = DEFAULT_CAPACITY, room: Callable[[], bool] | None = None) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity}")
        self.capacity = capacity
        self.room = room
        self._seq: np.ndarray | None = None  # allocated at the first DUAL record
        self._dig: np.ndarray | None = None
        self._side: np.ndarray | None = None
        self.counts = CompareCounts()
        self.unpaired_evicted = 0  # digests overwritten before their pair arrived (total)
        self._scratch = np.empty(0, np.uint8)  # mg_pair's: a byte per record of the largest batch
        self._out = np.zeros(5 + self.EVIDENCE, np.int64)

    def _alloc(self) -> None:
        self._seq = np.zeros(self.capacity, np.uint64)
        self._dig = np.zeros(self.capacity, np.uint64)
        self._side = np.zeros(self.capacity, np.uint8)

    def add(self, channel: str, frames: Frames, room: bool | None = None) -> int:
        """Take one drained batch of `channel`; returns the mismatches it completed. `room`: whether
        the consumer had room to hash it (None: ask self.room now)."""
        before = self.counts.mismatches
        self.add_many([(channel, frames, room)])
        return self.counts.mismatches - before

    def add_many(self, items: list[tuple[str, Frames, bool | None]]) -> None:
        """Take drained batches (channel, frames, whether the consumer had room when it drained
        them; None: ask self.room now) in consumption order, as add() would one by one: per batch,
        its records that find their other copy waiting are compared, then the rest wait."""
        desc, held = [], []
        for channel, frames, room in items:
            n = len(frames)
            if not n:
                continue
            if room is None:
                room = self.room is None or self.room()
            hdr = frames.hdr
            if self._side is None:  # no table until a DUAL record needs one (a PERF-only feed)
                if not ((hdr["flags"] & FLAG_MODE_MASK) == DUAL).any():
                    continue
                self._alloc()
            off = np.ascontiguousarray(frames.off, dtype=np.int64)
            held.append(off)
            desc.append((addr(hdr), hdr.strides[0], n, addr(frames.buf), addr(off), SIDES[channel], int(bool(room))))
        if not desc:
            return
        largest = max(d[2] for d in desc)
        if len(self._scratch) < largest:
            self._scratch = np.empty(largest, np.uint8)
        c, out = self.counts, self._out
        d = np.array(desc, np.int64)
        lib().mg_pair(len(desc), addr(d), addr(self._seq), addr(self._dig), addr(self._side), self.capacity - 1,
                      addr(self._scratch), self.EVIDENCE - len(c.mismatch_seqs), addr(out))
        compared, mismatches, skipped, evicted, found = out[:5].tolist()
        c.compared += compared
        c.mismatches += mismatches
        c.skipped += skipped
        self.unpaired_evicted += evicted
        if found:
            c.mismatch_seqs += tuple(out[5:5 + found].tolist())

    def take(self) -> CompareCounts:
        """The counts since the last take (for one window's books); they restart from zero."""
        c, self.counts = self.counts, CompareCounts()
        return c
