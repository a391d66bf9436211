"""BPF program run time and run count from the kernel (bpf_prog_info.run_time_ns / run_cnt)."""
from __future__ import annotations

import ctypes as ct
import os
from migrator.dataplane.syscalls import NR_BPF, libc as _libc

BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
INFO_SIZE = 232  # sizeof(struct bpf_prog_info) in the 6.1 uapi; the kernel accepts a prefix
OFF_RUN_TIME_NS, OFF_RUN_CNT = 192, 200



class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class _StatsAttr(ct.Structure):
    _fields_ = [("type", ct.c_uint32)]


def enable_stats() -> int | None:
    """Turn run-time accounting on for as long as the returned fd stays open (None if refused).

    Falls back to nothing: `kernel.bpf_stats_enabled=1` set by the operator works as well.
    """
    attr = _StatsAttr(BPF_STATS_RUN_TIME)
    fd = _libc.syscall(NR_BPF, BPF_ENABLE_STATS, ct.byref(attr), ct.sizeof(attr))
    return int(fd) if fd >= 0 else None


def prog_run_stats(prog_fds: list[int]) -> tuple[int, int]:
    """Sum of (run_time_ns, run_cnt) over programs; zeros where accounting is off."""
    total_ns = total_cnt = 0
    buf = (ct.c_uint8 * INFO_SIZE)()
    for fd in prog_fds:
        ct.memset(buf, 0, INFO_SIZE)
        attr = _InfoAttr(fd, INFO_SIZE, ct.addressof(buf))
        if _libc.syscall(NR_BPF, BPF_OBJ_GET_INFO_BY_FD, ct.byref(attr), ct.sizeof(attr)) < 0:
            continue
        total_ns += ct.c_uint64.from_buffer(buf, OFF_RUN_TIME_NS).value
        total_cnt += ct.c_uint64.from_buffer(buf, OFF_RUN_CNT).value
    return total_ns, total_cnt


def stats_on(fd: int | None, sysctl: str = "/proc/sys/kernel/bpf_stats_enabled") -> bool:
    """Whether run times are being accounted: our enable_stats() fd, or the operator's sysctl."""
    if fd is not None:
        return True
    try:
        with open(sysctl) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def close_stats(fd: int | None) -> None:
    """Give up the run-time accounting enable_stats() turned on (None: nothing to give up)."""
    if fd is not None:
        os.close(fd)
