"""Perf buffer consumer: our own PERF_COUNT_SW_BPF_OUTPUT event per CPU, mmapped and batch-decoded.

bcc's open_perf_buffer wakes the consumer for every record; here the wakeup policy is ours
(watermark or every N records) and records are decoded as numpy arrays, not one callback each.
"""
from __future__ import annotations

import ctypes as ct
import fcntl
import mmap
import os

import numpy as np

from migrator.errors import ChannelError
from migrator.dataplane.schema import EVENT_DTYPE, RECORD_SIZE, decode_one, empty_batch, split_versions
from migrator.dataplane.syscalls import NR_PERF_EVENT_OPEN, libc as _libc

PAGE = os.sysconf("SC_PAGE_SIZE")
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

# A sample record: header, u32 raw size, the raw payload padded so the record is 8-byte aligned.
SAMPLE_SIZE = (8 + 4 + RECORD_SIZE + 7) & ~7
PERF_REC = np.dtype(
    [("type", "<u4"), ("misc", "<u2"), ("size", "<u2"), ("raw_size", "<u4"), ("ev", EVENT_DTYPE),
     ("pad", f"V{SAMPLE_SIZE - 12 - RECORD_SIZE}")]
)
assert PERF_REC.itemsize == SAMPLE_SIZE


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

    def take(self) -> bytes:
        """Copy out everything between tail and head (stitching the wrap), then release it."""
        head = int(self.head[0])
        tail = self.tail.value
        if head == tail:
            return b""
        start = tail % self.data_size
        n = head - tail
        base = self.data_off
        if start + n <= self.data_size:
            chunk = self.mm[base + start : base + start + n]
        else:
            first = self.data_size - start
            chunk = self.mm[base + start : base + self.data_size] + self.mm[base : base + n - first]
        self.tail.value = head
        return chunk

    def oldest_ktime(self) -> int | None:
        """ktime_ns of the record at the tail if it is a sample, else None."""
        head, tail = int(self.head[0]), self.tail.value
        if head - tail < SAMPLE_SIZE:
            return None
        base = self.data_off
        hdr = self.mm[base + tail % self.data_size : base + tail % self.data_size + 8]
        if int.from_bytes(hdr[:4], "little") != PERF_RECORD_SAMPLE:
            return None
        pos = (tail + 12 + 16) % self.data_size
        if pos + 8 > self.data_size:
            return None  # the field straddles the wrap: skip this estimate
        return int.from_bytes(self.mm[base + pos : base + pos + 8], "little")

    def pending_bytes(self) -> int:
        return int(self.head[0]) - self.tail.value

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
        self.parse_errors = 0
        self.lost_reported = 0
        self.consumed = 0
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

    def fds(self) -> list[int]:
        """The per-CPU perf event fds, for the caller to wait on (epoll)."""
        return [b.fd for b in self._bufs]

    def in_flight(self) -> int:
        """Records written but not yet consumed (sample-sized estimate; LOST records are rare)."""
        return sum(b.pending_bytes() for b in self._bufs) // SAMPLE_SIZE

    def oldest_ktime(self) -> int | None:
        """ktime_ns of the oldest record waiting in any CPU's buffer, None when all are empty."""
        ks = [k for k in (b.oldest_ktime() for b in self._bufs) if k is not None]
        return min(ks) if ks else None

    def max_pending(self) -> int:
        """Records waiting in the fullest per-CPU buffer."""
        return max((b.pending_bytes() for b in self._bufs), default=0) // SAMPLE_SIZE

    def capacity_per_cpu(self) -> int:
        """Records one CPU's buffer holds, so batching can stop short of overflowing it."""
        return (self.pages * PAGE) // SAMPLE_SIZE

    def consume(self) -> np.ndarray:
        """Drain every CPU's buffer; one batch in CPU order (perf has no cross-CPU order)."""
        parts = []
        for b in self._bufs:
            chunk = b.take()
            if chunk:
                parts.append(self._decode(chunk))
        if not parts:
            return empty_batch()
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.consumed += len(batch)
        return batch

    def _decode(self, chunk: bytes) -> np.ndarray:
        """Runs of fixed-size samples decode as one numpy view; only the odd record between runs
        (a LOST record after an overflow, another size or version) takes the slow path."""
        out = []
        pos, end = 0, len(chunk)
        while end - pos >= 8:
            n = (end - pos) // SAMPLE_SIZE
            if n:
                recs = np.frombuffer(chunk, dtype=PERF_REC, count=n, offset=pos)
                odd = (recs["type"] != PERF_RECORD_SAMPLE) | (recs["size"] != SAMPLE_SIZE)
                k = int(np.argmax(odd)) if odd.any() else n
                if k:
                    batch, bad = split_versions(recs["ev"][:k])
                    self.parse_errors += bad
                    out.append(batch)
                    pos += k * SAMPLE_SIZE
                    if k == n:
                        continue
            pos = self._one(chunk, pos, out)
            if pos < 0:
                break
        if not out:
            return empty_batch()
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _one(self, chunk: bytes, pos: int, out: list) -> int:
        """Decode the single record at `pos`; returns the next position, -1 if the header is corrupt."""
        mv = memoryview(chunk)
        if len(chunk) - pos < 8:
            return -1
        rtype = int.from_bytes(mv[pos : pos + 4], "little")
        size = int.from_bytes(mv[pos + 6 : pos + 8], "little")
        if size < 8:
            return -1  # nothing after a corrupt header can be trusted
        if rtype == PERF_RECORD_SAMPLE:
            raw = int.from_bytes(mv[pos + 8 : pos + 12], "little")
            rec = decode_one(mv[pos + 12 : pos + 12 + raw])
            if rec is None:
                self.parse_errors += 1
            else:
                out.append(rec)
        elif rtype == PERF_RECORD_LOST:
            self.lost_reported += int.from_bytes(mv[pos + 16 : pos + 24], "little")
        return pos + size

    def close(self) -> None:
        """Take the buffers out of the perf map, disable their events and free the mmaps and fds."""
        perf_map = getattr(self, "_perf_map", None)
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
