"""Kernel-side counters of one channel, how they are read, and how they enter a window's books."""
from __future__ import annotations

import ctypes as ct
import errno
from dataclasses import dataclass

import numpy as np

from migrator.dataplane.syscalls import NR_BPF, libc

BPF_MAP_LOOKUP_BATCH = 24


class _BatchAttr(ct.Structure):
    """union bpf_attr's `batch` member (BPF_MAP_*_BATCH)."""

    _fields_ = [("in_batch", ct.c_uint64), ("out_batch", ct.c_uint64), ("keys", ct.c_uint64),
                ("values", ct.c_uint64), ("count", ct.c_uint32), ("map_fd", ct.c_uint32),
                ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


class PercpuSums:
    """Every slot of a BPF_PERCPU_ARRAY of u64, summed over CPUs, in one bpf(BPF_MAP_LOOKUP_BATCH):
    a window's close reads its channel's counters twice, and a lookup per counter through bcc cost
    140 us of the close's 520. `read()` is None when the kernel refuses the batch (the caller then
    looks up slot by slot)."""

    def __init__(self, map_fd: int, slots: int, cpus: int) -> None:
        self.slots = slots
        self._keys = np.zeros(slots, np.uint32)
        self._index = np.arange(slots, dtype=np.uint32)
        self._values = np.zeros((slots, cpus), np.uint64)  # a per-CPU u64 takes 8 bytes per possible CPU
        self._token = ct.c_uint32()
        self._attr = _BatchAttr(0, ct.addressof(self._token), self._keys.ctypes.data, self._values.ctypes.data,
                                slots, map_fd, 0, 0)
        self._size = ct.sizeof(self._attr)

    def read(self) -> list[int] | None:
        """The per-CPU sum of every slot, by index (None: the kernel would not read them in one batch)."""
        a = self._attr
        a.in_batch, a.count = 0, self.slots
        rc = libc.syscall(NR_BPF, BPF_MAP_LOOKUP_BATCH, ct.byref(a), self._size)
        if (rc != 0 and ct.get_errno() != errno.ENOENT) or a.count != self.slots:  # ENOENT: the map's end
            return None
        if not np.array_equal(self._keys, self._index):  # an array's batch comes in key order
            return None
        return self._values.sum(axis=1).tolist()


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
