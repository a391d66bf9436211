"""The words every layer shares, each defined once: phases, modes, host names, slices.

This module sits at the bottom with errors and config: the data plane, the store, the control
plane and the tools all import it, and it imports nothing of theirs.
"""
from __future__ import annotations

import math
import os
import re
from enum import StrEnum


class Phase(StrEnum):
    """Where a migration is; the legal moves between phases live in control.phases."""

    PLANNED = "PLANNED"
    DUAL_INSTRUMENT = "DUAL_INSTRUMENT"
    SHADOW = "SHADOW"
    CANARY = "CANARY"
    COMPLETE = "COMPLETE"
    ROLLED_BACK = "ROLLED_BACK"
    PAUSED = "PAUSED"
    ABORTED = "ABORTED"


FINAL = frozenset({Phase.COMPLETE, Phase.ROLLED_BACK, Phase.ABORTED})
MEASURED = frozenset({Phase.DUAL_INSTRUMENT, Phase.SHADOW, Phase.CANARY})

# The mode map value of each mode: which channel(s) the BPF side writes (bpf/migrator.h, MIGRATOR_MODE_*).
MODE_VALUES = {"PERF": 0, "DUAL": 1, "RING": 2}
MODE_NAMES = {v: k for k, v in MODE_VALUES.items()}
MODES = tuple(MODE_VALUES)
CHANNELS = ("perf", "ring")

# The page size: perf buffers are pages per CPU, a ring is a whole number of pages.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# The ring producer's wakeup policies ([buffers] wakeup, -DMIGRATOR_RING_WAKEUP in bpf/migrator.h):
# adaptive (the kernel wakes a reader that caught up: at low rates once per record), no_wakeup
# (never: the reader runs on its own clock), force_wakeup (every record), batched (only a sleeping
# reader, every MIGRATOR_WAKEUP_EVERY-th record, and the record that fills the ring past a mark).
RING_WAKEUPS = {"adaptive": 0, "no_wakeup": 1, "force_wakeup": 2, "batched": 3}
# Bit of the mode word a reader sets before it sleeps on its epoll without a timer (batched policy).
WORD_READER_SLEEPS = 0x100

# A host name is also a file name (fault files, agent logs) and a network namespace name, so it
# starts with a letter or digit (no "..", no leading "-") and has no "/".
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOST_NAME_RULE = "1-63 letters, digits, '_', '-' or '.', starting with a letter or digit"
# A lab prefix names namespaces and interfaces (prefix + number + "-h"/"-n" within IFNAMSIZ)
# and ends in a letter: with a trailing digit, lab "mt1" host 23 and lab "mt12" host 3 collide.
LAB_PREFIX_RE = re.compile(r"^[a-z](?:[a-z0-9]{0,6}[a-z])?$")
LAB_PREFIX_RULE = "1-8 lowercase letters or digits, starting and ending with a letter, e.g. 'mig'"


def is_host_name(name: object) -> bool:
    """True if `name` is a valid host name (HOST_NAME_RULE)."""
    return isinstance(name, str) and bool(HOST_NAME_RE.fullmatch(name))


def is_lab_prefix(prefix: object) -> bool:
    """True if `prefix` is a valid lab prefix (LAB_PREFIX_RULE)."""
    return isinstance(prefix, str) and bool(LAB_PREFIX_RE.fullmatch(prefix))


_PERCENT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def parse_percent(spec: object) -> float | None:
    """The number in a percentage slice such as "50%", or None if `spec` is not one."""
    if not isinstance(spec, str):
        return None
    m = _PERCENT_RE.fullmatch(spec)
    return float(m.group(1)) if m else None


def percent_of(percent: float, n_hosts: int) -> int:
    """Hosts in a percentage slice: rounded up, at least one."""
    return max(1, math.ceil(percent * n_hosts / 100 - 1e-9))


def slice_size(spec: object, n_hosts: int) -> int | None:
    """Hosts a count or percentage slice covers among `n_hosts`; None for a host list."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec
    pct = parse_percent(spec)
    return None if pct is None else percent_of(pct, n_hosts)


def first_slices(slice_hosts: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    """Host -> the first (1-based) canary slice that moves it to RING."""
    first: dict[str, int] = {}
    for k, members in enumerate(slice_hosts, start=1):
        for h in members:
            first.setdefault(h, k)
    return first
