"""canary.toml: load, validate (unknown keys are errors) and freeze into dataclasses.

Every problem raises ConfigError naming the file, the dotted field and the fix. Loading never
touches the database, so an invalid config writes nothing. The config hash is the sha256 of the
canonical JSON of the parsed config (defaults filled in), so two files that mean the same thing
hash the same.
"""
from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from migrator.errors import ConfigError
from migrator.vocab import (HOST_NAME_RULE, LAB_PREFIX_RULE, is_host_name, is_lab_prefix, parse_percent,
                            percent_of)

NO_DATA_ACTIONS = ("hold", "breach", "reset")
PROBES = ("tc", "synthetic", "proc")
RING_SUBMIT = ("reserve", "output")
WAKEUPS = ("adaptive", "no_wakeup", "force_wakeup")
PAGE_SIZE = 4096
PHASE_KEYS = ("dual_instrument", "shadow", "canary")


@dataclass(frozen=True)
class PhaseRule:
    """When a phase may be left: the clean windows it needs and whether an operator must `advance`."""

    min_clean_windows: int = 3
    manual_gate: bool = False


@dataclass(frozen=True)
class Phases:
    """The exit rule of each measured phase ([phases.*]); canary's applies to every slice."""

    dual_instrument: PhaseRule = PhaseRule()
    shadow: PhaseRule = PhaseRule()
    canary: PhaseRule = PhaseRule()  # applies to each slice


@dataclass(frozen=True)
class Thresholds:
    """The limits a judged host window must stay within ([thresholds]); exceeding any one is a breach."""

    max_loss_rate: float = 0.001
    max_lag_p99_ms: float = 250.0
    max_loss_delta: float | None = None  # ring loss rate - perf loss rate, same window
    max_lag_ratio: float | None = None  # ring lag p99 / perf lag p99
    max_cpu_ratio: float | None = None  # ring consumer CPU per event / perf's
    max_inversions: int | None = None  # ordering inversions in the ring window
    min_events: int = 1  # fewer attempts than this in a window = no-data


@dataclass(frozen=True)
class ProbeConfig:
    """The event source the agents attach ([probe]) and the synthetic probe's event rate."""

    name: str = "tc"
    rate: int = 20000


@dataclass(frozen=True)
class Buffers:
    """Perf and ring buffer sizes and the ring's submit and wakeup policy ([buffers])."""

    ring_bytes: int = 16 * 1024 * 1024
    perf_pages: int = 64
    ring_submit: str = "reserve"
    wakeup: str = "adaptive"


@dataclass(frozen=True)
class Lab:
    """The simulated hosts of `migrator lab` ([lab]): how many, their name prefix, packets/s into each."""

    hosts: int = 4
    prefix: str = "mig"
    pps: int = 2000


@dataclass(frozen=True)
class Config:
    """A validated canary.toml. `path` is where it came from (not part of the hash)."""

    path: str = "canary.toml"
    database: str = "migrator.db"
    window_seconds: float = 1.0
    hosts: tuple[str, ...] = ()
    slices: tuple[int | str | tuple[str, ...], ...] = (1, "50%", "100%")
    rollback_after: int = 3
    no_data: str = "hold"
    phases: Phases = Phases()
    thresholds: Thresholds = Thresholds()
    probe: ProbeConfig = ProbeConfig()
    buffers: Buffers = Buffers()
    lab: Lab = Lab()
    # Resolved at load time: the host list and the cumulative host set of each canary slice.
    host_names: tuple[str, ...] = field(default=(), compare=False)
    slice_hosts: tuple[tuple[str, ...], ...] = field(default=(), compare=False)
    database_url: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The config in canary.toml shape with every default filled in (round-trips through parse)."""
        d = asdict(self)
        for k in ("path", "host_names", "slice_hosts", "database_url"):
            d.pop(k)
        d["hosts"] = list(self.hosts)
        d["slices"] = [list(s) if isinstance(s, tuple) else s for s in self.slices]
        for section in ("thresholds",):
            d[section] = {k: v for k, v in d[section].items() if v is not None}
        return d

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the parsed config."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def phase_rule(self, phase: str) -> PhaseRule:
        """The PhaseRule for a phase name (DUAL_INSTRUMENT, SHADOW, CANARY)."""
        return getattr(self.phases, phase.lower())


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path

    def err(self, fld: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.path, fld, problem, fix)

    def section(self, data: dict, name: str, allowed: tuple[str, ...]) -> dict:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise self.err(name, f"must be a table, got {_tname(raw)}", f"write it as [{name}]")
        self.no_unknown(raw, allowed, f"{name}.")
        return raw

    def no_unknown(self, raw: dict, allowed: tuple[str, ...], prefix: str = "") -> None:
        for key in raw:
            if key not in allowed:
                raise self.err(f"{prefix}{key}", "unknown key",
                               f"remove it; known keys here: {', '.join(allowed)}")

    def integer(self, raw: dict, key: str, default: int, fld: str, *, minimum: int | None = None) -> int:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(fld, f"must be an integer, got {_tname(v)} {v!r}", f"write e.g. {fld.split('.')[-1]} = {default}")
        if minimum is not None and v < minimum:
            raise self.err(fld, f"must be >= {minimum}, got {v}", f"use a value >= {minimum}")
        return v

    def number(self, raw: dict, key: str, default: float | None, fld: str, *, positive: bool = False,
               maximum: float | None = None) -> float | None:
        v = raw.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.err(fld, f"must be a number, got {_tname(v)} {v!r}", f"write e.g. {key} = {default if default is not None else 1.0}")
        if positive and v <= 0:
            raise self.err(fld, f"must be > 0, got {v}", "use a positive number")
        if v < 0:
            raise self.err(fld, f"must be >= 0, got {v}", "thresholds cannot be negative")
        if maximum is not None and v > maximum:
            raise self.err(fld, f"must be <= {maximum}, got {v}", f"a rate is a fraction between 0 and {maximum}")
        return float(v)

    def boolean(self, raw: dict, key: str, default: bool, fld: str) -> bool:
        v = raw.get(key, default)
        if not isinstance(v, bool):
            raise self.err(fld, f"must be true or false, got {_tname(v)} {v!r}", f"write {key} = true or {key} = false")
        return v

    def choice(self, raw: dict, key: str, default: str, fld: str, choices: tuple[str, ...]) -> str:
        v = raw.get(key, default)
        if not isinstance(v, str) or v not in choices:
            raise self.err(fld, f"must be one of {', '.join(choices)}, got {v!r}", f'write e.g. {key} = "{default}"')
        return v


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


TOP_KEYS = ("database", "window_seconds", "hosts", "slices", "rollback_after", "no_data",
            "phases", "thresholds", "probe", "buffers", "lab")


def parse_config(data: dict, path: str = "canary.toml", base_dir: Path | None = None) -> Config:
    """Validate a canary.toml document (already decoded) and freeze it into a Config."""
    p = _Parser(path)
    p.no_unknown(data, TOP_KEYS)

    database = data.get("database", "migrator.db")
    if not isinstance(database, str) or not database.strip():
        raise p.err("database", f"must be a non-empty string, got {database!r}",
                    'write database = "migrator.db" or an SQLAlchemy URL')
    if "://" in database:
        url = database
    else:
        db_path = Path(database)
        if not db_path.is_absolute():
            db_path = (base_dir or Path.cwd()) / db_path
        url = f"sqlite:///{db_path.resolve()}"

    window_seconds = p.number(data, "window_seconds", 1.0, "window_seconds", positive=True)
    rollback_after = p.integer(data, "rollback_after", 3, "rollback_after", minimum=1)
    no_data = p.choice(data, "no_data", "hold", "no_data", NO_DATA_ACTIONS)

    phases_raw = p.section(data, "phases", PHASE_KEYS)
    rules = {}
    for name in PHASE_KEYS:
        sect = phases_raw.get(name, {})
        if not isinstance(sect, dict):
            raise p.err(f"phases.{name}", f"must be a table, got {_tname(sect)}", f"write it as [phases.{name}]")
        p.no_unknown(sect, ("min_clean_windows", "manual_gate"), f"phases.{name}.")
        rules[name] = PhaseRule(
            p.integer(sect, "min_clean_windows", 3, f"phases.{name}.min_clean_windows", minimum=0),
            p.boolean(sect, "manual_gate", False, f"phases.{name}.manual_gate"),
        )

    th = p.section(data, "thresholds", tuple(Thresholds.__dataclass_fields__))
    thresholds = Thresholds(
        max_loss_rate=p.number(th, "max_loss_rate", 0.001, "thresholds.max_loss_rate", maximum=1.0),
        max_lag_p99_ms=p.number(th, "max_lag_p99_ms", 250.0, "thresholds.max_lag_p99_ms", positive=True),
        max_loss_delta=p.number(th, "max_loss_delta", None, "thresholds.max_loss_delta", maximum=1.0),
        max_lag_ratio=p.number(th, "max_lag_ratio", None, "thresholds.max_lag_ratio", positive=True),
        max_cpu_ratio=p.number(th, "max_cpu_ratio", None, "thresholds.max_cpu_ratio", positive=True),
        max_inversions=(None if th.get("max_inversions") is None else
                        p.integer(th, "max_inversions", 0, "thresholds.max_inversions", minimum=0)),
        min_events=p.integer(th, "min_events", 1, "thresholds.min_events", minimum=1),
    )

    pr = p.section(data, "probe", ("name", "rate"))
    probe = ProbeConfig(p.choice(pr, "name", "tc", "probe.name", PROBES),
                  p.integer(pr, "rate", 20000, "probe.rate", minimum=1))

    bu = p.section(data, "buffers", ("ring_bytes", "perf_pages", "ring_submit", "wakeup"))
    ring_bytes = p.integer(bu, "ring_bytes", 16 * 1024 * 1024, "buffers.ring_bytes", minimum=PAGE_SIZE)
    if not _power_of_two(ring_bytes) or ring_bytes % PAGE_SIZE:
        raise p.err("buffers.ring_bytes", f"must be a power of two and a multiple of {PAGE_SIZE}, got {ring_bytes}",
                    f"use e.g. {1 << max(12, ring_bytes.bit_length())}")
    perf_pages = p.integer(bu, "perf_pages", 64, "buffers.perf_pages", minimum=1)
    if not _power_of_two(perf_pages):
        raise p.err("buffers.perf_pages", f"must be a power of two, got {perf_pages}",
                    f"use e.g. {1 << perf_pages.bit_length()}")
    buffers = Buffers(ring_bytes, perf_pages,
                      p.choice(bu, "ring_submit", "reserve", "buffers.ring_submit", RING_SUBMIT),
                      p.choice(bu, "wakeup", "adaptive", "buffers.wakeup", WAKEUPS))

    la = p.section(data, "lab", ("hosts", "prefix", "pps"))
    prefix = la.get("prefix", "mig")
    if not is_lab_prefix(prefix):
        raise p.err("lab.prefix", f"must be {LAB_PREFIX_RULE}, got {prefix!r}", 'write e.g. prefix = "mig"')
    lab = Lab(p.integer(la, "hosts", 4, "lab.hosts", minimum=1), prefix,
              p.integer(la, "pps", 2000, "lab.pps", minimum=1))

    hosts_raw = data.get("hosts", [])
    if not isinstance(hosts_raw, list):
        raise p.err("hosts", f"must be an array of host names, got {_tname(hosts_raw)}", 'write hosts = ["web1", "web2"] or hosts = []')
    for i, h in enumerate(hosts_raw):
        if not is_host_name(h):
            raise p.err(f"hosts[{i}]", f"must be a host name ({HOST_NAME_RULE}), got {h!r}",
                        "quote each host name")
    if len(set(hosts_raw)) != len(hosts_raw):
        dup = next(h for h in hosts_raw if hosts_raw.count(h) > 1)
        raise p.err("hosts", f"host {dup!r} is listed twice", "list each host once")
    hosts = tuple(hosts_raw)
    host_names = hosts or tuple(f"{lab.prefix}{i}" for i in range(1, lab.hosts + 1))

    slices, slice_hosts = _parse_slices(p, data.get("slices", [1, "50%", "100%"]), host_names)

    return Config(
        path=path, database=database, window_seconds=window_seconds, hosts=hosts, slices=slices,
        rollback_after=rollback_after, no_data=no_data,
        phases=Phases(**rules), thresholds=thresholds, probe=probe, buffers=buffers, lab=lab,
        host_names=host_names, slice_hosts=slice_hosts, database_url=url,
    )


def _parse_slices(p: _Parser, raw: Any, host_names: tuple[str, ...]):
    """Resolve slices to cumulative host sets: counts and percentages take the next hosts in order."""
    n = len(host_names)
    fix_all = f'end the list with "100%" (or {n}, the number of hosts)'
    if not isinstance(raw, list) or not raw:
        raise p.err("slices", f"must be a non-empty array, got {raw!r}", 'write e.g. slices = [1, "50%", "100%"]')
    specs: list = []
    sets: list[tuple[str, ...]] = []
    current: list[str] = []
    for i, s in enumerate(raw):
        fld = f"slices[{i}]"
        if isinstance(s, bool):
            raise p.err(fld, f"must be a count, a percentage or a list of hosts, got {s!r}", 'write e.g. 1, "50%" or ["web1"]')
        if isinstance(s, int):
            if s < 1 or s > n:
                raise p.err(fld, f"must be between 1 and {n} hosts, got {s}", f"use a count from 1 to {n}")
            count, spec = s, s
        elif isinstance(s, str):
            pct = parse_percent(s)
            if pct is None or not 0 < pct <= 100:
                raise p.err(fld, f"must be a percentage like \"50%\" in (0, 100], got {s!r}", 'write e.g. "50%"')
            count, spec = percent_of(pct, n), s.strip()
        elif isinstance(s, list):
            unknown = [h for h in s if h not in host_names]
            if unknown or not s:
                raise p.err(fld, f"names unknown hosts {unknown!r}" if unknown else "is an empty list",
                            f"use hosts from: {', '.join(host_names[:8])}{' ...' if n > 8 else ''}")
            missing = [h for h in current if h not in s]
            if missing:
                raise p.err(fld, f"drops hosts {missing!r} that an earlier slice already moved to ring",
                            "slices are cumulative: each list must include the previous slice's hosts")
            count, spec = len(set(s)), tuple(s)
        else:
            raise p.err(fld, f"must be a count, a percentage or a list of hosts, got {_tname(s)}", 'write e.g. 1, "50%" or ["web1"]')
        if count <= len(current):
            raise p.err(fld, f"must grow: {count} host(s) after {len(current)} in the previous slice",
                        "make every slice larger than the one before")
        if isinstance(spec, tuple):
            current = list(dict.fromkeys(spec))
        else:
            current = current + [h for h in host_names if h not in current][: count - len(current)]
        specs.append(spec)
        sets.append(tuple(current))
    if len(current) != n:
        raise p.err("slices", f"last slice covers {len(current)} of {n} hosts", fix_all)
    return tuple(specs), tuple(sets)


def load_config(path: str | Path) -> Config:
    """Read and validate a canary.toml file; ConfigError names file, field and fix."""
    p = Path(path)
    shown = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, "<file>", "does not exist", "write the commented default with `migrator init --example > canary.toml`, or pass --config") from None
    except OSError as exc:
        raise ConfigError(shown, "<file>", f"cannot be read: {exc.strerror or exc}", "pass the path of a readable canary.toml") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(shown, "<file>", "is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(shown, "<syntax>", str(exc), "fix the TOML syntax") from None
    return parse_config(data, shown, p.resolve().parent)


def config_from_snapshot(snapshot: str, database_url: str, label: str) -> Config:
    """Rebuild the Config a migration was started with from its stored JSON snapshot."""
    cfg = parse_config(json.loads(snapshot), label)
    return _with_url(cfg, database_url)


def _with_url(cfg: Config, url: str) -> Config:
    from dataclasses import replace
    return replace(cfg, database_url=url)
