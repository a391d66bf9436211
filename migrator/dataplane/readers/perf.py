"""Perf buffer consumer: our own PERF_COUNT_SW_BPF_OUTPUT event per CPU, mmapped and batch-read.

bcc's open_perf_buffer wakes the consumer for every record; here the wakeup policy is ours
(watermark or every N records), and each drain of every CPU's buffer is one native call
(native.c mg_perf_take) handing out one batch of numpy arrays, not one callback per record.
"""
from __future__ import annotations

import ctypes as ct
import fcntl
import mmap
import os

import numpy as np

from migrator.errors import ChannelError
from migrator.dataplane.frames import EPOCH_SHIFT, EPOCHS, HDR_DTYPE, HDR_SIZE, KTIME_AT, Frames
from migrator.dataplane.native import R_BYTES, R_ERRORS, R_LOST, R_N, R_NRES, Spares, addr, gathered, lib
from migrator.dataplane.syscalls import NR_PERF_EVENT_OPEN, libc as _libc
from migrator.shared.vocab import PAGE_SIZE as PAGE

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
ATTR_WATERMARK = 1 << 14
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PERF_EVENT_IOC_DISABLE = 0x2401
# perf_event_mmap_page offsets
OFF_DATA_HEAD, OFF_DATA_TAIL, OFF_DATA_OFFSET, OFF_DATA_SIZE = 1024, 1032, 1040, 1048

# A sample record: perf_event_header (u32 type, u16 misc, u16 size), u32 raw size, the raw
# record (migrator's header and the payload) padded so the sample is 8-byte aligned.
SAMPLE_HDR = 12
MIN_SAMPLE = (SAMPLE_HDR + HDR_SIZE + 7) & ~7


class PerfEventAttr(ct.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (112 bytes)."""

    _fields_ = [
        ("type", ct.c_uint32), ("size", ct.c_uint32), ("config", ct.c_uint64),
        ("sample_period", ct.c_uint64), ("sample_type", ct.c_uint64), ("read_format", ct.c_uint64),
        ("flags", ct.c_uint64), ("wakeup", ct.c_uint32), ("bp_type", ct.c_uint32),
        ("config1", ct.c_uint64), ("config2", ct.c_uint64), ("branch_sample_type", ct.c_uint64),
        ("sample_regs_user", ct.c_uint64), ("sample_stack_user", ct.c_uint32), ("clockid", ct.c_int32),
        ("sample_regs_intr", ct.c_uint64), ("aux_watermark", ct.c_uint32), ("sample_max_stack", ct.c_uint16),
        ("reserved", ct.c_uint16),
    ]


assert ct.sizeof(PerfEventAttr) == 112


def perf_event_open(cpu: int, wakeup_events: int, watermark_bytes: int) -> int:
    """Open one BPF-output software event on `cpu`; returns its fd."""
    attr = PerfEventAttr()
    attr.type = PERF_TYPE_SOFTWARE
    attr.size = ct.sizeof(PerfEventAttr)
    attr.config = PERF_COUNT_SW_BPF_OUTPUT
    attr.sample_period = 1
    attr.sample_type = PERF_SAMPLE_RAW
    if watermark_bytes > 0:
        attr.flags = ATTR_WATERMARK
        attr.wakeup = watermark_bytes
    else:
        attr.wakeup = max(1, wakeup_events)
    fd = _libc.syscall(NR_PERF_EVENT_OPEN, ct.byref(attr), -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ct.get_errno()
        raise ChannelError("perf", f"perf_event_open(cpu={cpu}) failed: {os.strerror(err)}")
    return fd


class _CpuBuffer:
    def __init__(self, cpu: int, fd: int, pages: int) -> None:
        self.cpu, self.fd = cpu, fd
        try:
            self.mm = mmap.mmap(fd, PAGE * (1 + pages), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise ChannelError("perf", f"cannot mmap perf buffer of cpu {cpu} ({pages} pages): {exc}") from None
        self.head = np.frombuffer(self.mm, dtype=np.uint64, count=1, offset=OFF_DATA_HEAD)
        self.tail = ct.c_uint64.from_buffer(self.mm, OFF_DATA_TAIL)
        off = int.from_bytes(self.mm[OFF_DATA_OFFSET : OFF_DATA_OFFSET + 8], "little")
        size = int.from_bytes(self.mm[OFF_DATA_SIZE : OFF_DATA_SIZE + 8], "little")
        self.data_off = off or PAGE
        self.data_size = size or PAGE * pages

    def oldest_ktime(self) -> int | None:
        """ktime_ns of the record at the tail if it is a sample, else None."""
        head, tail = int(self.head[0]), self.tail.value
        if head - tail < MIN_SAMPLE:
            return None
        base = self.data_off
        hdr = self.mm[base + tail % self.data_size : base + tail % self.data_size + 8]
        if int.from_bytes(hdr[:4], "little") != PERF_RECORD_SAMPLE:
            return None
        pos = (tail + SAMPLE_HDR + KTIME_AT) % self.data_size
        if pos + 8 > self.data_size:
            return None  # the field straddles the wrap: skip this estimate
        return int.from_bytes(self.mm[base + pos : base + pos + 8], "little")

    def pending_bytes(self) -> int:
        """Bytes between tail and head."""
        return int(self.head[0]) - self.tail.value

    def _at(self, pos: int, n: int) -> bytes:
        start = pos % self.data_size
        b = self.mm[self.data_off + start:self.data_off + min(start + n, self.data_size)]
        if len(b) < n:  # split by the wrap
            b += self.mm[self.data_off:self.data_off + n - len(b)]
        return b

    def count_samples(self, by_epoch: list[int] | None = None) -> int:
        """Samples between tail and head, walking their headers in place (nothing is consumed);
        each one's epoch is counted into `by_epoch` when given."""
        head, pos = int(self.head[0]), self.tail.value
        n = 0
        while head - pos >= 8:
            hdr = self._at(pos, 8)
            rtype = int.from_bytes(hdr[:4], "little")
            size = int.from_bytes(hdr[6:8], "little")
            if size < 8:
                break
            if rtype == PERF_RECORD_SAMPLE:
                n += 1
                if by_epoch is not None and size >= SAMPLE_HDR + 4:
                    by_epoch[(int.from_bytes(self._at(pos + SAMPLE_HDR + 2, 2), "little") >> EPOCH_SHIFT) % EPOCHS] += 1
            pos += size
        return n

    def close(self) -> None:
        del self.tail
        self.head = None
        self.mm.close()
        os.close(self.fd)


class PerfConsumer:
    """Per-CPU perf buffers for a BPF_MAP_TYPE_PERF_EVENT_ARRAY map (bcc table), batch-decoded."""

    def __init__(self, perf_map, cpus: list[int] | None = None, pages: int = 64,
                 wakeup_events: int = 0, watermark_bytes: int | None = None) -> None:
        if pages <= 0 or pages & (pages - 1):
            raise ChannelError("perf", f"pages per CPU must be a power of two, got {pages}")
        if cpus is None:
            from bcc.utils import get_online_cpus

            cpus = get_online_cpus()
        if watermark_bytes is None:
            # Default: wake when a quarter of the buffer is full; the poll timeout bounds the lag.
            watermark_bytes = 0 if wakeup_events else (pages * PAGE) // 4
        self.pages = pages
        # Woken by count (bcc's wakeup_events, 1 by default): every N-th record wakes the reader, as
        # an unmodified bcc tool asked; its reader then drains at once (Pipeline.drain_on_wake).
        self.wakeup_events = wakeup_events if watermark_bytes == 0 else 0
        self.parse_errors = 0
        self.peak_bytes = 0  # fullest CPU buffer seen at a drain since the owner last reset it
        self.lost_reported = 0
        self.consumed = 0
        self.consumed_bytes = 0
        self._bufs: list[_CpuBuffer] = []
        try:
            for cpu in cpus:
                fd = perf_event_open(cpu, wakeup_events, watermark_bytes)
                try:
                    self._bufs.append(_CpuBuffer(cpu, fd, pages))
                except Exception:
                    os.close(fd)
                    raise
                perf_map[ct.c_int(cpu)] = ct.c_int(fd)
        except Exception:
            self.close()
            raise
        self._perf_map = perf_map
        # What the native drain reads: each CPU's mmap (its perf_event_mmap_page first), where
        # its data area starts and its size, and room for the heads it saw.
        self._lib = lib()
        self._pages = np.array([ct.addressof(b.tail) - OFF_DATA_TAIL for b in self._bufs], np.uint64)
        self._offs = np.array([b.data_off for b in self._bufs], np.uint64)
        self._sizes = np.array([b.data_size for b in self._bufs], np.uint64)
        self._heads = np.zeros(len(self._bufs), np.uint64)
        held = 2 * pages * PAGE * len(self._bufs)  # reused drain buffers (native.Spares), at most
        self._spare_bufs, self._spare_hdrs, self._spare_offs = Spares(held), Spares(held // 2), Spares(held // 8)
        self._res = np.zeros(R_NRES, np.int64)
        self._pages_addr, self._offs_addr, self._sizes_addr, self._heads_addr, self._res_addr = (
            addr(a) for a in (self._pages, self._offs, self._sizes, self._heads, self._res))

    def carry_from(self, old: "PerfConsumer") -> None:
        """Continue the running totals of the consumer this one replaces (a re-sized buffer)."""
        self.parse_errors += old.parse_errors
        self.lost_reported += old.lost_reported
        self.consumed += old.consumed
        self.consumed_bytes += old.consumed_bytes
        self.peak_bytes = max(self.peak_bytes, old.peak_bytes)

    def fds(self) -> list[int]:
        """The per-CPU perf event fds, for the caller to wait on (epoll)."""
        return [b.fd for b in self._bufs]

    def pending_bytes(self) -> int:
        """Bytes written but not yet consumed, over every CPU."""
        return sum(b.pending_bytes() for b in self._bufs)

    def in_flight(self) -> int:
        """Samples written but not yet consumed, counted by walking each CPU's buffer."""
        return sum(b.count_samples() for b in self._bufs)

    def waiting(self) -> tuple[int, list[int]]:
        """(samples written but not yet consumed, how many of them per epoch), in one walk."""
        by_epoch = [0] * EPOCHS
        return sum(b.count_samples(by_epoch) for b in self._bufs), by_epoch

    def oldest_ktime(self) -> int | None:
        """ktime_ns of the oldest record waiting in any CPU's buffer, None when all are empty."""
        ks = [k for k in (b.oldest_ktime() for b in self._bufs) if k is not None]
        return min(ks) if ks else None

    def max_pending_bytes(self) -> int:
        """Bytes waiting in the fullest per-CPU buffer."""
        return max((b.pending_bytes() for b in self._bufs), default=0)

    def capacity_per_cpu(self) -> int:
        """Bytes one CPU's buffer holds, so batching can stop short of overflowing it."""
        return self.pages * PAGE

    def consume(self) -> Frames:
        """Drain every CPU's buffer; one batch in CPU order (perf has no cross-CPU order). The copy
        (stitching each wrap), the walk and the header checks are one native call
        (native.c mg_perf_take); LOST records add to lost_reported, unreadable ones to parse_errors."""
        total = self._lib.mg_perf_pending(self._pages_addr, len(self._bufs), self._heads_addr)
        if not total:
            return Frames.empty()
        # the fill is highest just before a drain: each CPU's head (just read) less its tail
        self.peak_bytes = max(self.peak_bytes, *(int(h) - b.tail.value for h, b in zip(self._heads, self._bufs)))
        buf, buf_at = self._spare_bufs.take(total)
        rows = total // MIN_SAMPLE + 1  # a readable sample takes at least MIN_SAMPLE bytes
        hdr, hdr_at = self._spare_hdrs.take(rows * HDR_SIZE)
        off, off_at = self._spare_offs.take(rows * 8)
        self._lib.mg_perf_take(self._pages_addr, self._offs_addr, self._sizes_addr, self._heads_addr,
                               len(self._bufs), buf_at, hdr_at, off_at, rows, self._res_addr)
        return self._account(gathered(buf, hdr.view(HDR_DTYPE), off.view(np.int64), self._res))

    def walk(self, chunk: bytes) -> Frames:
        """The records of one CPU's chunk already copied out (recorded batches, tests): the walk
        of consume(), with the same accounting."""
        buf = np.frombuffer(chunk, dtype=np.uint8)
        rows = len(buf) // MIN_SAMPLE + 1
        hdr, off = np.empty(rows, HDR_DTYPE), np.empty(rows, np.int64)
        res = np.zeros(R_NRES, np.int64)
        lib().mg_perf_walk(addr(buf), len(buf), addr(hdr), addr(off), rows, addr(res))
        return self._account(gathered(buf, hdr, off, res))

    def _account(self, done: tuple[Frames, list[int]]) -> Frames:
        frames, r = done
        self.consumed_bytes += r[R_BYTES]
        self.parse_errors += r[R_ERRORS]
        self.lost_reported += r[R_LOST]
        self.consumed += r[R_N]
        return frames

    def close(self, clear_map: bool = True) -> None:
        """Take the buffers out of the perf map (unless a successor's are there now: clear_map=False),
        disable their events and free the mmaps and fds."""
        perf_map = getattr(self, "_perf_map", None) if clear_map else None
        for b in self._bufs:
            if perf_map is not None:
                try:
                    del perf_map[ct.c_int(b.cpu)]
                except Exception:
                    pass
            try:
                fcntl.ioctl(b.fd, PERF_EVENT_IOC_DISABLE, 0)
            except OSError:
                pass
            b.close()
        self._bufs = []
