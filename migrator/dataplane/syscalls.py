"""Syscall numbers per architecture, for the two syscalls libc has no wrapper for (bpf, perf_event_open)."""
from __future__ import annotations

import ctypes as ct
import platform

from migrator.errors import MigratorError

# From each architecture's unistd table (arch/*/entry/syscalls, include/uapi/asm-generic/unistd.h).
_NUMBERS = {
    "x86_64": {"bpf": 321, "perf_event_open": 298},
    "i686": {"bpf": 357, "perf_event_open": 336},
    "armv7l": {"bpf": 386, "perf_event_open": 364},
    "aarch64": {"bpf": 280, "perf_event_open": 241},
    "riscv64": {"bpf": 280, "perf_event_open": 241},
    "ppc64le": {"bpf": 361, "perf_event_open": 319},
    "s390x": {"bpf": 351, "perf_event_open": 331},
}

libc = ct.CDLL(None, use_errno=True)
libc.syscall.restype = ct.c_long


def number(name: str, machine: str | None = None) -> int:
    """The syscall number of `name` on this machine's architecture."""
    arch = machine or platform.machine()
    try:
        return _NUMBERS[arch][name]
    except KeyError:
        raise MigratorError(f"no syscall number for {name} on {arch}; supported: {', '.join(_NUMBERS)}") from None


# -1 on an unknown architecture: the call then fails with ENOSYS, which every caller reports.
NR_BPF = _NUMBERS.get(platform.machine(), {}).get("bpf", -1)
NR_PERF_EVENT_OPEN = _NUMBERS.get(platform.machine(), {}).get("perf_event_open", -1)
