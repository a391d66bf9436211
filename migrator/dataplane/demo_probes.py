"""Load a demo probe from bpf/ through bcc: its programs, its target, and its migrator channel."""
from __future__ import annotations

import ctypes as ct
import re

from migrator.dataplane import rewrite
from migrator.dataplane.channel import Channel, check_bpf_privileges
from migrator.shared.resources import bpf_dir
from migrator.errors import BPFLoadError, MigratorError
from migrator.dataplane.counters import Counters
from migrator.shared.vocab import PROBES, RING_BYTES_RULE, RING_SUBMITS, RING_WAKEUPS, is_ring_bytes


def render_source(probe: str) -> str:
    """The C text of a demo probe with demo.h inlined (migrator.h stays an #include).

    bcc rewrites map method calls only in its main file: demo.h declares the probes' channel,
    so it must be part of the text that rewrite.prepare() expands.
    """
    try:
        path = bpf_dir() / PROBES[probe]
    except KeyError:
        raise MigratorError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}") from None

    def inline(m: re.Match) -> str:
        inc = bpf_dir() / m.group(1)
        return f"/* ---- inlined {inc.name} ---- */\n{inc.read_text()}\n/* ---- end {inc.name} ---- */\n"

    return re.sub(r'^#include "(demo\.h)"[ \t]*$', inline, path.read_text(), flags=re.M)


class Probe:
    """One loaded demo probe: its programs and its migrator channel `events`."""

    def __init__(
        self,
        probe: str = "synthetic",
        ring_bytes: int = 16 << 20,
        ring_submit: str = "reserve",
        wakeup: str = "adaptive",
        print_c: bool = False,
        extra_cflags: tuple[str, ...] = (),
    ) -> None:
        if not is_ring_bytes(ring_bytes):
            raise MigratorError(f"ring size {ring_bytes} must be {RING_BYTES_RULE}")
        if wakeup not in RING_WAKEUPS:
            raise MigratorError(f"wakeup {wakeup!r} unknown; choose one of {', '.join(RING_WAKEUPS)}")
        if ring_submit not in RING_SUBMITS:
            raise MigratorError(f"ring_submit {ring_submit!r} unknown; choose one of {', '.join(RING_SUBMITS)}")
        if probe not in PROBES:
            raise MigratorError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
        if not print_c:  # --print-c shows the C text even to a user who cannot load it
            check_bpf_privileges(f"probe {probe}")
        from bcc import BPF  # Debian's python3-bpfcc; imported late so non-kernel commands work without it

        self.name = probe
        self.ring_bytes = ring_bytes
        self.wakeup = wakeup
        self.ring_submit = ring_submit
        text = rewrite.prepare(render_source(probe), filename=PROBES[probe])
        cflags = [
            *rewrite.cflags(ring_wakeup=wakeup),
            f"-DRING_BYTES={ring_bytes}",
            f"-DDEMO_RESERVE={1 if ring_submit == 'reserve' else 0}",
            *extra_cflags,
        ]
        if print_c:
            print(f"/* cflags: {' '.join(cflags)} */\n{text}")
            check_bpf_privileges(f"probe {probe}")
        try:
            self.bpf = BPF(text=text, cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception with the compiler/verifier text on stderr
            raise BPFLoadError(probe, str(exc)) from None
        self.channel = Channel(self.bpf, "events")
        self.tc_fn = None
        if probe == "tc":
            try:
                self.tc_fn = self.bpf.load_func("tc_packet", BPF.SCHED_CLS)
            except Exception as exc:
                raise BPFLoadError(probe, str(exc)) from None

    # -- the channel, as the pipeline reads it -------------------------------------------------
    @property
    def ring_map_fd(self) -> int:
        """The ring buffer map's fd, for the ring consumer to mmap."""
        return self.channel.ring_map_fd

    @property
    def perf_map(self):
        """The perf event array the perf consumer installs its per-CPU fds in."""
        return self.channel.perf_map

    def set_mode(self, mode: str) -> None:
        """Switch channels with one map write: no reload, effective for the next event."""
        self.channel.set_mode(mode)

    @property
    def mode(self) -> str:
        """The mode the BPF side acts on."""
        return self.channel.mode

    def set_target(self, tgid: int) -> None:
        """Synthetic probe only: the process whose getppid() calls become events (0: none)."""
        self.bpf["target_tgid"][ct.c_int(0)] = ct.c_uint32(tgid)

    @property
    def next_seq(self) -> int:
        """The seq the next event will carry."""
        return self.channel.next_seq

    def counters(self, parity: int | None = None) -> dict[str, Counters]:
        """Per-channel kernel counters summed over CPUs (of one epoch parity's set, or both)."""
        return self.channel.counters(parity)

    @property
    def epoch(self) -> int:
        """The epoch the next records are stamped with."""
        return self.channel.epoch

    def set_epoch(self, epoch: int) -> None:
        """Stamp the next records with `epoch` (the window books, pipeline.py)."""
        self.channel.set_epoch(epoch)

    def mode_map(self) -> tuple[int, int]:
        """(fd, value size) of the channel's mode word map (loop.c sets the sleep bit through it)."""
        return self.channel.mode_map()

    def reader_sleeps(self, on: bool) -> None:
        """Tell the producers the reader sleeps until woken (batched wakeups)."""
        self.channel.reader_sleeps(on)

    def prog_fds(self) -> list[int]:
        """The fds of every loaded program (for run-time statistics)."""
        return [f.fd for f in self.bpf.funcs.values()]

    def close(self) -> None:
        """Detach and unload everything (bcc's cleanup)."""
        bpf, self.bpf = getattr(self, "bpf", None), None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
