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

import numpy as np

from migrator.dataplane.frames import EPOCH_SHIFT, EPOCHS, FLAGS_AT, HDR_DTYPE, HDR_SIZE, KTIME_AT, Frames
from migrator.dataplane.native import R_NRES, Spares, addr, gathered, lib
from migrator.errors import ChannelError
from migrator.shared.vocab import PAGE_SIZE as PAGE

BUSY = 1 << 31
DISCARD = 1 << 30
RB_HDR = 8
MIN_RECORD = RB_HDR + HDR_SIZE  # the smallest readable record
_ALL = (1 << 63) - 1  # no limit on the records a drain takes


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
        self.peak_bytes = 0  # highest fill seen at a drain since the owner last reset it
        self.consumed_bytes = 0
        self._count_from = self._count_pos = -1  # in_flight's resumable walk
        self._count_n = 0
        self._count_epochs = [0] * EPOCHS  # the walked records by epoch
        # Reused buffers for the drains (native.Spares): copies, headers, payload offsets.
        self._bufs, self._hdrs, self._offs = Spares(2 * ring_bytes), Spares(ring_bytes), Spares(ring_bytes // 4)
        self._lib = lib()
        self._res = np.zeros(R_NRES, np.int64)  # the native calls' results
        self._res_addr = addr(self._res)
        self._cons_addr = ct.addressof(self._cons)
        self._prod_addr = addr(self._prod)
        self._data_addr = addr(self._data)

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
        flags = np.ndarray((k,), dtype="<u2", buffer=self._prod_mm, offset=first + RB_HDR + FLAGS_AT, strides=(stride,))
        counts = np.bincount((flags >> EPOCH_SHIFT) % EPOCHS, minlength=EPOCHS).tolist()
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
        at = off + RB_HDR + KTIME_AT
        return self._words[at >> 2] | (self._words[(at >> 2) + 1] << 32)

    def capacity(self) -> int:
        """Bytes the ring holds, so batching can stop short of filling it."""
        return self.size

    def consume(self, max_records: int | None = None) -> Frames:
        """Every complete record up to the first busy one (at most max_records), released to the
        kernel in one store; the walk, the copy and the header checks are one native call
        (native.c mg_ring_take). Unreadable records are counted in parse_errors."""
        cons = self._cons.value
        avail = int(self._prod[0]) - cons
        if avail <= 0:
            return Frames.empty()
        self.peak_bytes = max(self.peak_bytes, avail)  # the fill is highest just before a drain
        buf, buf_at = self._bufs.take(avail)
        rows = avail // MIN_RECORD + 1  # a readable record takes at least MIN_RECORD bytes
        hdr, hdr_at = self._hdrs.take(rows * HDR_SIZE)
        off, off_at = self._offs.take(rows * 8)
        self._lib.mg_ring_take(self._data_addr, self.mask, self._cons_addr, self._prod_addr,
                               _ALL if max_records is None else max_records, buf_at, avail, hdr_at, off_at, rows,
                               self._res_addr)
        frames, (_end, n, errors, nbytes, *_rest) = gathered(buf, hdr.view(HDR_DTYPE), off.view(np.int64), self._res)
        self.consumed_bytes += nbytes
        self.parse_errors += errors
        self.consumed += n
        return frames

    def close(self) -> None:
        """Unmap the ring (the map and its fd stay with the program)."""
        del self._cons
        self._prod = self._data = None
        for pool in (self._bufs, self._hdrs, self._offs):
            pool.clear()
        self._words.release()
