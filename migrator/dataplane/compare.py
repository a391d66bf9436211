"""Payload comparison of the two channels in DUAL: the ring record of a seq against perf's.

In DUAL one emission goes to both channels with one seq (bpf/migrator.h), so the two payloads
of a seq must be byte-identical; a difference means the ring path corrupts what it carries.
Every record emitted in DUAL (its header's mode bits) gets a 64-bit digest of its payload
bytes and length, computed vectorised per batch (`digests`). A digest waits in a fixed,
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
from migrator.shared.vocab import MODE_VALUES

DUAL = MODE_VALUES["DUAL"]
SIDES = {"perf": 1, "ring": 2}  # table side codes; 0 is an empty slot
DEFAULT_CAPACITY = 1 << 18  # above the records a default 16 MiB ring holds at ~64 bytes each

# splitmix64's constants. Digests are the same in every process (only equality within one
# process matters, but reproducible numbers make tests exact).
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
# The mask of the first k bytes of a little-endian 64-bit word, k = 0..7 (0: the whole word).
_TAIL = np.array([2**64 - 1] + [(1 << (8 * k)) - 1 for k in range(1, 8)], dtype=np.uint64)
BLOCK = 8  # words per block in the general path (64 payload bytes)
# Temporaries stay near 128 KiB: cache resident, and no fresh pages per call (a large numpy
# temporary is a new mapping, and its page faults cost more than the hashing).
_CHUNK_WORDS = 16384
_MAX_RUNS = 16  # a batch of one size in at most this many runs of one stride takes the strided path
_blocks = np.empty(0, np.uint64)  # Q_k: block k of a payload (grown on demand)
_weights = np.empty(0, np.uint64)  # W_j = Q_(j // BLOCK) * K_(j % BLOCK)


def _fmix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every input bit reaches every output bit."""
    h ^= h >> np.uint64(30)
    h *= _M2
    h ^= h >> np.uint64(27)
    h *= _M3
    h ^= h >> np.uint64(31)
    return h


def _odd_keys(n: int, salt: np.uint64) -> np.ndarray:
    return _fmix(np.arange(1, n + 1, dtype=np.uint64) * salt) | np.uint64(1)


_WORD_KEYS = _odd_keys(BLOCK, _M1)  # K_i: word i of a block
# The mask of a payload's last block holding its last m bytes, m = 0..64 (0: an empty payload).
_LAST_MASK = np.zeros((8 * BLOCK + 1, BLOCK), np.uint64)
for _m in range(1, 8 * BLOCK + 1):
    _LAST_MASK[_m, : _m // 8] = _TAIL[0]
    if _m % 8:
        _LAST_MASK[_m, _m // 8] = _TAIL[_m % 8]


def _block_keys(n: int) -> np.ndarray:
    """Q_k for blocks 0..n-1: odd, a pure function of k."""
    global _blocks
    if len(_blocks) < n:
        _blocks = _odd_keys(max(n, 64), _M2)
    return _blocks[:n]


def _word_weights(n: int) -> np.ndarray:
    """W_j = Q_(j // BLOCK) * K_(j % BLOCK) for word positions 0..n-1: odd, a pure function of j."""
    global _weights
    if len(_weights) < n:
        _weights = (_block_keys(-(-n // BLOCK))[:, None] * _WORD_KEYS[None, :]).reshape(-1)
    return _weights[:n]


def _words64(buf: np.ndarray, r: int) -> np.ndarray:
    """buf from byte r on as 64-bit words (whole words only)."""
    return buf[r: r + 8 * ((len(buf) - r) // 8)].view("<u8")


def _mix(g: np.ndarray) -> np.ndarray:
    """mix(x) = y ^ (y >> 29), y = x * M1, on every word of g in place: bijective, mix(0) == 0."""
    flat = g.reshape(-1)
    flat *= _M1
    flat ^= flat >> np.uint64(29)
    return g


def _finish(h: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Add the length. No final avalanche: digests are only ever compared for equality, and a
    bijection applied to both sides would not change which ones are equal."""
    h += lens.astype(np.uint64) * _M3
    return h


def _padded_digests(buf: np.ndarray, off: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Digests of a few records (those at the very end of a buffer), each copied into a zeroed
    row: the reference form of the digest (zero words past the payload mix to zero)."""
    width = max(1, (int(lens.max()) + 7) >> 3)
    g = np.zeros((len(off), width), np.uint64)
    raw = g.view(np.uint8)
    for i, (o, n) in enumerate(zip(off.tolist(), lens.tolist())):
        raw[i, :n] = buf[o:o + n]
    return _finish(_mix(g) @ _word_weights(width), lens)


def _run_digests(frames: Frames) -> np.ndarray | None:
    """The digests of a batch of one payload size (what a program with one event struct
    produces), laid out as a few runs at one constant stride (perf hands out one run per CPU):
    strided copies, no index arrays. None when the batch is not like that."""
    off, lens = frames.off, frames.hdr["len"]
    n, size = len(off), int(lens[0])
    stride = int(off[1] - off[0]) if n > 1 else 8
    if size == 0 or stride <= 0 or stride & 7 or not (lens == size).all():
        return None
    breaks = np.flatnonzero(np.diff(off) != stride) + 1 if n > 1 else ()
    if len(breaks) > _MAX_RUNS:
        return None
    width = (size + 7) >> 3
    weights = _word_weights(width)
    step = max(1, _CHUNK_WORDS // width)
    out = np.empty(n, np.uint64)
    bounds = [0, *(int(x) for x in breaks), n]
    for lo, hi in zip(bounds, bounds[1:]):
        first = int(off[lo])
        r = first & 7
        words = _words64(frames.buf, r)
        # rows whose last word is whole in the buffer; the rest (the buffer's last record at
        # most, when its payload ends less than 8 bytes before the buffer does) are padded
        inside = min(hi - lo, max(0, (len(words) - width - (first - r) // 8) // (stride // 8) + 1))
        if inside:
            view = np.ndarray((inside, width), np.uint64, words, first - r, (stride, 8))
        for a in range(0, inside, step):
            b = min(inside, a + step)
            g = view[a:b].copy()
            if size & 7:
                g[:, width - 1] &= _TAIL[size & 7]
            out[lo + a:lo + b] = _finish(_mix(g) @ weights, lens[lo + a:lo + b])
        if lo + inside < hi:
            out[lo + inside:hi] = _padded_digests(frames.buf, off[lo + inside:hi], lens[lo + inside:hi])
    return out


def _blocked_digests(words: np.ndarray, start: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Digests of records of any sizes whose payloads start at 64-bit word `start` of `words`
    (every record's blocks lie inside `words`): each payload is cut into blocks of BLOCK words,
    all blocks of a chunk of records are gathered at once (one row copy per block), the bytes
    past a payload's end are masked in its last block, and each record sums its blocks."""
    n = len(start)
    nb = np.maximum((lens + 8 * BLOCK - 1) >> 6, 1)  # blocks per payload (an empty one: one)
    ends = np.cumsum(nb)
    rows = np.ndarray((len(words) - BLOCK + 1, BLOCK), np.uint64, words, 0, (8, 8))
    out = np.empty(n, np.uint64)
    a, step = 0, _CHUNK_WORDS // BLOCK
    while a < n:  # chunks of records holding about `step` blocks
        base = int(ends[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(ends, base + step, side="right")))
        cnt, ln = nb[a:b], lens[a:b]
        last = ends[a:b] - 1 - base  # each record's last block in this chunk
        first = last + 1 - cnt
        rec = np.repeat(np.arange(b - a), cnt)
        k = np.arange(int(last[-1]) + 1) - first[rec]  # block index within its record
        g = rows[start[a:b][rec] + BLOCK * k]
        g[last] &= _LAST_MASK[ln - 8 * BLOCK * (cnt - 1)]
        h = _mix(g) @ _WORD_KEYS
        h *= _block_keys(int(cnt.max()))[k]
        out[a:b] = _finish(np.add.reduceat(h, first), ln)
        a = b
    return out


def digests(frames: Frames) -> np.ndarray:
    """One uint64 per record: a digest of its payload bytes and its length.

    h = len * M3 + sum_j W_j * mix(w_j) (mod 2^64) over the payload's 64-bit words w_j (the last one
    zero padded), mix(x) = y ^ (y >> 29) with y = x * M1 (a bijection, mix(0) = 0), and W_j an
    odd weight per word position (Q_(j // 8) * K_(j % 8)): a pure function of (length, bytes),
    and a change confined to one word always changes it (W_j odd, mix bijective). A batch that
    is a run of one size at a constant stride (one event struct) is hashed from strided copies;
    anything else is cut into 8-word blocks gathered in one step per chunk, whatever the mix of
    sizes. Payloads start 4-byte aligned; each 8-byte alignment has its own 64-bit word view.
    """
    n = len(frames)
    if n == 0:
        return np.empty(0, np.uint64)
    off = frames.off.astype(np.int64)
    if (off & 3).any():
        raise ValueError("payloads must start at 4-byte aligned offsets")
    run = _run_digests(frames)
    if run is not None:
        return run
    lens = frames.hdr["len"].astype(np.int64)
    out = np.empty(n, np.uint64)
    rem = off & 7
    for r in ((int(rem[0]),) if rem.min() == rem.max() else (0, 4)):
        idx = np.arange(n) if rem.min() == rem.max() else np.flatnonzero(rem == r)
        words = _words64(frames.buf, r)
        start = (off[idx] - r) >> 3
        blocks = np.maximum((((lens[idx] + 7) >> 3) + BLOCK - 1) // BLOCK, 1)
        over = start + BLOCK * blocks > len(words)
        if over.any():  # the last record or few would read past the buffer's end
            out[idx[over]] = _padded_digests(frames.buf, off[idx[over]], lens[idx[over]])
            idx, start = idx[~over], start[~over]
        if len(idx):
            out[idx] = _blocked_digests(words, start, lens[idx])
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
            if len(fs) == 1:
                frames = fs[0][1]
            else:  # the headers are joined already: join the payload bytes
                shift = np.cumsum([0] + [len(f.buf) for _, f in fs[:-1]])
                off = np.concatenate([f.off for _, f in fs])
                off += np.repeat(shift, [len(f) for _, f in fs])
                frames = Frames(hdr, np.concatenate([f.buf for _, f in fs]), off)
            if not dual.all():
                frames = Frames(hdr[dual], frames.buf, frames.off[dual])
            _bad, differ = self._pair(side, seqs[side], digests(frames))
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
