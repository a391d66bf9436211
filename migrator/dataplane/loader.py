"""Load a probe from bpf/ through bcc, expose its mode map, target and per-channel counters."""
from __future__ import annotations

import ctypes as ct
import os
import re
from dataclasses import dataclass

from migrator.resources import bpf_dir
from migrator.errors import BPFLoadError, MigratorError
from migrator.vocab import MODE_NAMES, MODE_VALUES

PROBES = {"synthetic": "synthetic.bpf.c", "proc": "proc.bpf.c", "tc": "tc_packet.bpf.c"}
WAKEUPS = {"adaptive": 0, "no_wakeup": 1, "force_wakeup": 2}
SUBMITS = {"reserve": 0, "output": 1}
PAGE = os.sysconf("SC_PAGE_SIZE")
CH_PERF, CH_RING = 0, 1


class ChanCounters(ct.Structure):
    """One CPU's counters of one channel, laid out as emit.h's struct chan_counters."""

    _fields_ = [("attempts", ct.c_uint64), ("ok", ct.c_uint64), ("full", ct.c_uint64), ("other", ct.c_uint64)]


@dataclass(frozen=True)
class Counters:
    """Kernel-side counters of one channel, summed over CPUs."""

    attempts: int = 0
    ok: int = 0
    full: int = 0
    other: int = 0

    def __sub__(self, o: "Counters") -> "Counters":
        return Counters(self.attempts - o.attempts, self.ok - o.ok, self.full - o.full, self.other - o.other)

    def losses(self, channel: str) -> "Losses":
        """How this channel's refusals enter the books: dropped by cause, and lost.

        perf's -ENOSPC is the kernel's own "lost" (what PERF_RECORD_LOST reports); a ring
        refusal is a drop, attributed to "full" or "other" by emit.h at failure time.
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


def render_source(probe: str) -> str:
    """The C text handed to bcc: the probe with our own local headers inlined.

    bcc rewrites map method calls (`map.lookup()`, `ring.ringbuf_reserve()`) only in its main
    file, so the shared emit library must be part of it rather than a real #include.
    """
    try:
        path = bpf_dir() / PROBES[probe]
    except KeyError:
        raise MigratorError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}") from None

    def inline(m: re.Match) -> str:
        inc = bpf_dir() / m.group(1)
        return f"/* ---- inlined {inc.name} ---- */\n{inc.read_text()}\n/* ---- end {inc.name} ---- */\n"

    return re.sub(r'^#include "([^"]+)"[ \t]*$', inline, path.read_text(), flags=re.M)


def _check_pow2_pages(ring_bytes: int) -> None:
    if ring_bytes < PAGE or ring_bytes % PAGE or (ring_bytes & (ring_bytes - 1)):
        raise MigratorError(f"ring size {ring_bytes} must be a power of two and at least {PAGE} bytes")


class Probe:
    """One loaded probe: its programs, mode map, counters and both channels' maps."""

    def __init__(
        self,
        probe: str = "synthetic",
        ring_bytes: int = 16 << 20,
        ring_submit: str = "reserve",
        wakeup: str = "adaptive",
        print_c: bool = False,
        extra_cflags: tuple[str, ...] = (),
    ) -> None:
        from bcc import BPF  # Debian's python3-bpfcc; imported late so non-kernel commands work without it

        _check_pow2_pages(ring_bytes)
        if wakeup not in WAKEUPS:
            raise MigratorError(f"wakeup {wakeup!r} unknown; choose one of {', '.join(WAKEUPS)}")
        if ring_submit not in SUBMITS:
            raise MigratorError(f"ring_submit {ring_submit!r} unknown; choose one of {', '.join(SUBMITS)}")
        self.name = probe
        self.ring_bytes = ring_bytes
        self.wakeup = wakeup
        self.ring_submit = ring_submit
        text = render_source(probe)
        cflags = [
            f"-DRING_PAGES={ring_bytes // PAGE}",
            f"-DRING_SUBMIT_OUTPUT={SUBMITS[ring_submit]}",
            f"-DRING_WAKEUP_FLAGS={WAKEUPS[wakeup]}",
            *extra_cflags,
        ]
        if print_c:
            print(f"/* cflags: {' '.join(cflags)} */\n{text}")
        try:
            self.bpf = BPF(text=text, cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception with the compiler/verifier text on stderr
            raise BPFLoadError(probe, str(exc)) from None
        self._ncpu = len(self.bpf["counters"][ct.c_int(0)])
        # The ring again as an inner map, so the kernel can attribute ring refusals (see emit.h).
        self.bpf["ring_ref"][ct.c_int(0)] = ct.c_int(self.ring_map_fd)
        self.tc_fn = None
        if probe == "tc":
            try:
                self.tc_fn = self.bpf.load_func("tc_packet", BPF.SCHED_CLS)
            except Exception as exc:
                raise BPFLoadError(probe, str(exc)) from None

    # -- maps ---------------------------------------------------------------------------------
    @property
    def ring_map_fd(self) -> int:
        """The ring buffer map's fd, for the ring consumer to mmap."""
        return self.bpf["events_ring"].map_fd

    @property
    def perf_map(self):
        """The perf event array map, for the perf consumer to install its per-CPU fds in."""
        return self.bpf["events_perf"]

    @property
    def ncpu(self) -> int:
        """How many CPUs the kernel keeps per-CPU counters for."""
        return self._ncpu

    def set_mode(self, mode: str) -> None:
        """Switch channels with one map write: no reload, effective for the next event."""
        try:
            value = MODE_VALUES[mode]
        except KeyError:
            raise MigratorError(f"mode {mode!r} unknown; choose PERF, DUAL or RING") from None
        self.bpf["mode_map"][ct.c_int(0)] = ct.c_uint32(value)

    @property
    def mode(self) -> str:
        """The mode the probe runs now, read back from the mode map (the map is the truth)."""
        return MODE_NAMES.get(self.bpf["mode_map"][ct.c_int(0)].value, "?")

    def set_target(self, tgid: int) -> None:
        """Synthetic probe only: the process whose getppid() calls become events (0: none)."""
        self.bpf["target_tgid"][ct.c_int(0)] = ct.c_uint32(tgid)

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will get, to place a mode switch in the event stream."""
        return self.bpf["seq_map"][ct.c_int(0)].value

    def counters(self) -> dict[str, Counters]:
        """Per-channel kernel counters summed over CPUs."""
        table = self.bpf["counters"]
        out = {}
        for ch, name in ((CH_PERF, "perf"), (CH_RING, "ring")):
            vals = table[ct.c_int(ch)]
            out[name] = Counters(
                sum(v.attempts for v in vals), sum(v.ok for v in vals), sum(v.full for v in vals), sum(v.other for v in vals)
            )
        return out

    def prog_fds(self) -> list[int]:
        """The loaded programs' fds, to read their kernel run time and run count."""
        return [f.fd for f in self.bpf.funcs.values()]

    def close(self) -> None:
        """Unload the probe: detach and free its programs and maps (safe to call twice)."""
        bpf, self.bpf = getattr(self, "bpf", None), None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
