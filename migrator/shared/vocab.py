"""The words every layer shares, each defined once: phases, modes, host names, slices, durations,
the default canary.toml.

This module sits at the bottom with errors and config: the data plane, the store, the control
plane and the tools all import it, and it imports nothing of theirs.
"""
from __future__ import annotations

import math
import os
import re
from enum import StrEnum
from pathlib import Path


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

# The demo probes (bpf/ files) and how a demo probe's ring record is written.
PROBES = {"tc": "tc_packet.bpf.c", "synthetic": "synthetic.bpf.c", "proc": "proc.bpf.c"}
RING_SUBMITS = ("reserve", "output")  # MIGRATOR_RESERVE/SUBMIT (fixed size) or MIGRATOR_OUTPUT
# wrap's ring per channel when the operator names none: 4 MiB.
DEFAULT_RING_BYTES = 1 << 22


# What the kernel takes as a BPF ring size and as perf pages per CPU: every check of either (config,
# options, wrap, drills, the library) tests it with these and says the rule in these words.
RING_BYTES_RULE = f"a power of two of at least {PAGE_SIZE} bytes (one page)"
PERF_PAGES_RULE = "a power of two"


def _power_of_two(n: object) -> bool:
    return not isinstance(n, bool) and isinstance(n, int) and n > 0 and n & (n - 1) == 0


def is_ring_bytes(n: object) -> bool:
    return _power_of_two(n) and n >= PAGE_SIZE


def is_perf_pages(n: object) -> bool:
    return _power_of_two(n)


def next_power_of_two(n: int, at_least: int = 1) -> int:
    """The smallest power of two >= n and >= at_least: what a fix suggests."""
    return 1 << max((max(n, 1) - 1).bit_length(), (at_least - 1).bit_length())


# The ring producer's wakeup policies ([buffers] wakeup, -DMIGRATOR_RING_WAKEUP in bpf/migrator.h):
# adaptive (the kernel wakes a reader that caught up: at low rates once per record), no_wakeup
# (never: the reader runs on its own clock), force_wakeup (every record), batched (only a sleeping
# reader, every MIGRATOR_WAKEUP_EVERY-th record, and the record that fills the ring past a mark).
RING_WAKEUPS = {"adaptive": 0, "no_wakeup": 1, "force_wakeup": 2, "batched": 3}
# Bit of the mode word a reader sets before it sleeps on its epoll without a timer (batched policy).
WORD_READER_SLEEPS = 0x100

# What `migrator shadow` can run: the tc probe needs a network device to attach to (the agent and the lab do that).
SHADOW_PROBES = ("synthetic", "proc")

# The canary.toml a command reads when given none: $MIGRATOR_CONFIG, else this file in the working directory.
DEFAULT_CONFIG = "canary.toml"
CONFIG_ENV = "MIGRATOR_CONFIG"


def config_path(path: str | Path | None = None) -> tuple[Path, str]:
    """(the canary.toml to read, where that choice came from: "given", "env" or "default", the
    `origin` of migrator.config.load_config): `path` if given, else $MIGRATOR_CONFIG, else ./canary.toml."""
    if path is not None:
        return Path(path), "given"
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), "env"
    return Path(DEFAULT_CONFIG), "default"


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(?:\s*[0-9]*\.?[0-9]+\s*(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d|w)")
# How to write a duration, for the fix of every error about one (a canary.toml key or a command option).
DURATION_UNITS = "units ms, s, m, h, d, w, combined as in 1h30m; a bare number is seconds"


def parse_duration(text: object) -> float:
    """The one duration grammar, of canary.toml and of every command option: '30d', '12h', '1h30m',
    '90s', '1 s', '500ms' or a number of seconds (a TOML number or a bare string) -> seconds.

    ValueError on anything else (the caller names its key or option); 0 is a duration, whether it
    is allowed is the caller's rule."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{text!r} is not a duration")
        return float(text)
    s = str(text).strip()
    if re.fullmatch(r"[0-9]*\.?[0-9]+", s):
        return float(s)
    if not _DURATION_RE.fullmatch(s):
        raise ValueError(f"{text!r} is not a duration")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(s))


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
