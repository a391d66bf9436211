"""The data plane's per-record loops in C (native.c), built with the system's C compiler and
loaded through ctypes.

Both consumers' drains (walk, copy, header gather, checks), the window meter (lag, order,
epochs) and the payload comparison (digests, pairing) run there: in
numpy each drain cost some 30 calls of fixed overhead plus per-record passes, most of what the
agent cost (README, "What the agent costs"). The library is built once, next to its source, when
it is missing or was built from another version of native.c or of bpf/migrator.h (whose record
header it includes; scripts/setup.sh builds it up front); a machine where the package directory
is read-only builds it under ~/.cache/migrator instead.

    python -m migrator.dataplane.native      # build (if needed) and say where it is
"""
from __future__ import annotations

import ctypes as ct
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from migrator.dataplane.frames import HDR_SIZE, Frames, strided_headers
from migrator.errors import MigratorError
from migrator.shared.resources import bpf_dir

SOURCE = Path(__file__).with_name("native.c")
# Everything the library is built from: the per-drain passes, the hot loop (loop.c) and what they share.
SOURCES = (SOURCE, SOURCE.with_name("loop.c"), SOURCE.with_name("native.h"))
LIB_NAME = "_native.so"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-shared", "-fPIC"]
# native.c includes bpf/migrator.h for the record header (struct migrator_hdr): one layout.
HEADER = "migrator.h"
# res slots (native.c R_*)
R_END, R_N, R_ERRORS, R_BYTES, R_STRIDE, R_FIRST, R_LOST, R_NRES = range(8)

_P = ct.c_void_p
_U64 = ct.c_uint64
_lib: ct.CDLL | None = None


def _candidates() -> list[Path]:
    return [SOURCE.with_name(LIB_NAME), Path.home() / ".cache" / "migrator" / LIB_NAME]


def _digest() -> str:
    """sha256 of what the library is built from: its sources and the record header they include."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in (*SOURCES, bpf_dir() / HEADER))).hexdigest()


def compiler() -> str | None:
    """The C compiler builds use: $CC, else cc, else gcc (None: there is none)."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _fresh(lib: Path, digest: str) -> bool:
    """Whether lib was built from native.c as it is now (its stamp holds the source's sha256:
    file times lie after a checkout or with a skewed clock)."""
    try:
        return lib.exists() and lib.with_name(lib.name + ".sha256").read_text().strip() == digest
    except FileNotFoundError:
        return False


def build(quiet: bool = True) -> Path:
    """The built library, compiled now if missing or built from another native.c or migrator.h (under
    a lock, so processes starting together build it once); MigratorError with the fix when it cannot be."""
    digest = _digest()
    for lib in _candidates():
        if _fresh(lib, digest):
            return lib
    cc = compiler()
    if cc is None:
        raise MigratorError(f"no C compiler to build {SOURCE.name} (the data plane's record loops); "
                            "run `sudo bash scripts/setup.sh` (installs gcc), or set CC")
    errors = []
    for lib in _candidates():
        try:
            lib.parent.mkdir(parents=True, exist_ok=True)
            with open(lib.parent / (LIB_NAME + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if _fresh(lib, digest):  # another process built it while we waited
                    return lib
                fd, tmp = tempfile.mkstemp(prefix=LIB_NAME, dir=lib.parent)
                os.close(fd)
                try:
                    try:
                        units = [str(p) for p in SOURCES if p.suffix == ".c"]
                        done = subprocess.run([cc, *CFLAGS, f"-I{bpf_dir()}", "-o", tmp, *units, "-lm"],
                                              capture_output=True, text=True)
                    except FileNotFoundError:
                        raise MigratorError(f"the C compiler {cc} does not exist (to build {SOURCE.name}); run "
                                            "`sudo bash scripts/setup.sh` (installs gcc), or set CC") from None
                    if done.returncode:
                        raise MigratorError(f"building {SOURCE} with {cc} failed:\n{done.stderr.strip()}")
                    os.chmod(tmp, 0o755)
                    os.replace(tmp, lib)
                    lib.with_name(lib.name + ".sha256").write_text(digest + "\n")
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            if not quiet:
                print(f"native: built {lib} from {SOURCE.name} with {cc}", file=sys.stderr)
            return lib
        except PermissionError as exc:  # a read-only package directory: try the next place
            errors.append(f"{lib.parent}: {exc.strerror}")
    raise MigratorError(f"cannot build {LIB_NAME}: {'; '.join(errors)}")


def lib() -> ct.CDLL:
    """The loaded library (built on first use when needed)."""
    global _lib
    if _lib is None:
        so = ct.CDLL(str(build()))
        so.mg_ring_take.argtypes = [_P, _U64, _P, _P, _U64, _P, _U64, _P, _P, _U64, _P]
        so.mg_ring_take.restype = None
        so.mg_perf_pending.argtypes = [_P, ct.c_int, _P]
        so.mg_perf_pending.restype = _U64
        so.mg_perf_take.argtypes = [_P, _P, _P, _P, ct.c_int, _P, _P, _P, _U64, _P]
        so.mg_perf_take.restype = None
        so.mg_perf_walk.argtypes = [_P, _U64, _P, _P, _U64, _P]
        so.mg_perf_walk.restype = None
        so.mg_digests.argtypes = [_P, _P, _P, ct.c_int64, _U64, _P]
        so.mg_digests.restype = None
        so.mg_meter.argtypes = [_P, ct.c_int64, _U64, _P, _P, _U64, _P, ct.c_int64, _P, _P]
        so.mg_meter.restype = None
        so.mg_pair.argtypes = [_U64, _P, _P, _P, _P, _U64, _P, ct.c_int64, _P]
        so.mg_pair.restype = None
        so.mg_loop_slots.argtypes = []
        so.mg_loop_slots.restype = ct.c_char_p
        so.mg_loop_drain.argtypes = [_P]
        so.mg_loop_drain.restype = ct.c_int64
        so.mg_loop_run.argtypes = [_P, ct.c_int64]
        so.mg_loop_run.restype = ct.c_int
        _lib = so
    return _lib


def gathered(buf: np.ndarray, hdr: np.ndarray, off: np.ndarray, res: np.ndarray) -> tuple[Frames, list[int]]:
    """The batch a take or walk call left in (hdr, off) over buf, and its res slots as ints."""
    r = res.tolist()
    return frames_of(buf, hdr, off, r[R_N], r[R_STRIDE], r[R_FIRST]), r


def frames_of(buf: np.ndarray, hdr: np.ndarray, off: np.ndarray, n: int, stride: int, first: int) -> Frames:
    """The n records a drain gathered into (hdr, off) over buf.

    Records that are equally spaced and of one size (one event struct: `stride` set, the first at
    byte `first`) are handed out as a strided view of their headers in buf instead of the copies:
    the decode and compare paths have a faster form for that shape."""
    if not n:
        return Frames.empty()
    if stride:
        return Frames(strided_headers(buf, first, stride, n), buf,
                      np.arange(first + HDR_SIZE, first + HDR_SIZE + n * stride, stride, dtype=np.int64))
    return Frames(hdr[:n], buf, off[:n])


class Spares:
    """Reusable buffers for the drains' copies, headers and offsets.

    A buffer is handed out again once nothing references it any more (the batch it held was
    dropped: nobody kept its Frames, headers or a view of its bytes), so a steady stream does not
    allocate and free batch-sized blocks per drain: glibc returns such blocks to the kernel and
    each drain faults them back in, which costs more than the drain itself (a fault is
    microseconds in a VM). Several spares, as batches are held until their measuring pass
    (pipeline.MEASURE_EVERY_S); together at most `limit` bytes, beyond which buffers are
    allocated and freed as before.
    """

    def __init__(self, limit: int, count: int = 32) -> None:
        self.limit, self.count = limit, count
        self._spares: list[np.ndarray] = []
        self._addrs: list[int] = []  # each spare's address, for the native calls

    def take(self, n: int) -> tuple[np.ndarray, int]:
        """n bytes (uint8) that nothing else uses, and their address."""
        spares = self._spares
        for i in range(len(spares)):
            spare = spares[i]
            # References: the list, `spare`, and getrefcount's argument. More: a batch still uses it.
            if sys.getrefcount(spare) <= 3:
                if len(spare) < n:  # free but too small: grow it (the old block is freed)
                    spare = spares[i] = np.empty(min(max(n, 2 * len(spare)), max(n, self.limit)), np.uint8)
                    self._addrs[i] = addr(spare)
                return spare[:n], self._addrs[i]
        spare = np.empty(max(n, 1 << 16), np.uint8)
        if len(spares) < self.count and sum(len(x) for x in spares) + len(spare) <= self.limit:
            spares.append(spare)
            self._addrs.append(addr(spare))
        return spare[:n], addr(spare)

    def clear(self) -> None:
        """Drop every spare (the consumer is closing)."""
        self._spares, self._addrs = [], []


def addr(a: np.ndarray) -> int:
    """The address of a numpy array's first byte (a.ctypes: __array_interface__ spells out a
    structured dtype's description first, some 7 us a call)."""
    return a.ctypes.data


if __name__ == "__main__":
    fresh = [p for p in _candidates() if _fresh(p, _digest())]
    try:
        path = build(quiet=False)
    except MigratorError as exc:
        sys.exit(f"native: {exc}")
    if fresh:
        print(f"native: {path} is up to date with {SOURCE.name}", file=sys.stderr)
