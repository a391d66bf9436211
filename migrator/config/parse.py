"""canary.toml's parser: load, validate (unknown keys are errors) and freeze into config/schema.py's dataclasses.

Every problem raises ConfigError naming the file, the dotted field and the fix. Loading never
touches the database, so an invalid config writes nothing. The config hash is the sha256 of the
canonical JSON of the parsed config (defaults filled in), so two files that mean the same thing
hash the same.
"""
from __future__ import annotations

import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from migrator.errors import ConfigError, close_matches
from migrator.shared.vocab import (CONFIG_ENV, DEFAULT_CONFIG, DURATION_UNITS, HOST_NAME_RULE, LAB_PREFIX_RULE, PAGE_SIZE,
                                   PERF_PAGES_RULE, PROBES, RING_BYTES_RULE, RING_SUBMITS, is_host_name, is_lab_prefix,
                                   is_perf_pages, is_ring_bytes, next_power_of_two, parse_duration, parse_percent,
                                   percent_of)

from migrator.config.schema import (
    NO_DATA_ACTIONS, WAKEUPS, PHASE_KEYS, MAX_WINDOW_SECONDS, MAX_ROLLBACK_AFTER, MAX_CLEAN_WINDOWS,
    MAX_WINDOW_COUNT, MAX_LAG_MS, MAX_RATIO, MAX_PRODUCER_NS, MAX_PROBE_RATE, MAX_RING_BYTES,
    MAX_PERF_PAGES, MAX_DELAY_MS, MAX_LAB_HOSTS, MAX_LAB_PPS, MAX_SLICES, MAX_LOST_AFTER_WINDOWS,
    MAX_STALL_PAUSE_WINDOWS, DATABASE_URL_ENV, PhaseRule, Phases, Thresholds, ProbeConfig, Buffers,
    Lab, ON_LOST_ACTIONS, Agents, MAX_NOTIFY_ATTEMPTS, MAX_NOTIFY_TIMEOUT, Notify, StoreSection,
    SOURCE_KINDS, ATTACH_TYPES, TC_DIRECTIONS, XDP_MODES, AttachPoint, SourceConfig, Config,
)


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
                raise self.unknown(f"{prefix}{key}", key, allowed)

    def unknown(self, fld: str, key: str, allowed: tuple[str, ...] | list[str]) -> ConfigError:
        """An unknown key: "did you mean" its closest known key, when one is close enough."""
        close = close_matches(str(key), allowed)
        if close:
            return self.err(fld, f"unknown key, did you mean {close[0]}?",
                            f"rename it {close[0]}, or remove it; known keys here: {', '.join(allowed)}")
        return self.err(fld, "unknown key", f"remove it; known keys here: {', '.join(allowed)}")

    def integer(self, raw: dict, key: str, default: int, fld: str, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(fld, f"must be an integer, got {_tname(v)} {v!r}", f"write e.g. {fld.split('.')[-1]} = {default}")
        if minimum is not None and v < minimum:
            raise self.err(fld, f"must be >= {minimum}, got {v}", f"use a value >= {minimum}")
        if maximum is not None and v > maximum:
            raise self.err(fld, f"must be between {minimum if minimum is not None else 0} and {maximum}, got {v}",
                           f"use a value from {minimum if minimum is not None else 0} to {maximum}")
        return v

    def number(self, raw: dict, key: str, default: float | None, fld: str, *, positive: bool = False,
               maximum: float | None = None, fix_max: str = "") -> float | None:
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
            raise self.err(fld, f"must be <= {maximum:g}, got {v}" if fix_max else f"must be <= {maximum}, got {v}",
                           fix_max or f"a rate is a fraction between 0 and {maximum}")
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


TOP_KEYS = ("database", "database_file", "window_seconds", "hosts", "slices", "rollback_after", "no_data",
            "phases", "thresholds", "probe", "buffers", "lab", "source",
            "agents", "notify", "store")


def parse_config(data: dict, path: str = DEFAULT_CONFIG, base_dir: Path | None = None,
                 check_files: bool = True) -> Config:
    """Validate a canary.toml document (already decoded) and freeze it into a Config.

    Relative paths in [source] are resolved against base_dir (default: the working directory);
    check_files=False skips checking that they exist (a stored snapshot, read anywhere)."""
    p = _Parser(path)
    p.no_unknown(data, TOP_KEYS)

    database = data.get("database", "migrator.db")
    if not isinstance(database, str) or not database.strip():
        raise p.err("database", f"must be a non-empty string, got {database!r}",
                    'write database = "migrator.db" or an SQLAlchemy URL')
    url = _database_url(database, base_dir or Path.cwd())
    database_file = data.get("database_file")
    if database_file is not None:
        if not isinstance(database_file, str) or not database_file.strip():
            raise p.err("database_file", f"must be a non-empty string, got {database_file!r}",
                        'write database_file = "/etc/migrator/database-url"')
        if "database" in data:
            raise p.err("database_file", "is set together with database",
                        "keep one: database_file (a file holding the URL) or database (the URL itself)")
        if check_files:
            url = _read_database_file(p, database_file, base_dir or Path.cwd())
    env_url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if env_url:
        url = _database_url(env_url, Path.cwd())

    window_seconds = p.number(data, "window_seconds", 1.0, "window_seconds", positive=True, maximum=MAX_WINDOW_SECONDS,
                              fix_max=f"use a window from more than 0 to {MAX_WINDOW_SECONDS:g} seconds")
    rollback_after = p.integer(data, "rollback_after", 3, "rollback_after", minimum=1, maximum=MAX_ROLLBACK_AFTER)
    no_data = p.choice(data, "no_data", "hold", "no_data", NO_DATA_ACTIONS)

    phases_raw = p.section(data, "phases", PHASE_KEYS)
    rules = {}
    for name in PHASE_KEYS:
        sect = phases_raw.get(name, {})
        if not isinstance(sect, dict):
            raise p.err(f"phases.{name}", f"must be a table, got {_tname(sect)}", f"write it as [phases.{name}]")
        p.no_unknown(sect, ("min_clean_windows", "manual_gate"), f"phases.{name}.")
        rules[name] = PhaseRule(
            p.integer(sect, "min_clean_windows", 3, f"phases.{name}.min_clean_windows", minimum=0,
                      maximum=MAX_CLEAN_WINDOWS),
            p.boolean(sect, "manual_gate", False, f"phases.{name}.manual_gate"),
        )

    th = p.section(data, "thresholds", tuple(Thresholds.__dataclass_fields__))
    thresholds = Thresholds(
        max_loss_rate=p.number(th, "max_loss_rate", 0.001, "thresholds.max_loss_rate", maximum=1.0),
        max_lag_p99_ms=p.number(th, "max_lag_p99_ms", 250.0, "thresholds.max_lag_p99_ms", positive=True,
                                maximum=MAX_LAG_MS, fix_max=f"use a limit from more than 0 to {MAX_LAG_MS:g} ms"),
        max_loss_delta=p.number(th, "max_loss_delta", None, "thresholds.max_loss_delta", maximum=1.0),
        max_lag_ratio=p.number(th, "max_lag_ratio", None, "thresholds.max_lag_ratio", positive=True,
                               maximum=MAX_RATIO, fix_max=f"use a ratio from more than 0 to {MAX_RATIO:g}"),
        max_cpu_ratio=p.number(th, "max_cpu_ratio", None, "thresholds.max_cpu_ratio", positive=True,
                               maximum=MAX_RATIO, fix_max=f"use a ratio from more than 0 to {MAX_RATIO:g}"),
        max_inversions=(None if th.get("max_inversions") is None else
                        p.integer(th, "max_inversions", 0, "thresholds.max_inversions", minimum=0,
                                  maximum=MAX_WINDOW_COUNT)),
        min_events=p.integer(th, "min_events", 1, "thresholds.min_events", minimum=1, maximum=MAX_WINDOW_COUNT),
        max_parse_errors=p.integer(th, "max_parse_errors", 0, "thresholds.max_parse_errors", minimum=0,
                                   maximum=MAX_WINDOW_COUNT),
        max_payload_mismatch=p.integer(th, "max_payload_mismatch", 0, "thresholds.max_payload_mismatch", minimum=0,
                                       maximum=MAX_WINDOW_COUNT),
        max_producer_ratio=p.number(th, "max_producer_ratio", 4.0, "thresholds.max_producer_ratio", positive=True,
                                    maximum=MAX_RATIO, fix_max=f"use a ratio from more than 0 to {MAX_RATIO:g}"),
        max_producer_ns=p.number(th, "max_producer_ns", 5000.0, "thresholds.max_producer_ns", positive=True,
                                 maximum=MAX_PRODUCER_NS, fix_max=f"use a limit from more than 0 to {MAX_PRODUCER_NS:g} ns"),
    )

    pr = p.section(data, "probe", ("name", "rate"))
    probe = ProbeConfig(p.choice(pr, "name", "tc", "probe.name", tuple(PROBES)),
                  p.integer(pr, "rate", 20000, "probe.rate", minimum=1, maximum=MAX_PROBE_RATE))

    bu = p.section(data, "buffers", ("ring_bytes", "perf_pages", "ring_submit", "wakeup", "max_delay_ms"))
    ring_bytes = p.integer(bu, "ring_bytes", 16 * 1024 * 1024, "buffers.ring_bytes", minimum=PAGE_SIZE,
                           maximum=MAX_RING_BYTES)
    if not is_ring_bytes(ring_bytes):
        raise p.err("buffers.ring_bytes", f"must be {RING_BYTES_RULE}, got {ring_bytes}",
                    f"use e.g. {next_power_of_two(ring_bytes, PAGE_SIZE)}")
    perf_pages = p.integer(bu, "perf_pages", 64, "buffers.perf_pages", minimum=1, maximum=MAX_PERF_PAGES)
    if not is_perf_pages(perf_pages):
        raise p.err("buffers.perf_pages", f"must be {PERF_PAGES_RULE}, got {perf_pages}",
                    f"use e.g. {next_power_of_two(perf_pages)}")
    buffers = Buffers(ring_bytes, perf_pages,
                      p.choice(bu, "ring_submit", "reserve", "buffers.ring_submit", RING_SUBMITS),
                      p.choice(bu, "wakeup", "adaptive", "buffers.wakeup", WAKEUPS),
                      p.number(bu, "max_delay_ms", Buffers.max_delay_ms, "buffers.max_delay_ms", positive=True,
                               maximum=MAX_DELAY_MS, fix_max=f"use a delay from more than 0 to {MAX_DELAY_MS:g} ms"))

    la = p.section(data, "lab", ("hosts", "prefix", "pps"))
    prefix = la.get("prefix", "mig")
    if not is_lab_prefix(prefix):
        raise p.err("lab.prefix", f"must be {LAB_PREFIX_RULE}, got {prefix!r}", 'write e.g. prefix = "mig"')
    lab = Lab(p.integer(la, "hosts", 4, "lab.hosts", minimum=1, maximum=MAX_LAB_HOSTS), prefix,
              p.integer(la, "pps", 2000, "lab.pps", minimum=1, maximum=MAX_LAB_PPS))

    source = _parse_source(p, data, base_dir or Path.cwd(), check_files)

    ag = p.section(data, "agents", ("lost_after_windows", "on_lost", "stall_pause_windows"))
    agents = Agents(p.integer(ag, "lost_after_windows", 5, "agents.lost_after_windows", minimum=1,
                              maximum=MAX_LOST_AFTER_WINDOWS),
                    p.choice(ag, "on_lost", "pause", "agents.on_lost", ON_LOST_ACTIONS),
                    p.integer(ag, "stall_pause_windows", 0, "agents.stall_pause_windows", minimum=0,
                              maximum=MAX_STALL_PAUSE_WINDOWS))

    hosts_raw = data.get("hosts", [])
    if not isinstance(hosts_raw, list):
        raise p.err("hosts", f"must be an array of host names, got {_tname(hosts_raw)}", 'write hosts = ["web1", "web2"] or hosts = []')
    for i, h in enumerate(hosts_raw):
        if not is_host_name(h):
            raise p.err(f"hosts[{i}]", f"must be a host name ({HOST_NAME_RULE}), got {h!r}",
                        "quote each host name")
    seen: set[str] = set()
    for h in hosts_raw:  # linear: a set, never list.count
        if h in seen:
            raise p.err("hosts", f"host {h!r} is listed twice", "list each host once")
        seen.add(h)
    hosts = tuple(hosts_raw)
    host_names = hosts or tuple(f"{lab.prefix}{i}" for i in range(1, lab.hosts + 1))

    slices, slice_hosts = _parse_slices(p, data.get("slices", [1, "50%", "100%"]), host_names)

    return Config(
        path=path, database=database, database_file=database_file, window_seconds=window_seconds, hosts=hosts, slices=slices,
        rollback_after=rollback_after, no_data=no_data,
        phases=Phases(**rules), thresholds=thresholds, probe=probe, buffers=buffers, lab=lab, source=source, agents=agents,
        notify=_parse_notify(p, data), store=_parse_store(p, data), host_names=host_names, slice_hosts=slice_hosts, database_url=url,
    )


def _database_url(database: str, base_dir: Path) -> str:
    """An SQLAlchemy URL as is; a path (relative to base_dir) as an SQLite URL."""
    database = database.strip()
    if "://" in database:
        return database
    db_path = Path(database)
    if not db_path.is_absolute():
        db_path = base_dir / db_path
    return f"sqlite:///{db_path.resolve()}"


def _read_database_file(p: _Parser, name: str, base_dir: Path) -> str:
    """The URL (or path) held in database_file; a relative path in it is relative to the config's directory."""
    path = Path(name)
    if not path.is_absolute():
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise p.err("database_file", f"{path} does not exist",
                    f"write the database URL into {path} (chmod 600), or set {DATABASE_URL_ENV}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise p.err("database_file", f"{path} cannot be read: {getattr(exc, 'strerror', None) or exc}",
                    f"make {path} a readable UTF-8 file holding the database URL") from None
    if not text or "\n" in text:
        raise p.err("database_file", f"{path} must hold one line, the database URL; it holds "
                    f"{'nothing' if not text else str(len(text.splitlines())) + ' lines'}",
                    "write only the URL, e.g. postgresql+psycopg://migrator:PASSWORD@db/migrator")
    return _database_url(text, base_dir)


def _parse_slices(p: _Parser, raw: Any, host_names: tuple[str, ...]):
    """Resolve slices to cumulative host sets: counts and percentages take the next hosts in order.

    Linear in the number of hosts: membership goes through sets, and the next hosts in order come
    from one cursor over host_names that only moves forward (slices only grow)."""
    n = len(host_names)
    fix_all = f'end the list with "100%" (or {n}, the number of hosts)'
    if not isinstance(raw, list) or not raw:
        raise p.err("slices", f"must be a non-empty array, got {raw!r}", 'write e.g. slices = [1, "50%", "100%"]')
    if len(raw) > MAX_SLICES:
        raise p.err("slices", f"must have between 1 and {MAX_SLICES} slices, got {len(raw)}",
                    f"use at most {MAX_SLICES} canary steps, e.g. percentages")
    known = set(host_names)
    specs: list = []
    sets: list[tuple[str, ...]] = []
    current: list[str] = []
    current_set: set[str] = set()
    cursor = 0  # host_names[:cursor] are all in current
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
            unknown = [h for h in s if not isinstance(h, str) or h not in known]
            if unknown or not s:
                raise p.err(fld, f"names unknown hosts {unknown[:8]!r}{' ...' if len(unknown) > 8 else ''}"
                            if unknown else "is an empty list",
                            f"use hosts from: {', '.join(host_names[:8])}{' ...' if n > 8 else ''}")
            members = set(s)
            if len(members) != len(s):
                seen: set[str] = set()
                dup = next(h for h in s if h in seen or seen.add(h))
                raise p.err(fld, f"names host {dup!r} twice", "list each host once in a slice")
            missing = [h for h in current if h not in members]
            if missing:
                raise p.err(fld, f"drops hosts {missing[:8]!r}{' ...' if len(missing) > 8 else ''} that an earlier "
                            "slice already moved to ring",
                            "slices are cumulative: each list must include the previous slice's hosts")
            count, spec = len(s), tuple(s)
        else:
            raise p.err(fld, f"must be a count, a percentage or a list of hosts, got {_tname(s)}", 'write e.g. 1, "50%" or ["web1"]')
        if count <= len(current):
            raise p.err(fld, f"must grow: {count} host(s) after {len(current)} in the previous slice",
                        "make every slice larger than the one before")
        if isinstance(spec, tuple):
            current = list(spec)
            current_set = members
        else:
            while len(current) < count:  # count <= n, so the cursor stays in range
                h = host_names[cursor]
                cursor += 1
                if h not in current_set:
                    current.append(h)
                    current_set.add(h)
        specs.append(spec)
        sets.append(tuple(current))
    if len(current) != n:
        raise p.err("slices", f"last slice covers {len(current)} of {n} hosts", fix_all)
    return tuple(specs), tuple(sets)


# Where the path of the canary.toml came from, for the fix when it does not exist: the caller's own
# path (an option, an argument, an API parameter), $MIGRATOR_CONFIG, or the default ./canary.toml.
_MISSING_FIX = {
    "given": "check the path, or write the commented default there with `migrator init --example > {path}`",
    "env": f"point ${CONFIG_ENV} at an existing canary.toml, or give one with -c",
    "default": f"run the command where {DEFAULT_CONFIG} is, give its path with -c, or write the commented default "
               f"with `migrator init --example > {DEFAULT_CONFIG}`",
}


def load_config(path: str | Path, *, origin: str = "given") -> Config:
    """Read and validate a canary.toml file; ConfigError names file, field and fix.

    `origin` ("given", "env" or "default") only chooses the fix shown when the file does not exist."""
    p = Path(path)
    shown = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, "", "does not exist", _MISSING_FIX[origin].format(path=shown)) from None
    except OSError as exc:
        raise ConfigError(shown, "", f"cannot be read: {exc.strerror or exc}", "give the path of a readable canary.toml") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(shown, "", "is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(shown, "", f"is not valid TOML: {exc}", "correct the TOML syntax there") from None
    return parse_config(data, shown, p.resolve().parent)


def config_from_snapshot(snapshot: str, database_url: str, label: str) -> Config:
    """Rebuild the Config a migration was started with from its stored JSON snapshot."""
    cfg = parse_config(json.loads(snapshot), label, check_files=False)
    return _with_url(cfg, database_url)


def _with_url(cfg: Config, url: str) -> Config:
    from dataclasses import replace
    return replace(cfg, database_url=url)


# -- [source] -------------------------------------------------------------------------------------
_C_IDENT = re.compile(r"[A-Za-z_]\w*\Z")
_SINK_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*\Z")
SOURCE_KEYS = {
    "demo": ("kind",),
    "bcc": ("kind", "file", "cflags", "channel", "sink", "sink_path", "attach"),
    "command": ("kind", "command", "channel"),
    "attach": ("kind", "file", "cflags", "channel"),
}
ATTACH_KEYS = {"tc": ("type", "function", "device", "netns", "direction"),
               "xdp": ("type", "function", "device", "netns", "mode")}


def _parse_source(p: _Parser, data: dict, base_dir: Path, check_files: bool) -> SourceConfig:
    """[source]: which program the agents run, validated for its kind (paths made absolute)."""
    raw = data.get("source", {})
    if not isinstance(raw, dict):
        raise p.err("source", f"must be a table, got {_tname(raw)}", "write it as [source]")
    kind = p.choice(raw, "kind", "demo", "source.kind", SOURCE_KINDS)
    every = sorted({k for keys in SOURCE_KEYS.values() for k in keys}, key=lambda k: (k != "kind", k))
    for key in raw:
        if key not in every:
            raise p.unknown(f"source.{key}", key, SOURCE_KEYS[kind])
        if key not in SOURCE_KEYS[kind]:
            users = [k for k, keys in SOURCE_KEYS.items() if key in keys]
            raise p.err(f"source.{key}", f'is not used with kind = "{kind}"',
                        f"remove it, or set kind = \"{users[0]}\"")
    channel = raw.get("channel", "events")
    if not isinstance(channel, str) or not _C_IDENT.match(channel):
        raise p.err("source.channel", f"must be the C identifier of a MIGRATOR_CHANNEL, got {channel!r}",
                    'write e.g. channel = "events"')
    if kind == "demo":
        return SourceConfig()
    if kind == "command":
        cmd = raw.get("command")
        if cmd is None:
            raise p.err("source.command", 'is required with kind = "command"',
                        'write e.g. command = ["python3", "/opt/tools/mytool.py"]')
        if not isinstance(cmd, list) or not cmd:
            raise p.err("source.command", f"must be a non-empty array of strings, got {cmd!r}",
                        'write e.g. command = ["python3", "/opt/tools/mytool.py"]')
        for i, arg in enumerate(cmd):
            if not isinstance(arg, str) or not arg:
                raise p.err(f"source.command[{i}]", f"must be a non-empty string, got {arg!r}", "quote every argument")
        return SourceConfig(kind="command", command=tuple(cmd), channel=channel)

    # kind = "bcc" or "attach"
    f = raw.get("file")
    if f is None:
        raise p.err("source.file", f'is required with kind = "{kind}"',
                    'write e.g. file = "mytool.bpf.c" (a path relative to this file)')
    if not isinstance(f, str) or not f.strip():
        raise p.err("source.file", f"must be a path, got {_tname(f)} {f!r}", 'write e.g. file = "mytool.bpf.c"')
    file = (base_dir / f).resolve()
    if check_files and not file.is_file():
        raise p.err("source.file", f"{file} {'is not a file' if file.exists() else 'does not exist'}",
                    f"give the path of the program's C file, relative to {base_dir}")

    cflags = raw.get("cflags", [])
    if not isinstance(cflags, list):
        raise p.err("source.cflags", f"must be an array of strings, got {_tname(cflags)} {cflags!r}",
                    'write e.g. cflags = ["-DMAX_ENTRIES=1024"]')
    for i, flag in enumerate(cflags):
        if not isinstance(flag, str) or not flag.strip():
            raise p.err(f"source.cflags[{i}]", f"must be a non-empty string, got {flag!r}",
                        'write one compiler flag per string, e.g. "-DFOO=1"')
    if kind == "attach":  # the operator's process serves the channel: no sink, nothing attached by us
        return SourceConfig(kind="attach", file=str(file), cflags=tuple(cflags), channel=channel)

    sink = raw.get("sink")
    if sink is None:
        raise p.err("source.sink", 'is required with kind = "bcc"',
                    'write sink = "module:function", the handler called with each decoded batch (e.g. "sink:handle")')
    if not isinstance(sink, str) or not _SINK_RE.match(sink):
        raise p.err("source.sink", f'must be "module:function", got {sink!r}',
                    'write e.g. sink = "sink:handle" (module sink.py next to this file, function handle)')
    sp = raw.get("sink_path", ".")
    if not isinstance(sp, str) or not sp.strip():
        raise p.err("source.sink_path", f"must be a directory path, got {_tname(sp)} {sp!r}",
                    'write e.g. sink_path = "." (relative to this file)')
    sink_path = (base_dir / sp).resolve()
    if check_files and not sink_path.is_dir():
        raise p.err("source.sink_path", f"{sink_path} is not a directory",
                    f"give the directory that holds the sink's module, relative to {base_dir}")

    attach_raw = raw.get("attach", [])
    if not isinstance(attach_raw, list):
        raise p.err("source.attach", f"must be an array of tables, got {_tname(attach_raw)}",
                    'write each entry as [[source.attach]] with type = "tc" or "xdp"')
    points: list[AttachPoint] = []
    for i, a in enumerate(attach_raw):
        points.append(_parse_attach(p, a, f"source.attach[{i}]"))
        where = [(x.type, x.device, x.netns, x.direction if x.type == "tc" else "") for x in points]
        if where[-1] in where[:-1]:
            raise p.err(f"source.attach[{i}]", f"attaches to the same hook as source.attach[{where.index(where[-1])}]",
                        "attach one function per hook")
    return SourceConfig(kind="bcc", file=str(file), cflags=tuple(cflags), channel=channel, sink=sink,
                        sink_path=str(sink_path), attach=tuple(points))


def _parse_attach(p: _Parser, a: Any, fld: str) -> AttachPoint:
    if not isinstance(a, dict):
        raise p.err(fld, f"must be a table, got {_tname(a)}", 'write e.g. {type = "tc", function = "f", device = "eth0"}')
    if "type" not in a:
        raise p.err(f"{fld}.type", "is required", "write type = \"tc\" or type = \"xdp\"")
    kind = p.choice(a, "type", "tc", f"{fld}.type", ATTACH_TYPES)
    p.no_unknown(a, ATTACH_KEYS[kind], f"{fld}.")
    for key in ("function", "device"):
        if key not in a:
            raise p.err(f"{fld}.{key}", f"is required with type = \"{kind}\"",
                        'write e.g. function = "tc_ingress"' if key == "function" else 'write e.g. device = "eth0" or "{host}-n"')
    fn = a["function"]
    if not isinstance(fn, str) or not _C_IDENT.match(fn):
        raise p.err(f"{fld}.function", f"must be the C name of a function in the program, got {fn!r}",
                    'write e.g. function = "tc_ingress"')
    texts = {}
    for key in ("device", "netns"):
        v = a.get(key, "")
        if not isinstance(v, str) or (key == "device" and not v.strip()):
            raise p.err(f"{fld}.{key}", f"must be a {'non-empty ' if key == 'device' else ''}string, got {_tname(v)} {v!r}",
                        f'write e.g. {key} = "{{host}}-n"' if key == "device" else 'write e.g. netns = "{host}", or leave it out')
        if "{" in v.replace("{host}", "") or "}" in v.replace("{host}", ""):
            raise p.err(f"{fld}.{key}", f"has a placeholder other than {{host}}: {v!r}",
                        "use {host} (the agent's host name) or a literal name")
        texts[key] = v
    if kind == "tc":
        return AttachPoint("tc", fn, texts["device"], texts["netns"],
                           direction=p.choice(a, "direction", "ingress", f"{fld}.direction", TC_DIRECTIONS))
    return AttachPoint("xdp", fn, texts["device"], texts["netns"], mode=p.choice(a, "mode", "auto", f"{fld}.mode", XDP_MODES))


def _parse_store(p: _Parser, data: dict) -> StoreSection:
    """[store]: keep_windows, a duration ("30d", "12h", "90m", or seconds); absent: keep forever."""
    raw = p.section(data, "store", ("keep_windows",))
    v = raw.get("keep_windows")
    if v is None:
        return StoreSection()
    try:
        keep = parse_duration(v)
    except ValueError:
        raise p.err("store.keep_windows", f"must be a duration, got {_tname(v)} {v!r}",
                    f'write e.g. keep_windows = "30d" ({DURATION_UNITS})') from None
    if keep <= 0:
        raise p.err("store.keep_windows", f"must be > 0, got {v!r}", 'write e.g. keep_windows = "30d"')
    return StoreSection(keep)


def _parse_notify(p: _Parser, data: dict) -> Notify:
    """[notify]: webhook URLs (http or https, each once), attempts and timeout per post."""
    from urllib.parse import urlsplit

    raw = p.section(data, "notify", ("webhooks", "max_attempts", "timeout_seconds"))
    hooks = raw.get("webhooks", [])
    if not isinstance(hooks, list):
        raise p.err("notify.webhooks", f"must be an array of URLs, got {_tname(hooks)} {hooks!r}",
                    'write e.g. webhooks = ["https://hooks.slack.com/services/..."]')
    for i, url in enumerate(hooks):
        fld = f"notify.webhooks[{i}]"
        if not isinstance(url, str):
            raise p.err(fld, f"must be a URL string, got {_tname(url)} {url!r}", 'quote it: "https://..."')
        try:
            parts = urlsplit(url)
            parts.port  # raises on a port that is not a number
        except ValueError as exc:
            raise p.err(fld, f"is not a valid URL ({exc})", "write an http:// or https:// URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
            raise p.err(fld, f"must be an http:// or https:// URL with a host, got {url!r}",
                        'write e.g. "https://hooks.slack.com/services/T000/B000/XXXX"')
        if url in hooks[:i]:
            raise p.err(fld, "is listed twice", "list each webhook once")
    return Notify(tuple(hooks),
                  p.integer(raw, "max_attempts", 5, "notify.max_attempts", minimum=1, maximum=MAX_NOTIFY_ATTEMPTS),
                  p.number(raw, "timeout_seconds", 5.0, "notify.timeout_seconds", positive=True,
                           maximum=MAX_NOTIFY_TIMEOUT,
                           fix_max=f"use a timeout from more than 0 to {MAX_NOTIFY_TIMEOUT:g} seconds"))
