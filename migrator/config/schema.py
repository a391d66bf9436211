"""canary.toml's schema: the frozen dataclasses a plan is, their choices and documented maxima.

migrator/config/parse.py builds them from a file; nothing here reads one."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from migrator.shared.passwords import hide_password
from migrator.shared.vocab import DEFAULT_CONFIG, RING_WAKEUPS

NO_DATA_ACTIONS = ("hold", "breach", "reset")
WAKEUPS = tuple(RING_WAKEUPS)
PHASE_KEYS = ("dual_instrument", "shadow", "canary")

# Documented maxima (canary.toml's comments say the same): a value above one is refused with its range.
MAX_WINDOW_SECONDS = 3600.0  # window_seconds: one hour
MAX_ROLLBACK_AFTER = 10_000  # rollback_after: consecutive breaching windows
MAX_CLEAN_WINDOWS = 1_000_000_000  # phases.*.min_clean_windows (the controller bench pins shadow with 10**9)
MAX_WINDOW_COUNT = 1_000_000_000  # thresholds.min_events, max_inversions, max_parse_errors, max_payload_mismatch
MAX_LAG_MS = 3_600_000.0  # thresholds.max_lag_p99_ms: one hour
MAX_RATIO = 1_000_000.0  # thresholds.max_lag_ratio, max_cpu_ratio, max_producer_ratio
MAX_PRODUCER_NS = 1e9  # thresholds.max_producer_ns: a second per event
MAX_PROBE_RATE = 10_000_000  # probe.rate: events/s of the synthetic probe
MAX_RING_BYTES = 1 << 30  # buffers.ring_bytes: 1 GiB
MAX_PERF_PAGES = 16_384  # buffers.perf_pages: 64 MiB per CPU
MAX_DELAY_MS = 1000.0  # buffers.max_delay_ms: a second
MAX_LAB_HOSTS = 64  # lab.hosts: what `migrator lab up` can build (migrator.tools.lab.names.MAX_HOSTS)
MAX_LAB_PPS = 1_000_000  # lab.pps: packets/s into each lab host
MAX_SLICES = 100  # slices: canary steps (each one holds its cumulative host set)
MAX_LOST_AFTER_WINDOWS = 10_000  # agents.lost_after_windows
MAX_STALL_PAUSE_WINDOWS = 1_000_000  # agents.stall_pause_windows
# Overrides `database` / `database_file` of every canary.toml this process loads (a URL or a path), so a
# fleet's password can come from the environment. Not part of the config hash.
DATABASE_URL_ENV = "MIGRATOR_DATABASE_URL"


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
    max_parse_errors: int = 0  # records in the ring window no registered payload layout can read
    max_payload_mismatch: int = 0  # DUAL: ring payloads that differ from perf's for the same seq
    # What the ring's emit costs the traced code (windows' producer_ns, rule producer_cost): against
    # perf's on the same events (SHADOW) or on the hosts still on perf (CANARY), and absolute. Measured
    # here at 2k ev/s: adaptive wakeups ~1.9x perf's (~1,500 ns), force_wakeup ~8x (~7,000 ns).
    max_producer_ratio: float | None = 4.0
    max_producer_ns: float | None = 5000.0


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
    # How long a record may wait in a buffer before the consumer takes it: the batch clock. Longer
    # batches cost less CPU per event; lag grows with it.
    max_delay_ms: float = 10.0


@dataclass(frozen=True)
class Lab:
    """The simulated hosts of `migrator lab` ([lab]): how many, their name prefix, packets/s into each."""

    hosts: int = 4
    prefix: str = "mig"
    pps: int = 2000


ON_LOST_ACTIONS = ("pause", "rollback")


@dataclass(frozen=True)
class Agents:
    """[agents]: when a judged host's agent counts as lost (no report for lost_after_windows
    windows) and what the controller then does (on_lost: pause or rollback); and after how many
    windows a migration that cannot advance (control/stall.py: schema changed, no agent reported,
    too few events) is paused with that reason (stall_pause_windows; 0: never, only logged and shown)."""

    lost_after_windows: int = 5
    on_lost: str = "pause"
    stall_pause_windows: int = 0


MAX_NOTIFY_ATTEMPTS = 20  # notify.max_attempts
MAX_NOTIFY_TIMEOUT = 60.0  # notify.timeout_seconds


@dataclass(frozen=True)
class Notify:
    """[notify]: webhooks that get one JSON document per phase transition (control/notify.py)."""

    webhooks: tuple[str, ...] = ()
    max_attempts: int = 5  # per transition and webhook, with exponential back-off between them
    timeout_seconds: float = 5.0  # per HTTP request


@dataclass(frozen=True)
class StoreSection:
    """[store]: keep_windows, how long the windows of finished migrations are kept (seconds; None:
    forever) before `migrator prune` rolls them up (store/retention.py)."""

    keep_windows: float | None = None


SOURCE_KINDS = ("demo", "bcc", "command", "attach")
ATTACH_TYPES = ("tc", "xdp")
TC_DIRECTIONS = ("ingress", "egress")
XDP_MODES = ("auto", "skb", "native")


@dataclass(frozen=True)
class AttachPoint:
    """One [[source.attach]] entry: where the agent attaches a function bcc does not attach by name.

    `{host}` in device and netns stands for the agent's host name (AttachPoint.for_host).
    """

    type: str  # tc | xdp
    function: str
    device: str
    netns: str = ""  # "" = the agent's own network namespace
    direction: str = "ingress"  # tc only
    mode: str = "auto"  # xdp only: auto | skb | native

    def for_host(self, host: str) -> "AttachPoint":
        """This entry with {host} replaced by `host` in device and netns."""
        from dataclasses import replace
        return replace(self, device=self.device.replace("{host}", host), netns=self.netns.replace("{host}", host))

    def to_dict(self) -> dict[str, str]:
        """The entry in canary.toml shape: only the keys its type uses."""
        d = {"type": self.type, "function": self.function, "device": self.device}
        if self.netns:
            d["netns"] = self.netns
        d.update({"direction": self.direction} if self.type == "tc" else {"mode": self.mode})
        return d


@dataclass(frozen=True)
class SourceConfig:
    """What the agents run ([source]): migrator's demo probes, the operator's bcc program with its
    sink, the operator's unmodified command run through `migrator wrap`, or ("attach") the
    operator's own process that loads the program and serves its channel through
    `migrator.attach(bpf, channel, config=..., host=...)`: file and cflags only name what `start`
    compiles for the schema fingerprint, nothing is run for it and there is no sink. Paths are absolute."""

    kind: str = "demo"
    file: str | None = None  # bcc: the program's C file
    cflags: tuple[str, ...] = ()  # bcc
    channel: str = "events"  # bcc, command: the MIGRATOR_CHANNEL the agent serves
    sink: str | None = None  # bcc: "module:function", called with each decoded numpy batch
    sink_path: str | None = None  # bcc: put on sys.path to import the sink (default: the config's directory)
    attach: tuple[AttachPoint, ...] = ()  # bcc
    command: tuple[str, ...] = ()  # command

    @property
    def sink_module(self) -> str:
        """The module part of sink ("module:function"): what is imported; "" without a sink."""
        return (self.sink or ":").partition(":")[0]

    @property
    def sink_function(self) -> str:
        """The function part of sink ("module:function"): what each batch is handed to; "" without a sink."""
        return (self.sink or ":").partition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        """The table in canary.toml shape: the keys its kind uses, absolute paths."""
        if self.kind == "demo":
            return {"kind": "demo"}
        if self.kind == "command":
            return {"kind": "command", "command": list(self.command), "channel": self.channel}
        if self.kind == "attach":
            return {"kind": "attach", "file": self.file, "cflags": list(self.cflags), "channel": self.channel}
        return {"kind": "bcc", "file": self.file, "cflags": list(self.cflags), "channel": self.channel,
                "sink": self.sink, "sink_path": self.sink_path, "attach": [a.to_dict() for a in self.attach]}


@dataclass(frozen=True)
class Config:
    """A validated canary.toml. `path` is where it came from (not part of the hash)."""

    path: str = DEFAULT_CONFIG
    database: str = "migrator.db"
    # A file whose content is the database URL (or path): keeps a password out of canary.toml.
    database_file: str | None = None
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
    source: SourceConfig = SourceConfig()
    agents: Agents = Agents()
    notify: Notify = Notify()
    store: StoreSection = StoreSection()
    # Resolved at load time: the host list and the cumulative host set of each canary slice.
    host_names: tuple[str, ...] = field(default=(), compare=False)
    slice_hosts: tuple[tuple[str, ...], ...] = field(default=(), compare=False)
    database_url: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The config in canary.toml shape with every default filled in (round-trips through parse)."""
        d = asdict(self)
        for k in ("path", "host_names", "slice_hosts", "database_url"):
            d.pop(k)
        # No secret in the snapshot or the hash: a password written in `database` is hidden, a
        # database_file is named by its path, the environment's URL is never part of it.
        d["database"] = hide_password(self.database)
        if self.database_file is None:
            d.pop("database_file")  # plans written before database_file existed keep their hash
        else:
            d.pop("database")
        d["hosts"] = list(self.hosts)
        d["slices"] = [list(s) if isinstance(s, tuple) else s for s in self.slices]
        # [source] is left out when it is the default (demo probes), so plans written before
        # [source] existed keep their hash; any other source is part of the hash.
        if self.buffers.max_delay_ms == Buffers.max_delay_ms:
            d["buffers"].pop("max_delay_ms")  # plans written before max_delay_ms existed keep their hash
        d.pop("source")
        if self.source != SourceConfig():
            d["source"] = self.source.to_dict()
        if self.agents == Agents():  # likewise [agents]: plans written before it keep their hash
            d.pop("agents")
        elif self.agents.stall_pause_windows == Agents.stall_pause_windows:
            d["agents"].pop("stall_pause_windows")  # and plans written before stall_pause_windows
        # [notify] is where news of the migration goes, not part of the plan: left out of the hash
        # (adding a webhook mid-migration is no change of plan) and of the stored snapshot (a
        # webhook URL is a secret: Slack's carry their token).
        d.pop("notify")
        d.pop("store")  # retention is how long the database keeps windows, not part of the plan either
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


