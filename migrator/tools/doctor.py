"""Host checks for `migrator doctor`: one function per requirement, each returning a Check.

Every check reads the real machine; paths are parameters so tests can point a check at another
file. Checks never raise: a check that cannot observe its requirement reports that as its value.
"""
from __future__ import annotations

import ctypes
import errno
import gzip
import os
import platform
import re
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from migrator.dataplane.syscalls import NR_BPF, libc
from migrator.shared.resources import DEBIAN_BCC_DIR

SETUP = "bash scripts/setup.sh"

REQUIRED = "required"  # a failure makes doctor exit 1
WARN = "warn"  # a failure is shown as WARN and does not change the exit code

# Capability bits in CapEff (linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

MIN_KERNEL_RINGBUF = (5, 8)
# From 5.11 BPF maps are charged to the memory cgroup instead of RLIMIT_MEMLOCK.
MIN_KERNEL_MEMCG = (5, 11)
MIN_MEMLOCK_BYTES = 64 << 20

BPF_MAP_CREATE = 0
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_RINGBUF = 27



@dataclass(frozen=True)
class Check:
    """One requirement as observed on this host."""

    name: str
    ok: bool
    value: str
    fix: str = ""
    severity: str = REQUIRED

    @property
    def status(self) -> str:
        """OK, FAIL (required check failed) or WARN (advisory check failed)."""
        if self.ok:
            return "OK"
        return "FAIL" if self.severity == REQUIRED else "WARN"

    @property
    def blocking(self) -> bool:
        """True if this check makes doctor fail."""
        return not self.ok and self.severity == REQUIRED

    def to_dict(self) -> dict:
        """The JSON shape: name, ok, value, fix (plus status, to tell WARN from FAIL)."""
        d = asdict(self)
        del d["severity"]
        d["status"] = self.status
        return d


# --- helpers -------------------------------------------------------------------------------

def parse_kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) from a `uname -r` string such as '6.18.44-fc-v769', or None."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_mounts(mounts_path: str = "/proc/mounts") -> list[tuple[str, str, str, str]]:
    """(source, mountpoint, fstype, options) for every line of a /proc/mounts-style file."""
    out = []
    for line in Path(mounts_path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            # /proc/mounts escapes blanks in paths as octal (\040).
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            out.append((parts[0], mp, parts[2], parts[3]))
    return out


def _mount_type(mountpoint: str, mounts_path: str) -> str | None:
    """The fstype of the topmost mount at mountpoint, or None if nothing is mounted there."""
    fstype = None
    for _src, mp, typ, _opts in read_mounts(mounts_path):
        if mp == mountpoint:
            fstype = typ  # later lines are mounted on top of earlier ones
    return fstype


def _fmt_bytes(n: int) -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


# --- checks --------------------------------------------------------------------------------

def check_privileges(status_path: str = "/proc/self/status") -> Check:
    """Root-equivalent: CAP_SYS_ADMIN, or CAP_BPF and CAP_PERFMON, in the effective set."""
    name = "privileges"
    fix = "run as root (sudo migrator ...), or grant CAP_BPF and CAP_PERFMON: setcap cap_bpf,cap_perfmon+ep <python>"
    try:
        text = Path(status_path).read_text()
        m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", text, re.M)
        if not m:
            return Check(name, False, f"no CapEff line in {status_path}", fix)
        cap = int(m.group(1), 16)
    except OSError as exc:
        return Check(name, False, f"cannot read {status_path}: {exc.strerror}", fix)
    have = {n: bool(cap >> bit & 1) for n, bit in
            (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))}
    ok = have["CAP_SYS_ADMIN"] or (have["CAP_BPF"] and have["CAP_PERFMON"])
    listed = ", ".join(n for n, v in have.items() if v) or "none of CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN"
    value = f"euid {os.geteuid()}, CapEff 0x{cap:016x} ({listed})"
    return Check(name, ok, value, "" if ok else fix)


def check_kernel(release: str | None = None) -> Check:
    """Kernel new enough for BPF ring buffer (5.8)."""
    release = release or platform.release()
    ver = parse_kernel_version(release)
    need = ".".join(map(str, MIN_KERNEL_RINGBUF))
    if ver is None:
        return Check("kernel", False, f"{release} (unparseable)", f"run a Linux kernel >= {need}")
    ok = ver >= MIN_KERNEL_RINGBUF
    return Check("kernel", ok, f"{release} (need >= {need})",
                 "" if ok else f"boot a kernel >= {need}: BPF ring buffer does not exist before it")


def check_btf(path: str = "/sys/kernel/btf/vmlinux") -> Check:
    """Kernel BTF is exposed."""
    fix = "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as exc:
        return Check("btf", False, f"{path}: {exc.strerror}", fix)
    # BTF magic 0xeB9F, little- or big-endian.
    if magic not in (b"\x9f\xeb", b"\xeb\x9f"):
        return Check("btf", False, f"{path} is not BTF (magic {magic.hex()})", fix)
    return Check("btf", True, f"{path} ({size // 1024} KiB)")


class _MapCreateAttr(ctypes.Structure):
    # The BPF_MAP_CREATE prefix of union bpf_attr; the kernel accepts a shorter attr
    # as long as we pass its true size.
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    ]


def bpf_map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: bytes = b"") -> int:
    """Create a BPF map with bpf(2) and return its fd; raises OSError with the kernel's errno."""
    if NR_BPF < 0:
        raise OSError(errno.ENOSYS, f"bpf syscall number unknown for {platform.machine()}")
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_name=name[:15])
    fd = libc.syscall(ctypes.c_long(NR_BPF), ctypes.c_int(BPF_MAP_CREATE), ctypes.byref(attr),
                      ctypes.c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _probe_map(name: str, map_type: int, key: int, value: int, entries: int, fix: str) -> Check:
    what = f"map_type {map_type}, key {key}, value {value}, max_entries {entries}"
    try:
        fd = bpf_map_create(map_type, key, value, entries, b"mig_doctor")
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        hint = fix
        if exc.errno == errno.EPERM:
            hint = "run as root (or with CAP_BPF); check lockdown and kernel.unprivileged_bpf_disabled"
        elif exc.errno == errno.ENOSYS:
            hint = "boot a kernel built with CONFIG_BPF_SYSCALL=y"
        return Check(name, False, f"BPF_MAP_CREATE failed: {code} {exc.strerror} ({what})", hint)
    os.close(fd)
    return Check(name, True, f"created and closed ({what})")


def check_ringbuf_map() -> Check:
    """The kernel can create a BPF_MAP_TYPE_RINGBUF map."""
    return _probe_map("ringbuf", BPF_MAP_TYPE_RINGBUF, 0, 0, 4096,
                      "boot a kernel >= 5.8 with CONFIG_BPF_SYSCALL=y")


def check_perf_event_array_map(ncpus: int | None = None) -> Check:
    """The kernel can create a BPF_MAP_TYPE_PERF_EVENT_ARRAY map with one slot per CPU."""
    ncpus = ncpus or os.cpu_count() or 1
    return _probe_map("perf_event_array", BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, ncpus,
                      "boot a kernel with CONFIG_BPF_SYSCALL=y and CONFIG_BPF_EVENTS=y")


def check_tracefs(mountpoint: str = "/sys/kernel/tracing", mounts_path: str = "/proc/mounts") -> Check:
    """tracefs is mounted at mountpoint and has events/ (tracepoint formats and ids)."""
    fix = f"mount -t tracefs nodev {mountpoint} (or: {SETUP})"
    try:
        typ = _mount_type(mountpoint, mounts_path)
    except OSError as exc:
        return Check("tracefs", False, f"cannot read {mounts_path}: {exc.strerror}", fix)
    if typ is None:
        return Check("tracefs", False, f"nothing mounted at {mountpoint}", fix)
    if typ != "tracefs":
        return Check("tracefs", False, f"{mountpoint} is {typ}, not tracefs", fix)
    if not os.access(mountpoint, os.R_OK | os.X_OK):  # mounted, but (mode 0700, say) closed to this user
        try:
            st = os.stat(mountpoint)
            mode = f"mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}"
        except OSError as exc:
            mode = exc.strerror or str(exc)
        return Check("tracefs", False, f"tracefs is mounted at {mountpoint} but unreadable to euid {os.geteuid()} "
                     f"({mode})", "run as root (sudo migrator ...), or remount it readable: "
                     f"mount -o remount,mode=0755 {mountpoint}")
    if not os.path.isdir(os.path.join(mountpoint, "events")):
        return Check("tracefs", False, f"tracefs at {mountpoint} has no events/ directory",
                     "boot a kernel with CONFIG_EVENT_TRACING=y (tracepoints)")
    return Check("tracefs", True, f"tracefs at {mountpoint}, events/ present")


def check_bpffs(mountpoint: str = "/sys/fs/bpf", mounts_path: str = "/proc/mounts") -> Check:
    """bpffs is mounted at mountpoint (for pinning maps and programs)."""
    fix = f"mount -t bpf bpf {mountpoint} (or: {SETUP})"
    try:
        typ = _mount_type(mountpoint, mounts_path)
    except OSError as exc:
        return Check("bpffs", False, f"cannot read {mounts_path}: {exc.strerror}", fix)
    if typ is None:
        return Check("bpffs", False, f"nothing mounted at {mountpoint}", fix)
    if typ != "bpf":
        return Check("bpffs", False, f"{mountpoint} is {typ}, not bpf", fix)
    return Check("bpffs", True, f"bpf at {mountpoint}")


def check_kernel_headers(release: str | None = None, modules_dir: str = "/lib/modules") -> Check:
    """bcc can find headers at <modules_dir>/<release>/build/include."""
    release = release or platform.release()
    build = os.path.join(modules_dir, release, "build")
    include = os.path.join(build, "include")
    fix = f"{SETUP} (installs linux-headers-amd64 and links {build} and source to it)"
    if not os.path.isdir(include):
        return Check("kernel_headers", False, f"{include} missing", fix)
    real = os.path.realpath(build)
    value = include if real == build else f"{build} -> {real}"
    return Check("kernel_headers", True, value)


def _import_bcc(search_path: list[str] | None):
    """`import bcc`; with search_path, the `bcc` found first in those directories instead (the
    module is not registered in sys.modules, so the process's own bcc is left alone)."""
    if search_path is None:
        import bcc  # noqa: PLC0415 - importing is the check

        return bcc
    import importlib.machinery  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    spec = importlib.machinery.PathFinder.find_spec("bcc", list(search_path))
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("No module named 'bcc'", name="bcc")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_bcc(debian_dir: str = DEBIAN_BCC_DIR, search_path: list[str] | None = None) -> Check:
    """Debian's python3-bpfcc `bcc` module imports here (and it is not PyPI's unrelated `bcc`).

    search_path: directories to find `bcc` in instead of sys.path (tests point it at fakes).
    """
    then = f"migrator then finds Debian's in {debian_dir} under any python3"
    try:
        bcc = _import_bcc(search_path)
    except Exception as exc:  # libbcc.so missing raises OSError, not ImportError
        return Check("bcc", False, f"import bcc failed: {type(exc).__name__}: {exc}",
                     f"apt-get install python3-bpfcc ({then})")
    where = getattr(bcc, "__file__", None) or "?"
    real = os.path.realpath(where) if where != "?" else where
    shown = os.path.dirname(real) + ("" if real == where else f" (via link {os.path.dirname(where)})")
    if not hasattr(bcc, "BPF"):
        return Check("bcc", False, f"{shown} has no bcc.BPF (PyPI's unrelated 'bcc'?)",
                     f"pip uninstall bcc (PyPI's 'bcc' is another project; {then})")
    base = os.path.realpath(debian_dir) + os.sep
    if not real.startswith(base):
        # the import-path entry that supplied it: the parent of a bcc/ package, or of bcc.py
        entry = os.path.dirname(os.path.dirname(where) if os.path.basename(where) == "__init__.py" else where)
        return Check("bcc", False, f"{shown} is not under {debian_dir} (not Debian's python3-bpfcc)",
                     f"remove the bcc in {entry} from the import path ({then})")
    return Check("bcc", True, f"bcc.BPF from {os.path.dirname(real)}" + ("" if real == where else " (linked into the venv)"))


def check_lockdown(path: str = "/sys/kernel/security/lockdown", mounts_path: str = "/proc/mounts") -> Check:
    """Lockdown is not `confidentiality` (which blocks reading kernel memory from BPF)."""
    secdir = os.path.dirname(path)
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        try:
            mounted = _mount_type(secdir, mounts_path) == "securityfs"
        except OSError:
            mounted = False
        if not mounted:
            return Check("lockdown", False, f"unknown: securityfs not mounted at {secdir}",
                         f"mount -t securityfs securityfs {secdir} (or: {SETUP})", WARN)
        return Check("lockdown", True, "none (no lockdown LSM in this kernel)")
    except OSError as exc:
        return Check("lockdown", False, f"unknown: cannot read {path}: {exc.strerror}",
                     "run as root to read it", WARN)
    m = re.search(r"\[(\w+)\]", text)
    if not m:
        return Check("lockdown", False, f"unknown: {text!r}", "", WARN)
    mode = m.group(1)
    if mode == "confidentiality":
        return Check("lockdown", False, f"{mode} (blocks bpf_probe_read and perf/ring output of kernel data)",
                     "boot with lockdown=integrity or lockdown=none (or without Secure Boot enforcement)")
    return Check("lockdown", True, mode)


def check_memlock(release: str | None = None, limit: int | None = None) -> Check:
    """RLIMIT_MEMLOCK is enough for the maps: any value on >= 5.11 (memcg accounting), else >= 64 MiB."""
    release = release or platform.release()
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    ver = parse_kernel_version(release)
    memcg = ver is not None and ver >= MIN_KERNEL_MEMCG
    enough = limit == resource.RLIM_INFINITY or limit >= MIN_MEMLOCK_BYTES
    if memcg:
        return Check("memlock", True, f"{_fmt_bytes(limit)} (not used: kernel >= 5.11 charges BPF maps to memcg)")
    value = f"{_fmt_bytes(limit)} (kernel {release} < 5.11 charges BPF maps to RLIMIT_MEMLOCK; need >= 64 MiB)"
    return Check("memlock", enough, value,
                 "" if enough else "ulimit -l unlimited (or prlimit --memlock=unlimited --pid $$)")


def check_kprobes(config_path: str = "/proc/config.gz") -> Check:
    """Informational: whether kprobes exist. migrator uses tracepoints only, so never fails."""
    state = "unknown"
    try:
        with gzip.open(config_path, "rt") as f:
            for line in f:
                if line.startswith("CONFIG_KPROBES="):
                    state = "available"
                    break
                if line.startswith("# CONFIG_KPROBES is not set"):
                    state = "absent (CONFIG_KPROBES off)"
                    break
    except OSError:
        pass
    return Check("kprobes", True, f"{state}; not required: migrator attaches to tracepoints only", "", WARN)


def check_bpf_sources(directory: Path | None = None) -> Check:
    """The BPF sources migrator compiles (migrator.h, demo.h and the demo probes) are where the package says."""
    from migrator.shared.vocab import PROBES
    from migrator.shared.resources import bpf_dir

    where = directory or bpf_dir()
    missing = [name for name in ("migrator.h", "demo.h", *PROBES.values()) if not (where / name).is_file()]
    if missing:
        return Check("bpf_sources", False, f"{where}: missing {', '.join(missing)}",
                     "reinstall migrator (the wheel ships bpf/ as migrator.bpf)")
    return Check("bpf_sources", True, str(where))


# (name, check) in display order; the name is also used if a check itself crashes.
CHECKS: tuple[tuple[str, Callable[[], Check]], ...] = (
    ("privileges", check_privileges),
    ("kernel", check_kernel),
    ("btf", check_btf),
    ("ringbuf", check_ringbuf_map),
    ("perf_event_array", check_perf_event_array_map),
    ("tracefs", check_tracefs),
    ("bpffs", check_bpffs),
    ("kernel_headers", check_kernel_headers),
    ("bcc", check_bcc),
    ("lockdown", check_lockdown),
    ("memlock", check_memlock),
    ("kprobes", check_kprobes),
    ("bpf_sources", check_bpf_sources),
)
CHECK_NAMES = tuple(name for name, _ in CHECKS)


def run_checks() -> list[Check]:
    """Run every host check against this machine, in display order."""
    results = []
    for name, fn in CHECKS:
        try:
            results.append(fn())
        except Exception as exc:  # a broken check must not hide the others
            results.append(Check(name, False, f"check crashed: {type(exc).__name__}: {exc}",
                                 "report this as a migrator bug"))
    return results


def all_ok(checks: list[Check]) -> bool:
    """True if no required check failed (WARNs do not count)."""
    return not any(c.blocking for c in checks)
