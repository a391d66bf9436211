"""canary.toml: its schema (config/schema.py: the dataclasses a plan freezes into, choices and
maxima) and its parser (config/parse.py: load, validate, freeze; every problem a ConfigError naming
the file, the dotted field and the fix). Import from here."""
from migrator.config.parse import (
    TOP_KEYS, parse_config, load_config, config_from_snapshot, SOURCE_KEYS, ATTACH_KEYS,
)
from migrator.config.schema import (
    NO_DATA_ACTIONS, WAKEUPS, PHASE_KEYS, MAX_WINDOW_SECONDS, MAX_ROLLBACK_AFTER, MAX_CLEAN_WINDOWS,
    MAX_WINDOW_COUNT, MAX_LAG_MS, MAX_RATIO, MAX_PRODUCER_NS, MAX_PROBE_RATE, MAX_RING_BYTES,
    MAX_PERF_PAGES, MAX_DELAY_MS, MAX_LAB_HOSTS, MAX_LAB_PPS, MAX_SLICES, MAX_LOST_AFTER_WINDOWS,
    MAX_STALL_PAUSE_WINDOWS, DATABASE_URL_ENV, PhaseRule, Phases, Thresholds, ProbeConfig, Buffers,
    Lab, ON_LOST_ACTIONS, Agents, MAX_NOTIFY_ATTEMPTS, MAX_NOTIFY_TIMEOUT, Notify, StoreSection,
    SOURCE_KINDS, ATTACH_TYPES, TC_DIRECTIONS, XDP_MODES, AttachPoint, SourceConfig, Config,
)

__all__ = [name for name in dir() if not name.startswith("_") and name not in ("parse", "schema")]
