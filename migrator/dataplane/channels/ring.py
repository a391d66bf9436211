"""Ring buffer consumer that reads the BPF ring map through mmap, one batch per call.

Layout (kernel/bpf/ringbuf.c): page 0 of the map fd is the consumer page (rw, u64 consumer_pos);
from one page on, the producer page (u64 producer_pos) then the data area mapped twice back to
back, so a record is never split across the wrap. Each record: u32 len (bit 31 busy, bit 30
discard), u32 page offset, then the record (migrator's header and the payload); records are
8-byte aligned.
"""
from __future__ import annotations

import ctypes as ct
import mmap
import os
import sys

import numpy as np

from migrator.dataplane.frames import (EPOCH_SHIFT, EPOCHS, HDR_SIZE, HDR_VERSION, Frames, headers_at,
                                       strided_headers, validate)
from migrator.errors import ChannelError

PAGE = os.sysconf("SC_PAGE_SIZE")
BUSY = 1 << 31
DISCARD = 1 << 30
RB_HDR = 8


_SPARES = 32  # spare copy buffers at most (see RingConsumer._release)


def _stride(size: int) -> int:
    return (size + RB_HDR + 7) & ~7


class RingConsumer:
    """Direct mmap consumer of a BPF_MAP_TYPE_RINGBUF map."""

    def __init__(self, map_fd: int, ring_bytes: int) -> None:
        self.map_fd = map_fd
        self.size = ring_bytes
        self.mask = ring_bytes - 1
        try:
            self._cons_mm = mmap.mmap(map_fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod_mm = mmap.mmap(map_fd, PAGE + 2 * ring_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
        except OSError as exc:
            raise ChannelError("ring", f"cannot mmap ring map fd {map_fd} ({ring_bytes} bytes): {exc}") from None
        # One aligned 8-byte store/load each: struct.pack_into on the mmap can tear (KERNEL_NOTES.md).
        self._cons = ct.c_uint64.from_buffer(self._cons_mm, 0)
        self._prod = np.frombuffer(self._prod_mm, dtype=np.uint64, count=1, offset=0)
        self._data = np.frombuffer(self._prod_mm, dtype=np.uint8, offset=PAGE)
        self._words = memoryview(self._prod_mm).cast("I")  # u32 at every 4-byte offset
        self.parse_errors = 0
        self.consumed = 0
        self.consumed_bytes = 0
        self._count_from = self._count_pos = -1  # in_flight's resumable walk
        self._count_n = 0
        self._count_epochs = [0] * EPOCHS  # the walked records by epoch
        self._spares: list[np.ndarray] = []  # see _release

    def fileno(self) -> int:
        """The ring map fd, for the caller to wait on (epoll)."""
        return self.map_fd

    def pending_bytes(self) -> int:
        """Bytes written but not yet consumed."""
        return int(self._prod[0]) - self._cons.value

    def in_flight(self) -> int:
        """Records written (or being written) but not yet consumed, counted by walking them.

        The walk resumes where the last count stopped while the consumer position has not moved,
        so a stalled consumer's count stays cheap however much is waiting. A record still busy
        is counted (it was attempted) but not walked past.
        """
        return self._walk()

    def waiting(self) -> tuple[int, list[int]]:
        """(records not yet consumed, a busy one included; the committed ones per epoch: a record
        still being written has no epoch yet), from one resumable walk."""
        n = self._walk()
        return n, list(self._count_epochs)

    def _walk(self) -> int:
        cons, prod = self._cons.value, int(self._prod[0])
        if self._count_from != cons:
            self._count_from, self._count_pos, self._count_n = cons, cons, 0
            self._count_epochs = [0] * EPOCHS
        pos, n, by_epoch = self._count_pos, self._count_n, self._count_epochs
        retry_at = pos  # where a run of one size is looked for next (see _run_epochs)
        while prod - pos >= RB_HDR:
            at = (PAGE + (pos & self.mask)) >> 2
            word = self._words[at]
            if word & BUSY:
                self._count_pos, self._count_n = pos, n
                return n + 1
            if pos >= retry_at and 4 <= word and not word & DISCARD:
                k = self._run_epochs(pos, prod, word, by_epoch)
                if k:
                    pos += k * _stride(word)
                    n += k
                    continue
                retry_at = pos + 16 * _stride(word)  # records of mixed sizes: walk a while first
            if not word & DISCARD:
                n += 1
                if word >= 4:  # hdr_version and flags: the u32 after the ring's 8-byte header
                    by_epoch[(self._words[at + 2] >> (16 + EPOCH_SHIFT)) % EPOCHS] += 1
            pos += _stride(word & ~DISCARD)
        self._count_pos, self._count_n = pos, n
        return n

    def _run_epochs(self, pos: int, prod: int, word: int, by_epoch: list[int]) -> int:
        """Count, by epoch, the run of committed records of one size (ring header `word`) from
        pos in one strided pass, as _walk would one by one; returns how many (0: no run here)."""
        stride = _stride(word)
        first = PAGE + (pos & self.mask)
        # the data area is mapped twice: a run may cross the wrap, not the second mapping's end
        n = min((prod - pos) // stride, (PAGE + 2 * self.size - first) // stride)
        if n < 16:
            return 0
        heads = np.ndarray((n,), dtype="<u4", buffer=self._prod_mm, offset=first, strides=(stride,))
        odd = heads != word
        k = int(np.argmax(odd)) if odd.any() else n
        if k < 16:
            return 0
        flags = np.ndarray((k,), dtype="<u4", buffer=self._prod_mm, offset=first + 8, strides=(stride,))
        counts = np.bincount((flags >> (16 + EPOCH_SHIFT)) % EPOCHS, minlength=EPOCHS).tolist()
        for e, c in enumerate(counts):
            by_epoch[e] += c
        return k

    def oldest_ktime(self) -> int | None:
        """ktime_ns of the oldest record still waiting (None when empty or it is not complete)."""
        cons = self._cons.value
        if int(self._prod[0]) - cons < RB_HDR + HDR_SIZE:
            return None
        off = PAGE + (cons & self.mask)
        if self._words[off >> 2] & BUSY:
            return None
        at = off + RB_HDR + 24
        return self._words[at >> 2] | (self._words[(at >> 2) + 1] << 32)

    def capacity(self) -> int:
        """Bytes the ring holds, so batching can stop short of filling it."""
        return self.size

    def _uniform(self, cons: int, prod: int) -> tuple[int, int, int] | None:
        """(count, stride, size) of the committed records from cons when all are of one size,
        found by reading only their ring headers (one strided compare, no scan of the payload
        bytes); None otherwise.

        The headers are followed as the kernel chains them (each record starts where the one
        before ends), so no payload byte is ever taken for a header. The run must reach prod, or
        a record still being written; a committed record of another size, or a discarded one,
        leaves the region to _chain / _committed.
        """
        first = PAGE + (cons & self.mask)
        word = self._words[first >> 2]
        if word & (BUSY | DISCARD):
            return None
        stride = _stride(word)
        avail = prod - cons
        n = avail // stride
        if n < 2:
            return None
        heads = np.ndarray((n,), dtype="<u4", buffer=self._prod_mm, offset=first, strides=(stride,))
        odd = heads != word
        if odd.any():
            k = int(np.argmax(odd))
            if not heads[k] & BUSY:
                return None
        else:
            k = n
            rest = avail - n * stride
            if rest >= RB_HDR and not self._words[(PAGE + ((cons + n * stride) & self.mask)) >> 2] & BUSY:
                return None
        return (k, stride, word) if k else None

    def _chain(self, cons: int, prod: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Every committed record from cons found in one vectorised pass, or None.

        Every 8-byte aligned position is tested for a ring record header whose length matches
        the migrator header behind it (version, payload length). A payload may contain such
        bytes by chance, so candidates count only while they chain exactly (each one ends where
        the next begins), and the chain must end at prod or at a record still being written;
        anything else is left to the header-by-header walk.
        """
        avail = prod - cons
        n = avail // 8
        if n < 4 or avail % 8:
            return None
        first = PAGE + (cons & self.mask)
        rows = np.frombuffer(self._prod_mm, dtype="<u4", count=2 * n, offset=first).reshape(n, 2)
        # One pass over the region: the first u16 of every 8-byte word i + 1 is where a record
        # starting at word i has hdr_version. Compared in place: no region-sized temporary.
        versions = np.ndarray((n - 2,), dtype="<u2", buffer=self._prod_mm, offset=first + 8, strides=(8,))
        idx = np.flatnonzero(versions == HDR_VERSION)
        if not len(idx) or idx[0] != 0:
            return None
        words = rows[idx, 0]
        size = words & np.uint32(~(BUSY | DISCARD) & 0xFFFFFFFF)
        keep = ((words & np.uint32(BUSY)) == 0) & (size == rows[idx + 2, 0] + np.uint32(HDR_SIZE))
        if not keep.all():
            idx, words, size = idx[keep], words[keep], size[keep]
            if not len(idx) or idx[0] != 0:
                return None
        starts = idx.astype(np.int64) * 8
        ends = starts + ((size.astype(np.int64) + RB_HDR + 7) & ~7)
        gap = np.flatnonzero(starts[1:] != ends[:-1])
        k = int(gap[0]) + 1 if len(gap) else len(starts)
        end = int(ends[k - 1])
        if end != avail and not self._words[(PAGE + ((cons + end) & self.mask)) >> 2] & BUSY:
            return None
        return cons + end, starts[:k], words[:k].astype(np.int64)

    def _committed(self, cons: int, prod: int, max_records: int | None) -> tuple[int, np.ndarray, np.ndarray]:
        """Walk record headers from cons: (end of the committed prefix, record starts, length words).

        A run of equal-size records is checked in one numpy step; other sizes one header at a
        time. Stops at the first busy record: nothing after it may be read yet.
        """
        starts: list[np.ndarray] = []
        words_out: list[np.ndarray] = []
        one_starts: list[int] = []
        one_words: list[int] = []
        pos, count = cons, 0
        words = self._words
        limit = max_records if max_records is not None else 1 << 62

        def flush_singles() -> None:
            if one_starts:
                starts.append(np.asarray(one_starts, dtype=np.int64))
                words_out.append(np.asarray(one_words, dtype=np.int64))
                one_starts.clear()
                one_words.clear()

        prev = -1  # size of the previous record: two in a row of one size may start a run
        while prod - pos >= RB_HDR and count < limit:
            word = words[(PAGE + (pos & self.mask)) >> 2]
            if word & BUSY:
                break
            size = word & ~DISCARD
            stride = _stride(size)
            n = min((prod - pos) // stride, limit - count)
            same, prev = size == prev, size
            if same and n > 8:  # maybe a run of records of one size: one vectorised check
                heads = np.ndarray((n,), dtype="<u4", buffer=self._prod_mm, offset=PAGE + (pos & self.mask),
                                   strides=(stride,))
                odd = (heads & np.uint32(~DISCARD & 0xFFFFFFFF)) != size
                k = int(np.argmax(odd)) if odd.any() else n
                if k > 1:
                    flush_singles()
                    starts.append(np.arange(pos - cons, pos - cons + k * stride, stride, dtype=np.int64))
                    words_out.append(heads[:k].astype(np.int64))
                    pos += k * stride
                    count += k
                    continue
            one_starts.append(pos - cons)
            one_words.append(word)
            pos += stride
            count += 1
        flush_singles()
        if not starts:
            return pos, np.empty(0, np.int64), np.empty(0, np.int64)
        return pos, np.concatenate(starts), np.concatenate(words_out)

    def consume(self, max_records: int | None = None) -> Frames:
        """Every complete record up to the first busy one, released to the kernel in one store."""
        cons = self._cons.value
        prod = int(self._prod[0])
        if prod == cons:
            return Frames.empty()
        if max_records is None:
            run = self._uniform(cons, prod)
            if run is not None:
                return self._take_uniform(cons, *run)
        found = self._chain(cons, prod) if max_records is None else None
        end, starts, lens = found if found is not None else self._committed(cons, prod, max_records)
        if end == cons:
            return Frames.empty()
        # Headers were read above, so no payload is read before its header: copy the committed
        # prefix out with one memcpy (the data area is mapped twice, so it never wraps).
        buf = self._release(cons, end)
        keep = (lens & DISCARD) == 0
        at = starts[keep] + RB_HDR
        size = (lens & ~(BUSY | DISCARD))[keep]
        if not len(at):
            return Frames.empty()
        uniform = (size == size[0]).all() and keep.all()
        hdr = (strided_headers(buf, int(at[0]), _stride(int(size[0])), len(at)) if uniform
               else headers_at(buf, at))
        return self._frames(hdr, buf, at, size)

    def _release(self, cons: int, end: int) -> np.ndarray:
        """Copy [cons, end) out of the ring (one memcpy: the data area is mapped twice, so it
        never wraps), then hand the space back to the kernel.

        The copy goes into one of the consumer's spare buffers that nothing references any more
        (the batch it held was dropped: nobody kept its Frames, headers or a view of its bytes),
        so a steady stream does not allocate and free a batch-sized block per drain: glibc returns
        such blocks to the kernel and faults them back in (a few hundred page faults a drain).
        Several spares, as batches are held until their measuring pass (pipeline.MEASURE_EVERY_S);
        together at most twice the ring's size.
        """
        n = end - cons
        spares = self._spares
        spare = None
        for i in range(len(spares)):
            # References: the list, `spare`, and getrefcount's argument. More: a batch still uses it.
            spare = spares[i]
            if sys.getrefcount(spare) <= 3:
                if len(spare) >= n:
                    break
                # free but too small: grow it (the old block is freed)
                spare = spares[i] = np.empty(min(max(n, 2 * len(spare)), 2 * self.size), np.uint8)
                break
            spare = None
        if spare is None:
            spare = np.empty(max(n, 1 << 16), np.uint8)
            if len(spares) < _SPARES and sum(len(s) for s in spares) + len(spare) <= 2 * self.size:
                spares.append(spare)
        first = cons & self.mask
        buf = spare[:n]
        np.copyto(buf, self._data[first:first + n])
        self._cons.value = end
        self.consumed_bytes += n
        return buf

    def _take_uniform(self, cons: int, k: int, stride: int, size: int) -> Frames:
        """k committed records of one size from cons: strided headers, no per-record arrays
        beyond the payload offsets."""
        buf = self._release(cons, cons + k * stride)
        at = np.arange(RB_HDR, k * stride, stride, dtype=np.int64)
        return self._frames(strided_headers(buf, RB_HDR, stride, k), buf, at, size)

    def _frames(self, hdr: np.ndarray, buf: np.ndarray, at: np.ndarray, room) -> Frames:
        """The batch, without the records whose migrator header is unreadable (counted)."""
        ok = validate(hdr, room)
        if not ok.all():
            self.parse_errors += int((~ok).sum())
            hdr, at = hdr[ok], at[ok]
        self.consumed += len(hdr)
        return Frames(hdr, buf, at + HDR_SIZE)

    def close(self) -> None:
        """Unmap the ring (the map and its fd stay with the program)."""
        del self._cons
        self._prod = self._data = None
        self._spares = []
        self._words.release()
