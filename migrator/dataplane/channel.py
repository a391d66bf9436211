"""One migrator channel (bpf/migrator.h) of a loaded bcc program: its maps, mode and counters.

    bpf = load(text=open("tool.bpf.c").read(), cflags=["-DFOO=1"])   # prepare() + bcc
    ch = Channel(bpf, "events")
    ch.set_mode("DUAL")
    ch.perf_map.open_perf_buffer(cb)          # records: 32-byte header + payload
    bpf[ch.ring_name].open_ring_buffer(cb)
    ch.counters()["ring"].full

A record starts with MigratorHdr; parse it with header(data) and decode the operator's
struct with bpf["events"].event(payload_ptr(data)) (the anchor map carries the payload type).
"""
from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

from migrator.dataplane import rewrite
from migrator.dataplane.counters import Counters, PercpuSums
from migrator.dataplane.frames import (EPOCH_SHIFT, EPOCHS, FLAG_MODE_MASK, FLAG_RESERVED, FLAG_TRUNCATED, HDR_DTYPE,
                                       HDR_SIZE)
from migrator.dataplane.syscalls import NR_BPF, libc
from migrator.errors import BPFLoadError, ChannelError, OptionError, PrivilegeError
from migrator.shared.vocab import MODE_NAMES, MODE_VALUES, WORD_READER_SLEEPS

# Index order of the per-CPU counters in name__cnt (MIGRATOR_CNT_* in migrator.h).
COUNTERS = ("perf_attempts", "perf_ok", "perf_full", "perf_other",
            "ring_attempts", "ring_ok", "ring_full", "ring_other",
            "truncated", "copy_fail", "no_scratch", "discard",
            "perf_ns", "perf_timed", "ring_ns", "ring_timed")
EXTRA_COUNTERS = COUNTERS[8:12]
# What Counters carries, for perf and ring: the emit counts, and the timed emits' ns and number.
CHANNEL_COUNTERS = COUNTERS[:8] + COUNTERS[12:]
EPOCH_MASK = (EPOCHS - 1) << EPOCH_SHIFT  # bits 2-7 of the mode word
N_COUNTERS = len(COUNTERS)  # per epoch parity: name__cnt holds two sets
# The maps MIGRATOR_CHANNEL(name, bytes) declares, by suffix.
SUFFIXES = ("", "__perf", "__ring", "__mode", "__seq", "__cnt", "__scratch")
BPF_OBJ_GET_INFO_BY_FD = 15
# Capability bits of CapEff (linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
PRIVILEGE_FIX = ("run as root (sudo migrator ...), or grant CAP_BPF+CAP_PERFMON: "
                 "setcap cap_bpf,cap_perfmon+ep <python>, or setpriv --inh-caps/--ambient-caps +bpf,+perfmon")


def missing_bpf_caps(cap_eff: int) -> list[str]:
    """The capabilities an effective set lacks to load tracing BPF programs ([] if none is missing):
    CAP_SYS_ADMIN alone suffices, else both CAP_BPF and CAP_PERFMON are needed."""
    if cap_eff >> CAP_SYS_ADMIN & 1:
        return []
    return [name for name, bit in (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON)) if not cap_eff >> bit & 1]


def effective_caps(status_path: str = "/proc/self/status") -> int | None:
    """CapEff of this process, or None if it cannot be read (then nothing is refused up front)."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_bpf_privileges(what: str, cap_eff: int | None = None, euid: int | None = None) -> None:
    """Raise PrivilegeError naming the missing capabilities and the fix when this process (or the
    given CapEff mask) cannot load BPF programs; called before bcc compiles anything."""
    cap_eff = effective_caps() if cap_eff is None else cap_eff
    if cap_eff is None:
        return
    missing = missing_bpf_caps(cap_eff)
    if missing:
        raise PrivilegeError(what, os.geteuid() if euid is None else euid, missing, PRIVILEGE_FIX)


_CTYPES = {"<u2": ct.c_uint16, "<u4": ct.c_uint32, "<u8": ct.c_uint64}


class MigratorHdr(ct.Structure):
    """struct migrator_hdr: the 32 bytes in front of every record's payload, for reading one record
    at a time (a bcc callback's pointer). Its fields are frames.HDR_DTYPE's, the one layout."""

    _fields_ = [(name, _CTYPES[HDR_DTYPE.fields[name][0].str]) for name in HDR_DTYPE.names]

    @property
    def mode(self) -> str:
        """The mode the record was emitted in: "PERF", "DUAL" or "RING"."""
        return MODE_NAMES.get(self.flags & FLAG_MODE_MASK, "RING")

    @property
    def truncated(self) -> bool:
        """True if the payload was cut to MIGRATOR_MAX_PAYLOAD bytes (flag 0x100)."""
        return bool(self.flags & FLAG_TRUNCATED)

    @property
    def reserved(self) -> bool:
        """True if the record was written with MIGRATOR_RESERVE/SUBMIT, not MIGRATOR_OUTPUT (flag 0x200)."""
        return bool(self.flags & FLAG_RESERVED)


assert ct.sizeof(MigratorHdr) == HDR_SIZE


def _address(data) -> int:
    return data if isinstance(data, int) else ct.cast(data, ct.c_void_p).value


def header(data) -> MigratorHdr:
    """A copy of the header of the record at `data` (a perf or ring callback's pointer)."""
    return MigratorHdr.from_buffer_copy(ct.string_at(_address(data), HDR_SIZE))


def payload_ptr(data) -> int:
    """The address of the payload of the record at `data`: pass it to bpf["name"].event()."""
    return _address(data) + HDR_SIZE


def payload(data, size: int | None = None) -> bytes:
    """The payload bytes (`len` of them; at most `size` - 32 if the callback's size is given)."""
    n = header(data).len
    if size is not None:
        n = min(n, max(0, size - HDR_SIZE))
    return ct.string_at(payload_ptr(data), n)


class _MapInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
                ("rest", ct.c_uint8 * 96)]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


def map_max_entries(fd: int) -> int:
    """max_entries of the BPF map behind `fd`, from the kernel (BPF_OBJ_GET_INFO_BY_FD)."""
    info = _MapInfo()
    attr = _InfoAttr(fd, ct.sizeof(info), ct.addressof(info))
    if libc.syscall(NR_BPF, BPF_OBJ_GET_INFO_BY_FD, ct.byref(attr), ct.sizeof(attr)) != 0:
        err = ct.get_errno()
        raise ChannelError(f"map fd {fd}", f"BPF_OBJ_GET_INFO_BY_FD failed: {os.strerror(err)}")
    return info.max_entries


class Channel:
    """One MIGRATOR_CHANNEL(name, bytes) of a loaded bcc BPF object."""

    def __init__(self, bpf, name: str) -> None:
        self.bpf, self.name = bpf, name
        self._tables = {}
        self._cnt_sums: PercpuSums | None = None
        for suffix in SUFFIXES:
            try:
                self._tables[suffix] = bpf[name + suffix]
            except KeyError:
                raise ChannelError(name, f"the program has no map {name + suffix!r}: it is not a migrator channel "
                                   f"(declare it with MIGRATOR_CHANNEL({name}, ring_bytes); and load the text "
                                   "through migrator.dataplane.rewrite.prepare())") from None

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, mode={self.mode}, ring_bytes={self.ring_bytes})"

    @property
    def ring_name(self) -> str:
        """The table name of the ring channel, `name__ring` (bpf[ring_name].open_ring_buffer)."""
        return self.name + "__ring"

    @property
    def anchor(self):
        """The type anchor table `name`: its .event(payload_ptr) decodes the operator's struct."""
        return self._tables[""]

    @property
    def perf_map(self):
        """bcc's PerfEventArray `name__perf` (open_perf_buffer on it)."""
        return self._tables["__perf"]

    @property
    def ring_map(self):
        """bcc's RingBuf `name__ring` (open_ring_buffer on it)."""
        return self._tables["__ring"]

    @property
    def ring_map_fd(self) -> int:
        """The fd of the ring map `name__ring`."""
        return self.ring_map.map_fd

    @property
    def ring_bytes(self) -> int:
        """The ring's size in bytes (its max_entries)."""
        n = getattr(self.ring_map, "max_entries", None)
        return int(n) if n else map_max_entries(self.ring_map_fd)

    def _word(self) -> int:
        t = self._tables["__mode"]
        return int(t[t.Key(0)].value)

    def _write_word(self, word: int) -> None:
        t = self._tables["__mode"]
        t[t.Key(0)] = t.Leaf(word)

    def set_mode(self, mode: str) -> None:
        """Switch the channel to "PERF", "DUAL" or "RING"; the next record follows it (the epoch stays)."""
        if mode not in MODE_VALUES:
            raise OptionError("mode", mode, "is not a channel mode", f"use one of {', '.join(MODE_VALUES)}")
        self._write_word(MODE_VALUES[mode] | (self._word() & ~FLAG_MODE_MASK))

    @property
    def mode(self) -> str:
        """The mode the BPF side acts on (3 counts as RING)."""
        return MODE_NAMES.get(self._word() & FLAG_MODE_MASK, "RING")

    @property
    def epoch(self) -> int:
        """The epoch records are stamped with now (0..EPOCHS-1)."""
        return (self._word() >> EPOCH_SHIFT) % EPOCHS

    def set_epoch(self, epoch: int) -> None:
        """Stamp the next records with `epoch` (mod EPOCHS) and count them in its parity's set; the mode stays.

        Programs that read the old word may still be running: only after an RCU grace period
        (dataplane/grace.py) are the old epoch's counters final."""
        self._write_word((self._word() & ~EPOCH_MASK) | (epoch % EPOCHS) << EPOCH_SHIFT)

    def mode_map(self) -> tuple[int, int]:
        """(fd, value size) of the mode word's map (key 0), for a reader that sets the sleep bit itself (loop.c)."""
        t = self._tables["__mode"]
        return t.map_fd, ct.sizeof(t.Leaf)

    def reader_sleeps(self, on: bool) -> None:
        """Tell the producers (batched wakeups, bpf/migrator.h) that the reader sleeps until woken:
        while set, every ring write wakes it. The mode and the epoch stay."""
        w = self._word()
        self._write_word(w | WORD_READER_SLEEPS if on else w & ~WORD_READER_SLEEPS)

    @property
    def next_seq(self) -> int:
        """The seq the next record of this channel will get."""
        t = self._tables["__seq"]
        return t[t.Key(0)].value

    def raw_counters(self, parity: int | None = None, names: tuple[str, ...] = COUNTERS) -> dict[str, int]:
        """Counters of name__cnt (all of COUNTERS, or the ones named), summed over CPUs: of the epochs
        of one parity (0 even, 1 odd), or of both (None). One batch lookup of the whole map."""
        t = self._tables["__cnt"]
        sets = (0, 1) if parity is None else (parity & 1,)
        if self._cnt_sums is None:
            self._cnt_sums = PercpuSums(t.map_fd, 2 * N_COUNTERS, t.total_cpu)
        v = self._cnt_sums.read()
        if v is None:  # no batch lookup here: one lookup per counter and parity
            return {n: sum(int(sum(t[t.Key(p * N_COUNTERS + COUNTERS.index(n))])) for p in sets) for n in names}
        return {n: sum(v[p * N_COUNTERS + COUNTERS.index(n)] for p in sets) for n in names}

    def counters(self, parity: int | None = None) -> dict[str, Counters]:
        """{"perf": Counters, "ring": Counters}, summed over CPUs (and over both epoch parities
        unless one is given)."""
        c = self.raw_counters(parity, CHANNEL_COUNTERS)
        return {ch: Counters(c[f"{ch}_attempts"], c[f"{ch}_ok"], c[f"{ch}_full"], c[f"{ch}_other"],
                             c[f"{ch}_ns"], c[f"{ch}_timed"])
                for ch in ("perf", "ring")}

    def prog_fds(self) -> list[int]:
        """The fds of the program's loaded functions (run-time statistics cover the channel's writers)."""
        return [f.fd for f in self.bpf.funcs.values()]

    def refused(self, channel: str) -> int:
        """Records `channel` ("perf" or "ring") refused so far (full and other), summed over CPUs."""
        return sum(self.raw_counters(None, (f"{channel}_full", f"{channel}_other")).values())

    def extra_counters(self) -> dict[str, int]:
        """{"truncated", "copy_fail", "no_scratch", "discard"}, summed over CPUs."""
        return self.raw_counters(None, EXTRA_COUNTERS)


def load(text: str | None = None, src_file: str | None = None, cflags=(), **bpf_kwargs):
    """prepare() a program (text, or the file src_file) and compile it with bcc; returns the BPF
    object. The cflags given come after rewrite.cflags() (-I for migrator.h; a src_file's own
    directory is added too). bpf_kwargs go to bcc.BPF. Compile and load failures raise
    BPFLoadError (bcc prints the compiler's messages on stderr); a process without CAP_BPF and
    CAP_PERFMON (or CAP_SYS_ADMIN) gets PrivilegeError naming them before bcc runs."""
    if (text is None) == (src_file is None):
        raise OptionError("load", {"text": text is not None, "src_file": src_file}, "needs exactly one source",
                          "pass text= or src_file=")
    flags = rewrite.cflags()
    if src_file is not None:
        name = str(src_file)
        try:
            text = Path(src_file).read_text(encoding="utf-8")
        except OSError as e:
            raise BPFLoadError(name, f"cannot read it: {e.strerror or e}") from None
        flags.append(f"-I{Path(src_file).resolve().parent}")
    else:
        name = "<bpf text>"
    prepared = rewrite.prepare(text, filename=name)
    check_bpf_privileges(name)
    from bcc import BPF  # lazily: the rest of this module needs no bcc

    try:
        return BPF(text=prepared, cflags=[*flags, *cflags], **bpf_kwargs)
    except Exception as e:  # bcc raises bare Exception for compile, load and attach failures
        raise BPFLoadError(name, str(e)) from e
