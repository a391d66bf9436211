"""Payload comparison of the two channels in DUAL: the ring record of a seq against perf's.

In DUAL one emission goes to both channels with one seq (bpf/migrator.h), so the two payloads
of a seq must be byte-identical; a difference means the ring path corrupts what it carries.
Every record emitted in DUAL (its header's mode bits) gets a 64-bit digest of its payload
bytes and length, computed per batch in one native call (`digests`). A digest waits in a fixed,
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

from migrator.dataplane.frames import FLAG_MODE_MASK, Frames, concat_headers
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
    """

    EVIDENCE = 8

    def __init__(self, capacity: int = DEFAULT_CAPACITY, room: Callable[[], bool] | None = None) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity}")
        self.capacity = capacity
        self.room = room
        self._mask = np.uint64(capacity - 1)
        self._seq: np.ndarray | None = None  # allocated at the first DUAL record
        self._dig: np.ndarray | None = None
        self._side: np.ndarray | None = None
        self.counts = CompareCounts()
        self.unpaired_evicted = 0  # digests overwritten before their pair arrived (total)
        self._stamp: np.ndarray | None = None  # add_many's scratch: slot -> record index
        self._count = np.empty(0, np.int64)  # 0, 1, 2, ... (reused)

    def _alloc(self) -> None:
        self._seq = np.zeros(self.capacity, np.uint64)
        self._dig = np.zeros(self.capacity, np.uint64)
        self._side = np.zeros(self.capacity, np.uint8)

    def add(self, channel: str, frames: Frames, room: bool | None = None) -> int:
        """Take one drained batch of `channel`; returns the mismatches it completed. `room`: whether
        the consumer had room to hash it (None: ask self.room now)."""
        if not len(frames):
            return 0
        dual = (frames.hdr["flags"] & FLAG_MODE_MASK) == DUAL
        n = int(np.count_nonzero(dual))
        if n == 0:
            return 0
        if room is None:
            room = self.room is None or self.room()
        if not room:
            self.counts.skipped += n
            return 0
        f = frames if n == len(frames) else frames.take(dual)
        if self._side is None:
            self._alloc()
        seq = f.seq
        bad, differ = self._pair(SIDES[channel], seq, digests(f))
        c = self.counts
        if bad and len(c.mismatch_seqs) < self.EVIDENCE:
            c.mismatch_seqs += tuple(int(x) for x in differ[: self.EVIDENCE - len(c.mismatch_seqs)])
        return bad

    def _pair(self, side: int, seq: np.ndarray, dig: np.ndarray) -> tuple[int, np.ndarray | None]:
        """Pair DUAL records of one side with the table, store the unpaired ones; returns the
        mismatches and the seqs that differ (in record order)."""
        n = len(seq)
        slot = (seq & self._mask).astype(np.intp)
        occ = self._side[slot]
        hit = (occ == 3 - side) & (self._seq[slot] == seq)
        nhit = int(np.count_nonzero(hit))
        bad, bad_seqs = 0, None
        if nhit:
            hs, hseq, hdig = (slot, seq, dig) if nhit == n else (slot[hit], seq[hit], dig[hit])
            differ = self._dig[hs] != hdig
            bad = int(np.count_nonzero(differ))
            self._side[hs] = 0
            self.counts.compared += nhit
            self.counts.mismatches += bad
            if bad:
                bad_seqs = hseq[differ]
            if nhit == n:
                return bad, bad_seqs
            miss = ~hit
            slot, seq, dig, occ = slot[miss], seq[miss], dig[miss], occ[miss]
        evicted = int(np.count_nonzero(occ))
        if len(seq) > 1 and int(seq.max()) - int(seq.min()) >= self.capacity:  # it overwrites itself too
            first = np.unique(slot)
            evicted = int(np.count_nonzero(self._side[first])) + len(slot) - len(first)
        self.unpaired_evicted += evicted
        self._seq[slot] = seq
        self._dig[slot] = dig
        self._side[slot] = side
        return bad, bad_seqs

    def add_many(self, items: list[tuple[str, Frames, bool]], joined: dict[str, np.ndarray] | None = None) -> None:
        """Take drained batches (channel, frames, whether the consumer had room when it drained
        them) in consumption order: the same counts, table and evidence as add() on each in turn.

        Measurement is amortised over many drains: each channel's DUAL records are hashed and
        paired in one pass (all perf, then all ring). That order gives add()'s answer whenever
        every table slot the batches touch sees one seq, at most one copy per side, and not a
        second copy of a record already waiting (no eviction between two copies: seqs spanning
        less than the capacity, no duplicate seq): always for real streams. Otherwise the batches
        go through add() one by one. Mismatch evidence is kept in the order add() finds it: by
        the consumption position of each pair's later copy. `joined` (optional): per channel, the
        headers of all its batches in `items`, already joined.
        """
        by_side: dict[int, list[tuple[int, Frames]]] = {1: [], 2: []}
        for i, (channel, frames, room) in enumerate(items):
            if not len(frames):
                continue
            if not room:
                self.add(channel, frames, room=False)  # counted as skipped
                continue
            by_side[SIDES[channel]].append((i, frames))
        parts = {}
        whole = {SIDES[ch]: h for ch, h in (joined or {}).items()}
        for side, fs in by_side.items():
            if not fs:
                continue
            if side in whole and len(whole[side]) == sum(len(f) for _, f in fs):  # no batch skipped
                hdr = whole[side]
            else:
                hdr = concat_headers([f.hdr for _, f in fs])
            dual = (hdr["flags"] & FLAG_MODE_MASK) == DUAL
            if dual.any():
                parts[side] = (fs, hdr, dual)
        if not parts:
            return
        if self._side is None:
            self._alloc()
        seqs = {side: (hdr["seq"] if dual.all() else hdr["seq"][dual]) for side, (_, hdr, dual) in parts.items()}
        if not self._pairs_in_any_order(seqs):
            for channel, frames, room in items:
                if room and len(frames):
                    self.add(channel, frames, room=True)
            return
        found: list[tuple[int, np.ndarray]] = []
        for side in (1, 2):
            if side not in parts:
                continue
            fs, hdr, dual = parts[side]
            # hashed batch by batch (one native call each, no joined copy of their bytes)
            dig = digests(fs[0][1]) if len(fs) == 1 else np.concatenate([digests(f) for _, f in fs])
            _bad, differ = self._pair(side, seqs[side], dig if dual.all() else dig[dual])
            if differ is not None:
                found.append((side, differ))
        c = self.counts
        if found and len(c.mismatch_seqs) < self.EVIDENCE:
            bad_seqs = np.concatenate([d for _, d in found])
            done = np.full(len(bad_seqs), -1, np.int64)  # where add() would have completed each pair
            for side, (fs, hdr, dual) in parts.items():
                pos = self._positions(fs, dual)
                idx = {int(s): j for j, s in enumerate(seqs[side].tolist())}
                for k, s in enumerate(bad_seqs.tolist()):
                    j = idx.get(s)
                    if j is not None:
                        done[k] = max(done[k], int(pos[j]))
            order = np.argsort(done, kind="stable")
            c.mismatch_seqs += tuple(int(x) for x in bad_seqs[order][: self.EVIDENCE - len(c.mismatch_seqs)])

    @staticmethod
    def _positions(fs: list[tuple[int, Frames]], dual: np.ndarray) -> np.ndarray:
        """Each DUAL record's consumption position: (batch index, index in its batch) as one int."""
        pos = np.concatenate([i * (1 << 32) + np.arange(len(f), dtype=np.int64) for i, f in fs])
        return pos[dual]

    def _pairs_in_any_order(self, seqs: dict[int, np.ndarray]) -> bool:
        """Whether pairing all of one side's records, then all of the other's, gives what pairing
        them batch by batch gives (see add_many)."""
        lo = min(int(s.min()) for s in seqs.values())
        hi = max(int(s.max()) for s in seqs.values())
        if hi - lo >= self.capacity:
            return False
        if self._stamp is None:
            self._stamp = np.empty(self.capacity, np.int64)
        for side, seq in seqs.items():
            slot = (seq & self._mask).astype(np.intp)
            if len(self._count) < len(seq):
                self._count = np.arange(max(len(seq), 2 * len(self._count)), dtype=np.int64)
            count = self._count[:len(seq)]
            self._stamp[slot] = count  # a seq twice on one side: its first stamp is overwritten
            if not np.array_equal(self._stamp[slot], count):
                return False
            waiting = (self._side[slot] == side) & (self._seq[slot] == seq)  # a second copy of one record
            if waiting.any():
                return False
        return True

    def take(self) -> CompareCounts:
        """The counts since the last take (for one window's books); they restart from zero."""
        c, self.counts = self.counts, CompareCounts()
        return c
