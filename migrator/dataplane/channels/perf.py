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
from migrator.dataplane.frames import (EPOCH_SHIFT, EPOCHS, HDR_SIZE, HDR_VERSION, Frames, headers_at,
                                       strided_headers, validate)
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

# A sample record: perf_event_header (u32 type, u16 misc, u16 size), u32 raw size, the raw
# record (migrator's header and the payload) padded so the sample is 8-byte aligned.
SAMPLE_HDR = 12
MIN_SAMPLE = (SAMPLE_HDR + HDR_SIZE + 7) & ~7


# A sample header as one u64: type (u32), misc (u16, may differ between samples), size (u16).
_TYPE_AND_SIZE = np.uint64(0xFFFF0000FFFFFFFF)


def uniform_samples(buf: np.ndarray) -> tuple[int, int, int] | None:
    """(count, sample size, raw size) when the chunk is nothing but samples of one size, found
    by reading only the sample headers (one strided compare); None otherwise.

    Each header says where the next sample starts, so when the headers at every multiple of the
    first one's size all say "sample of that size" and the last one ends at the chunk's end, that
    is exactly the chain the kernel wrote: no payload byte is taken for a header.
    """
    if len(buf) < MIN_SAMPLE:
        return None
    first = int(buf[:8].view("<u8")[0])
    size = first >> 48
    if first & 0xFFFFFFFF != PERF_RECORD_SAMPLE or size < MIN_SAMPLE or len(buf) % size:
        return None
    n = len(buf) // size
    raw = np.ndarray((n,), dtype="<u4", buffer=buf, offset=8, strides=(size,))
    if n > 1:
        heads = np.ndarray((n,), dtype="<u8", buffer=buf, offset=0, strides=(size,))
        if not (((heads & _TYPE_AND_SIZE) == (first & int(_TYPE_AND_SIZE))).all() and (raw == raw[0]).all()):
            return None
    return n, size, int(raw[0])


def sample_chain(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(where each sample's record starts, its raw size) for a chunk that is nothing but samples
    carrying migrator records, found without a per-record Python step; None otherwise.

    Every 8-byte aligned position is tested for a sample header (type SAMPLE, size = raw + 12)
    followed by migrator's header version. A payload may contain such bytes by chance, so the
    candidates are accepted only if they chain exactly (each one ends where the next begins,
    from the first byte to the last); anything else is left to the header-by-header walk.
    """
    n = len(buf) // 8
    if n < 3 or len(buf) % 8:
        return None
    rows = buf[: n * 8].view("<u4").reshape(n, 2)
    idx = np.flatnonzero(rows[:-1, 0] == PERF_RECORD_SAMPLE)  # one pass; the rest only on these
    if not len(idx) or idx[0] != 0:
        return None
    size = rows[idx, 1] >> 16
    raw = rows[idx + 1, 0]
    keep = (size == raw + SAMPLE_HDR) & ((rows[idx + 1, 1] & 0xFFFF) == HDR_VERSION)
    if not keep.all():
        idx, size, raw = idx[keep], size[keep], raw[keep]
        if not len(idx) or idx[0] != 0:
            return None
    starts = idx.astype(np.int64) * 8
    sizes = size.astype(np.int64)
    if starts[-1] + sizes[-1] != len(buf) or (starts[1:] != starts[:-1] + sizes[:-1]).any():
        return None
    return starts + SAMPLE_HDR, raw.astype(np.int64)


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
        if head - tail < MIN_SAMPLE:
            return None
        base = self.data_off
        hdr = self.mm[base + tail % self.data_size : base + tail % self.data_size + 8]
        if int.from_bytes(hdr[:4], "little") != PERF_RECORD_SAMPLE:
            return None
        pos = (tail + SAMPLE_HDR + 24) % self.data_size
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
        self.parse_errors = 0
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
        """Drain every CPU's buffer; one batch in CPU order (perf has no cross-CPU order)."""
        chunks = []
        for b in self._bufs:
            chunk = b.take()
            if chunk:
                self.consumed_bytes += len(chunk)
                chunks.append(chunk)
        if not chunks:
            return Frames.empty()
        frames = None
        if len(chunks) > 1:
            # Every CPU's chunk holding samples of one size (a fixed-size event): joined, they are
            # one run, decoded in one pass (one copy, as joining decoded parts would make).
            joined = b"".join(chunks)
            run = uniform_samples(np.frombuffer(joined, dtype=np.uint8))
            if run is not None:
                frames = self._decode(joined, run)
        if frames is None:
            frames = Frames.concat([self._decode(c) for c in chunks])
        self.consumed += len(frames)
        return frames

    def _decode(self, chunk: bytes, run: tuple[int, int, int] | None = None) -> Frames:
        """Samples of one CPU: found in one vectorised pass when the chunk holds samples only,
        else walked header by header (a LOST record, a corrupt header). `run`: uniform_samples(chunk),
        when the caller has it."""
        buf = np.frombuffer(chunk, dtype=np.uint8)
        run = run or uniform_samples(buf)
        if run is not None:  # one size (a fixed-size event): strided headers, nothing gathered
            n, size, raw = run
            return self._frames(buf, np.arange(SAMPLE_HDR, n * size, size, dtype=np.int64), raw,
                                strided_headers(buf, SAMPLE_HDR, size, n))
        found = sample_chain(buf)
        if found is not None:
            return self._frames(buf, *found)
        at_parts: list[np.ndarray] = []
        room_parts: list[np.ndarray] = []
        one_at: list[int] = []
        one_room: list[int] = []
        words = memoryview(chunk).cast("I") if len(chunk) % 4 == 0 else memoryview(chunk[: len(chunk) & ~3]).cast("I")
        pos, end = 0, len(chunk)
        prev = 0  # size of the previous sample: two in a row of one size may start a run
        while end - pos >= 8:
            rtype = words[pos >> 2]
            size = words[(pos >> 2) + 1] >> 16
            if size < 8:
                break  # a corrupt header: nothing after it can be trusted
            if rtype == PERF_RECORD_SAMPLE:
                n = (end - pos) // size
                same, prev = size == prev, size
                if same and n > 8:  # maybe a run of samples of one size
                    heads = np.ndarray((n, 2), dtype="<u4", buffer=buf, offset=pos, strides=(size, 4))
                    odd = (heads[:, 0] != PERF_RECORD_SAMPLE) | ((heads[:, 1] >> 16) != size)
                    k = int(np.argmax(odd)) if odd.any() else n
                    if k > 1:
                        raw = np.ndarray((k,), dtype="<u4", buffer=buf, offset=pos + 8, strides=(size,))
                        at_parts.append(np.arange(pos + SAMPLE_HDR, pos + SAMPLE_HDR + k * size, size, dtype=np.int64))
                        room_parts.append(raw.astype(np.int64))
                        pos += k * size
                        continue
                one_at.append(pos + SAMPLE_HDR)
                one_room.append(words[(pos >> 2) + 2])
            elif rtype == PERF_RECORD_LOST:
                self.lost_reported += words[(pos >> 2) + 4] | (words[(pos >> 2) + 5] << 32)
            pos += size
        if one_at:
            at_parts.append(np.asarray(one_at, dtype=np.int64))
            room_parts.append(np.asarray(one_room, dtype=np.int64))
        if not at_parts:
            return Frames.empty()
        at = np.concatenate(at_parts)
        room = np.concatenate(room_parts)
        order = np.argsort(at, kind="stable") if len(at_parts) > 1 else None
        if order is not None:
            at, room = at[order], room[order]
        return self._frames(buf, at, room)

    def _frames(self, buf: np.ndarray, at: np.ndarray, room: np.ndarray | int,
                hdr: np.ndarray | None = None) -> Frames:
        """The records at `at` (raw sizes `room`) as Frames; unreadable ones counted as parse errors."""
        hdr = headers_at(buf, at) if hdr is None else hdr
        ok = validate(hdr, room)
        if not ok.all():
            self.parse_errors += int((~ok).sum())
            hdr, at = hdr[ok], at[ok]
        return Frames(hdr, buf, at + HDR_SIZE)

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
