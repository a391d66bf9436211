"""An RCU grace period on demand: after wait() returns, no BPF program that was running when it
was called is still running.

The kernel has no "wait for BPF programs" syscall, but it does promise one as a side effect:
after updating an element of a map-in-map (ARRAY_OF_MAPS / HASH_OF_MAPS) from userspace,
bpf(BPF_MAP_UPDATE_ELEM) calls synchronize_rcu() before returning, so that "userspace, when we
return to it, knows that all non-sleepable programs that could be running use the new map value"
(kernel/bpf/syscall.c, maybe_wait_bpf_programs). Tracepoint, raw tracepoint and tc programs all
run inside RCU read-side sections, so the wait covers every program that may write a channel.
Measured here: about 8 ms per wait, against 6 us for a plain array update.

The window books use it: userspace moves the channel to the next epoch, then waits one grace
period; the old epoch's counters are then final (bpf/migrator.h EPOCHS).
"""
from __future__ import annotations

import ctypes as ct
import os
import threading

from migrator.dataplane.syscalls import NR_BPF, libc
from migrator.errors import ChannelError

BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12


class _CreateAttr(ct.Structure):
    _fields_ = [("map_type", ct.c_uint32), ("key_size", ct.c_uint32), ("value_size", ct.c_uint32),
                ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32), ("inner_map_fd", ct.c_uint32),
                ("rest", ct.c_uint8 * 104)]


class _ElemAttr(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32), ("pad", ct.c_uint32), ("key", ct.c_uint64), ("value", ct.c_uint64),
                ("flags", ct.c_uint64)]


def _create(map_type: int, inner_fd: int = 0) -> int:
    attr = _CreateAttr(map_type, 4, 4, 1, 0, inner_fd)
    fd = libc.syscall(NR_BPF, BPF_MAP_CREATE, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        err = ct.get_errno()
        raise ChannelError("grace period", f"cannot create the map-in-map it waits on: {os.strerror(err)} "
                                           "(run as root or with CAP_BPF; see `migrator doctor`)")
    return int(fd)


class GracePeriod:
    """Waits for an RCU grace period by updating a private one-slot ARRAY_OF_MAPS."""

    def __init__(self) -> None:
        self._inner = _create(BPF_MAP_TYPE_ARRAY)
        try:
            self._outer = _create(BPF_MAP_TYPE_ARRAY_OF_MAPS, self._inner)
        except Exception:
            os.close(self._inner)
            raise
        self._key, self._value = ct.c_uint32(0), ct.c_uint32(self._inner)
        self._lock = threading.Lock()
        self._calls = threading.Lock()
        self._go = threading.Semaphore(0)
        self._request: tuple | None = None
        self._worker: threading.Thread | None = None

    def wait(self) -> None:
        """Return once every BPF program running at the call has finished (releases the GIL)."""
        attr = _ElemAttr(self._outer, 0, ct.addressof(self._key), ct.addressof(self._value), 0)
        with self._lock:
            rc = libc.syscall(NR_BPF, BPF_MAP_UPDATE_ELEM, ct.byref(attr), ct.sizeof(attr))
        if rc != 0:
            err = ct.get_errno()
            raise ChannelError("grace period", f"map-in-map update failed: {os.strerror(err)}")

    def wait_while(self, work, step: float = 0.002, wake_fd: int | None = None) -> None:
        """Wait for a grace period in a thread, calling work(step) until it has passed (the caller keeps
        draining its buffers meanwhile: a wait is about 8 ms, enough to fill a small perf buffer).
        wake_fd: an eventfd the caller's work waits on too; the thread writes it when the period has
        passed, so work may wait longer steps and still return at once (its count is read here).

        The thread is started once and waits for the next request: a window closes every second,
        and starting a thread for each cost about half the close's grace period in CPU."""
        with self._calls:  # one request at a time
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="migrator-grace", daemon=True)
                self._worker.start()
            done, failure = threading.Event(), []
            self._request = (done, failure, wake_fd)
            self._go.release()
            while not done.is_set():
                work(step)
            if wake_fd is not None:
                try:
                    os.eventfd_read(wake_fd)  # not left to end the caller's next wait
                except BlockingIOError:  # work() read it already
                    pass
            if failure:
                raise failure[0]

    def _serve(self) -> None:
        """The waiting thread: one grace period per request, until close()."""
        while True:
            self._go.acquire()
            if self._request is None:
                return  # closed
            done, failure, wake_fd = self._request
            self._request = None
            try:
                self.wait()
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
                failure.append(exc)
            finally:
                if wake_fd is not None:
                    os.eventfd_write(wake_fd, 1)
                done.set()

    def close(self) -> None:
        """Stop the waiting thread, release both maps."""
        if getattr(self, "_worker", None) is not None:
            with self._calls:
                self._request = None
                self._go.release()
                self._worker.join()
                self._worker = None
        for fd in (getattr(self, "_outer", None), getattr(self, "_inner", None)):
            if fd is not None:
                os.close(fd)
        self._outer = self._inner = None
