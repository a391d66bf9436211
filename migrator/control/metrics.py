"""Prometheus metrics: the names and families every exporter shares, the HTTP endpoint, and the
controller's collector (phase, slice, breach streak; per host and channel from the stored windows).
Every per-host series carries the label `migration` (the migration id), on the controller's and on
an agent's endpoint alike, so one Prometheus can tell two migrations of the same host apart.

Counters are sums of closed windows, so they only move when a window closes and they add up to
exactly what the database holds. An agent (agent/metrics.py) sums the windows it closes; the
controller's collector reads the database at each scrape (`migrator start`: the migration's
gauges; `migrator lab run`: those plus every host's counters, built from the windows rows, so
one endpoint shows the whole lab while the agents keep talking to nothing but the database).

prometheus_client is imported only when an endpoint is started (`--metrics-addr`), so commands
that never export stay fast to start.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from migrator.errors import MigratorError
from migrator.shared.records import LAG_BUCKETS_LE
from migrator.shared.vocab import MODES, Phase

log = logging.getLogger("migrator.metrics")

# (name without _total, window field, help) of the per host and channel counters.
COUNTERS = (
    ("migrator_events_attempts", "attempts", "Events the BPF program tried to emit on the channel."),
    ("migrator_events_delivered", "delivered", "Events the consumer read from the channel."),
    ("migrator_events_lost", "lost", "Events the perf buffer lost (overflow reported by the kernel). Always 0 "
     "on channel=\"ring\": a ring buffer never overwrites, it refuses the reserve, and a refusal is a drop, "
     "counted in migrator_events_dropped_total (dataplane/counters.py)."),
    ("migrator_parse_errors", "parse_errors", "Records no registered payload layout could read."),
    ("migrator_payload_mismatches", "payload_mismatches",
     "Ring records whose payload differed from perf's record of the same seq (DUAL modes)."),
    ("migrator_events_filled_from_ring", "filled_from_ring",
     "Events perf lost that the consumer delivered from their ring copy instead (DUAL; on channel=\"perf\")."),
    ("migrator_windows", "windows", "Windows closed (the counters above are their sums)."),
)
DROP_CAUSES = (("full", "dropped_full"), ("other", "dropped_other"))
FIELDS = tuple(f for _, f, _ in COUNTERS if f != "windows") + tuple(f for _, f in DROP_CAUSES)
# (name, window field, help) of the per host and channel gauges: the last closed window's value.
GAUGES = (
    ("migrator_producer_ns", "producer_ns",
     "What one emit on the channel cost the traced code in the last window, ns per event (sampled in migrator.h)."),
    ("migrator_peak_bytes", "peak_bytes",
     "The fullest the channel's buffer was in the last window, bytes (perf: its fullest CPU buffer)."),
)
GAUGE_FIELDS = tuple(f for _, f, _ in GAUGES)


def parse_addr(text: str, option: str = "--metrics-addr") -> tuple[str, int]:
    """(host, port) from HOST:PORT ([::1]:PORT for IPv6; port 0 picks a free one); MigratorError otherwise."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise MigratorError(f"{option} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 or 0.0.0.0:9464")
    return host, int(port)


class Endpoint:
    """A /metrics HTTP server on its own daemon thread, serving one collector."""

    def __init__(self, addr: str, collector, option: str = "--metrics-addr") -> None:
        host, port = parse_addr(addr, option)
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        registry.register(BuildInfo())
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise MigratorError(f"{option} {addr}: cannot listen there ({exc.strerror or exc}) "
                                "(fix: pick a free port, or an address of this machine)") from None
        self.host, self.port = host, self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """The scrape URL, with the real port when 0 was asked for."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self.httpd.shutdown()
        self.httpd.server_close()


class BuildInfo:
    """migrator_build_info{version, python} 1, on every endpoint (which build an alert came from)."""

    def collect(self) -> Iterator:
        import platform

        from prometheus_client.core import GaugeMetricFamily

        try:
            from importlib.metadata import version
            v = version("migrator")
        except Exception:  # noqa: BLE001 - a source checkout without metadata
            v = "unknown"
        fam = GaugeMetricFamily("migrator_build_info", "Always 1; the labels name the migrator version and Python.",
                                labels=["version", "python"])
        fam.add_metric([v, platform.python_version()], 1.0)
        yield fam


@dataclass
class _Sums:
    counts: dict
    lag: list[int] | None = None
    lag_sum: float = 0.0
    last: dict = field(default_factory=dict)  # GAUGE_FIELDS of the last window that measured them


class WindowTotals:
    """Running sums per (host, channel) of closed windows: the counters and the lag histogram."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], _Sums] = {}

    def add(self, host: str, channel: str, counts: dict, extra: dict | None) -> None:
        """Fold in one window: `counts` holds the FIELDS (and may hold GAUGE_FIELDS), `extra` may carry
        lag_buckets / lag_sum_s. Windows come in the order they closed."""
        s = self.by_key.get((host, channel))
        if s is None:
            s = self.by_key[(host, channel)] = _Sums({f: 0 for f in FIELDS} | {"windows": 0})
        for f in FIELDS:
            s.counts[f] += counts[f] or 0
        s.counts["windows"] += 1
        for f in GAUGE_FIELDS:
            if counts.get(f) is not None:
                s.last[f] = counts[f]
        b = (extra or {}).get("lag_buckets")
        if b is not None and len(b) == len(LAG_BUCKETS_LE):
            s.lag = list(b) if s.lag is None else [x + y for x, y in zip(s.lag, b)]
            s.lag_sum += float(extra.get("lag_sum_s", 0.0))

    def add_window(self, w) -> None:
        """Fold in one ChannelWindow."""
        self.add(w.host, w.channel, {f: getattr(w, f) for f in FIELDS + GAUGE_FIELDS}, w.extra)

    def families(self, migration: str | None = None) -> Iterator:
        """The counter and histogram families of these sums; every series carries the label
        `migration` (the migration id) when the host serves one (None: a standalone feed, no label)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        mig = [] if migration is None else [str(migration)]
        hc = ["migration", "host", "channel"] if mig else ["host", "channel"]
        keys = sorted(self.by_key)
        for name, f, doc in COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=hc)
            for k in keys:
                fam.add_metric([*mig, *k], self.by_key[k].counts[f])
            yield fam
        fam = CounterMetricFamily("migrator_events_dropped", "Events the BPF program could not emit, by cause "
                                  "(full: no room in the buffer; other: any other refusal).",
                                  labels=[*hc, "cause"])
        for k in keys:
            for cause, f in DROP_CAUSES:
                fam.add_metric([*mig, *k, cause], self.by_key[k].counts[f])
        yield fam
        for name, f, doc in GAUGES:
            fam = GaugeMetricFamily(name, doc, labels=hc)
            for k in keys:
                if f in self.by_key[k].last:
                    fam.add_metric([*mig, *k], self.by_key[k].last[f])
            yield fam
        fam = HistogramMetricFamily("migrator_lag_seconds", "Time from the BPF program's emit to the consumer's "
                                    "read, per delivered event (at the meter's ~9 % bin resolution).",
                                    labels=hc)
        for k in keys:
            s = self.by_key[k]
            if s.lag is not None:
                fam.add_metric([*mig, *k], [(_le(le), v) for le, v in zip(LAG_BUCKETS_LE, s.lag)], sum_value=s.lag_sum)
        yield fam


def _le(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(le)


def mode_family(modes: dict[str, str | None], migration: str | None = None):
    """migrator_mode{migration, host, mode}: 1 for the mode each host runs, 0 for the others (no
    `migration` label when the host serves none: a standalone feed)."""
    from prometheus_client.core import GaugeMetricFamily

    mig = [] if migration is None else [str(migration)]
    fam = GaugeMetricFamily("migrator_mode", "The host's mode (1 for the one in force): PERF, DUAL or RING.",
                            labels=(["migration"] if mig else []) + ["host", "mode"])
    for host in sorted(modes):
        for mode in MODES:
            fam.add_metric([*mig, host, mode], 1.0 if modes[host] == mode else 0.0)
    return fam


def gauge(name: str, doc: str, labels: dict[str, str], value: float):
    """One gauge family with one sample."""
    from prometheus_client.core import GaugeMetricFamily

    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    fam.add_metric(list(labels.values()), value)
    return fam


class MigrationCollector:
    """The controller's metrics, read from the database at each scrape (so moves made by another
    process show too): phase, canary slice, breach streak against N, clean windows, transitions;
    with `per_host`, every host's mode and counters from the windows rows (the lab's one endpoint)."""

    def __init__(self, session_factory, migration_id: int, *, per_host: bool = False) -> None:
        self.sf, self.mid, self.per_host = session_factory, migration_id, per_host
        self._n: int | None = None
        self._lock = threading.Lock()  # scrapes come on the server's threads

    def collect(self) -> Iterator:
        """prometheus_client's collector hook."""
        from sqlalchemy.exc import SQLAlchemyError

        with self._lock:
            try:
                fams = list(self._read())
                up = 1.0
            except SQLAlchemyError as exc:  # an outage: say so instead of stale numbers
                log.warning("metrics: database unreadable: %s", str(exc).splitlines()[0])
                fams, up = [], 0.0
        yield gauge("migrator_database_up", "1 when this scrape could read the migration database.", {}, up)
        yield from fams

    def _read(self) -> Iterable:
        from sqlalchemy import func, select

        from migrator.control.phases import slice_count
        from migrator.store.models import Host, Migration, Transition, Verdict, Window

        mid = str(self.mid)
        with self.sf() as s:
            m = s.get(Migration, self.mid)
            if m is None:
                raise MigratorError(f"metrics: no migration {self.mid}")
            if self._n is None:
                self._n = int(json.loads(m.config_json).get("rollback_after", 3))
            slices = slice_count(s, m.id)
            confirmed = s.scalar(select(func.count()).select_from(Transition).where(
                Transition.migration_id == m.id, Transition.status == "confirmed"))
            host_rows = s.execute(select(Host.name, Host.applied_mode, Host.last_heartbeat, Host.applied_at)
                                  .where(Host.migration_id == m.id).order_by(Host.position)).all()
            hosts = {h: mode for h, mode, _, _ in host_rows} if self.per_host else {}
            last_end = dict(s.execute(select(Window.host, func.max(Window.end)).where(Window.migration_id == m.id)
                                      .group_by(Window.host)).all())
            breaches = s.execute(select(Verdict.host, Verdict.rule, func.count()).where(
                Verdict.migration_id == m.id, Verdict.scope == "host", Verdict.verdict == "breach")
                .group_by(Verdict.host, Verdict.rule)).all()
            cols = FIELDS + GAUGE_FIELDS
            rows = s.execute(select(Window.host, Window.channel, *[getattr(Window, f) for f in cols], Window.extra)
                             .where(Window.migration_id == m.id).order_by(Window.id)).all() if self.per_host else []
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fam = GaugeMetricFamily("migrator_phase", "The migration's phase (1 for the one in force).",
                                labels=["migration", "phase"])
        for p in Phase:
            fam.add_metric([mid, str(p)], 1.0 if m.phase == p else 0.0)
        yield fam
        yield gauge("migrator_canary_slice", "The canary slice in force (0 outside CANARY).", {"migration": mid},
                    m.slice)
        yield gauge("migrator_canary_slices", "Canary slices in the plan.", {"migration": mid}, slices)
        yield gauge("migrator_breach_streak", "Consecutive breaching windows now (rollback at migrator_rollback_after).",
                    {"migration": mid}, m.streak)
        yield gauge("migrator_rollback_after", "Consecutive breaching windows that roll the migration back (N).",
                    {"migration": mid}, self._n)
        yield gauge("migrator_clean_windows", "Clean windows in the current phase or slice.", {"migration": mid},
                    m.clean_windows)
        yield gauge("migrator_transition_pending", "1 while a transition waits for the agents to apply it.",
                    {"migration": mid}, 1.0 if m.pending_transition_id is not None else 0.0)
        c = CounterMetricFamily("migrator_transitions", "Confirmed phase transitions.", labels=["migration"])
        c.add_metric([mid], confirmed)
        yield c
        # Staleness: when each host last reported (heartbeat or mode applied) and its last window ended.
        # An alert compares them with time() (docs/alerts/migrator-rules.yml). A host that never
        # reported has no sample.
        seen = GaugeMetricFamily("migrator_host_last_report_timestamp_seconds",
                                 "Unix time of the host's agent's last report (heartbeat or mode applied).",
                                 labels=["migration", "host"])
        ended = GaugeMetricFamily("migrator_host_last_window_end_timestamp_seconds",
                                  "Unix time the host's last stored window ended.", labels=["migration", "host"])
        for h, _mode, beat, applied in host_rows:
            last = max((t for t in (beat, applied) if t is not None), default=None)
            if last is not None:
                seen.add_metric([mid, h], last)
            if last_end.get(h) is not None:
                ended.add_metric([mid, h], last_end[h])
        yield seen
        yield ended
        by_rule: dict[tuple[str, str], int] = {}
        for h, rule, n in breaches:  # a host verdict's rule lists every rule it broke, comma-separated
            for r in (rule or "").split(","):
                if r:
                    by_rule[(h, r)] = by_rule.get((h, r), 0) + n
        c = CounterMetricFamily("migrator_breaches", "Judged host windows that breached a rule, by host and rule "
                                "(a window that broke two rules counts under each).", labels=["migration", "host", "rule"])
        for (h, r), n in sorted(by_rule.items()):
            c.add_metric([mid, h, r], n)
        yield c
        if self.per_host:
            yield mode_family(hosts, mid)
            totals = WindowTotals()
            for r in rows:
                totals.add(r[0], r[1], dict(zip(cols, r[2:2 + len(cols)])), json.loads(r[-1]) if r[-1] else None)
            yield from totals.families(mid)


def start_migration_metrics(addr: str, session_factory, migration_id: int, *, per_host: bool = False,
                            say: Callable[[str], None] | None = None) -> Endpoint:
    """Serve the controller's metrics of one migration at addr (HOST:PORT); returns the running endpoint."""
    ep = Endpoint(addr, MigrationCollector(session_factory, migration_id, per_host=per_host))
    if say is not None:
        say(f"metrics: {ep.url}")
    return ep
