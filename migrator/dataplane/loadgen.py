"""Synthetic event generator: a child process making `count` getppid() calls at `rate` per second.

Run as `python -m migrator.dataplane.loadgen COUNT RATE [PARENT_PID [CPUS]]`; it waits for one byte on stdin
before starting so the parent can point the probe's target map at its pid first. rate 0 means as
fast as possible. The child dies with its parent: PR_SET_PDEATHSIG(SIGKILL), then a check that the
parent (PARENT_PID) is still the one it was started by, since the parent may die before the prctl.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """In a child: get `sig` when the parent dies (PR_SET_PDEATHSIG), and exit now if it already has
    (re-parented: its parent pid is no longer parent_pid). Safe as a Popen preexec_fn."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent_pid is not None and _ppid() != parent_pid:
        os._exit(1)


def _ppid() -> int:
    # Not os.getppid(): getppid() calls are the synthetic probe's events, and the parent may already
    # target this pid; /proc/self/stat's 4th field is the same value without the syscall.
    with open("/proc/self/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _on_cpus(count: int, rate: float, cpus: int) -> None:
    """`cpus` threads of this one process (one tgid: the probe's target), thread i pinned to CPU i,
    each making count / cpus calls at rate / cpus through libc (ctypes lets go of the GIL for the
    call, so the emits of the threads overlap in the kernel: the ring's lock is contended)."""
    import threading

    libc = ctypes.CDLL(None)

    def one(i: int, n: int) -> None:
        os.sched_setaffinity(0, {i % os.cpu_count()})
        _generate(n, rate / cpus, libc.getppid)

    share = [count // cpus + (1 if i < count % cpus else 0) for i in range(cpus)]
    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(share)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _generate(count: int, rate: float, getppid=os.getppid) -> None:
    if rate <= 0:  # as fast as possible
        for _ in range(count):
            getppid()
        return
    tick = 0.001
    per_tick = max(1, int(rate * tick))
    start = time.perf_counter()
    done = 0
    while done < count:
        n = min(per_tick, count - done)
        for _ in range(n):
            getppid()
        done += n
        ahead = start + done / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)


class LoadGen:
    """Handle on a generator child: start() releases it, wait() reaps it."""

    def __init__(self, count: int, rate: float = 0, cpus: int = 1) -> None:
        self.count, self.rate = count, rate
        self.proc = subprocess.Popen([sys.executable, "-m", "migrator.dataplane.loadgen", str(count), str(rate),
                                      str(os.getpid()), str(cpus)], stdin=subprocess.PIPE)

    @property
    def pid(self) -> int:
        """The child's pid, for the synthetic probe's target map."""
        return self.proc.pid

    def start(self) -> None:
        """Let the child start its calls (once the probe targets its pid)."""
        self.proc.stdin.write(b"g")
        self.proc.stdin.close()

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the child has made all its calls; returns its exit code."""
        return self.proc.wait(timeout)

    def running(self) -> bool:
        """True while the child is still generating events."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """Stop the child now if it is still running, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "LoadGen":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


if __name__ == "__main__":
    n, r = int(sys.argv[1]), float(sys.argv[2])
    die_with_parent(int(sys.argv[3]) if len(sys.argv) > 3 else None)
    if not sys.stdin.buffer.read(1):  # the parent closed stdin without starting us (or died): nothing to do
        sys.exit(0)
    cpus = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    if cpus > 1:
        _on_cpus(n, r, cpus)
    else:
        _generate(n, r)
