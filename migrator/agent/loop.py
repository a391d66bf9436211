"""The per-host agent: loads a program, then serves its channel through a Feed until stopped.

The program is one of migrator's demo probes ([source] kind = "demo", chosen by [probe]) or the
operator's own bcc program ([source] kind = "bcc"): compiled from its file and cflags, its
[[source.attach]] entries attached once its Feed is reading, and every decoded batch of the
acting channel handed to the operator's sink; how many events the sink took is reported in
each window's extra (`sink_events` on the acting channel's window, `sink_total` on both).

The Feed (agent/feed.py) does the host's duties: it follows the desired mode with one map write
per switch (exactly once downstream across every switch), closes a window per channel on the
shared clock (index = start // window_seconds, so every host's window k covers the same
period), writes it with a heartbeat, and holds PERF when the database is lost. The agent adds
what a process of its own needs: loading the program, and, when started with drills on, acting
out the faults an operator queues for it (agent/drills.py). Controller and agents share nothing
but rows.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from migrator.agent.drills import DRILL_DIR, Drill, DrillBox
from migrator.agent.feed import Feed
from migrator.agent.link import DbLink
from migrator.agent.selfprotect import SelfProtect
from migrator.config import Config
from migrator.dataplane.source import source_hash
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.operator import OperatorProgram, import_sink
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.schema import demo_registry
from migrator.dataplane.attachments import AttachRecord, reap
from migrator.dataplane.tc import FILTER_HANDLE, PRIO, TcFilter, attach_tc, detach_filter
from migrator.errors import MigratorError, SourceChanged, UnknownHost
from migrator.shared.records import ChannelWindow
from migrator.store import check_integrity
from migrator.store.api import get_migration, hosts
from migrator.store.hostlease import migration_for_host

log = logging.getLogger("migrator.agent")
SHRUNK_RING_BYTES = 4 * 4096  # 16 KiB: ~200 demo records
# The longest the loop waits in one feed.poll: how late a stop is seen. A new desired mode
# wakes the wait at once (the link's eventfd), windows close on time and records are waited for
# on epoll, so a quiet agent wakes about this often instead of every mode_poll.
LOOP_WAIT_S = 0.25
DRILL_CHECK_S = 0.05


def serve_migration(sf: sessionmaker[Session], host: str, migration_id: int | None) -> int:
    """The migration a host process serves (by default the active one, or the newest finished one that
    still demands a mode of this host: store/hostlease.migration_for_host); refuses a host it does not list.

    Every process that writes windows comes through here before its first write (the agent, the
    library's attach with a config, wrap), so here the whole file gets the check `start` makes
    (check_integrity, SQLite's quick_check): a corrupt database is refused with start's error,
    before a window lands on a bad page."""
    check_integrity(sf)
    with sf() as s:
        if migration_id is None:
            migration_id = migration_for_host(s, host)
        names = [h["name"] for h in hosts(s, migration_id)]
    if host not in names:
        raise UnknownHost(host, migration_id, names)
    return migration_id


class Agent:
    """One host's agent. `run()` blocks until `stop` is set or `deadline` passes."""

    def __init__(self, session_factory: sessionmaker[Session], config: Config, host: str,
                 migration_id: int | None = None, *, tc_device: str | None = None, tc_netns: str | None = None,
                 drills: bool = False, drill_dir: Path = DRILL_DIR, mode_poll: float = 0.01,
                 db_lost_after: float | None = None, metrics_addr: str | None = None) -> None:
        self.sf, self.cfg, self.host = session_factory, config, host
        self.migration_id = migration_id
        if config.source.kind == "attach":
            raise MigratorError('[source] kind = "attach" is not run by `migrator agent`: your own process serves the '
                                f"channel through migrator.attach(bpf, {config.source.channel!r}, config=..., host=...) "
                                "(fix: start that process on this host, or use kind = \"bcc\" with a sink for the agent to run)")
        if config.source.kind not in ("demo", "bcc"):
            raise MigratorError(f'[source] kind = "{config.source.kind}" is not run by `migrator agent`: the command '
                                "is run through `migrator wrap` (fix: use kind = \"bcc\" with the program's file, or "
                                "run the command with `migrator wrap` on this host)")
        # The operator's handler (kind = "bcc") and what it took: imported in run().
        self.sink = None
        self.sink_events = 0  # events handed to the sink that it returned from
        self.sink_errors = 0  # batches whose handler raised (their events are not counted above)
        self._sink_reported = 0
        # Where the tc demo probe attaches: by default the lab's layout (device <host>-n inside
        # the namespace named after the host).
        self.tc_device = tc_device or f"{host}-n"
        self.tc_netns = tc_netns if tc_netns is not None else host
        # Drills exist only when asked for (`migrator agent --drills`, which the lab passes).
        self.drills = DrillBox(host, drill_dir) if drills else None
        self.mode_poll = mode_poll
        # Without a successful round trip for this long the database counts as lost.
        self.db_lost_after = db_lost_after if db_lost_after is not None else 3 * config.window_seconds
        self.link: DbLink | None = None
        self.feed: Feed | None = None
        # The local rollback rule, one per agent so its streak and hold outlive a program reload.
        self.guard = SelfProtect.from_config(host, config, position=lambda: self.link.desired if self.link else None)
        # Prometheus endpoint (--metrics-addr): one per agent, so its counters outlive a reload.
        self.metrics_addr = metrics_addr
        self.metrics = None
        # What this agent attached, on disk for the next agent (dataplane/attachments.py), and the
        # demo tc probe's filter (an operator's program keeps its own, in the same record).
        self.record = AttachRecord(host)
        self.tc_filter: TcFilter | None = None

    @property
    def state(self) -> "Agent":
        """What the agent knows about itself (mode, switches, safe_mode_entered), for tests and views."""
        return self

    @property
    def mode(self) -> str:
        """The mode this host runs (PERF until the program is loaded and the database says more)."""
        return self.feed.mode if self.feed is not None else "PERF"

    @property
    def switches(self) -> list[dict]:
        """Every mode switch so far, with its timings."""
        return self.feed.switches if self.feed is not None else []

    @property
    def safe_mode_entered(self) -> list[float]:
        """When the agent fell back to PERF because the database was lost."""
        return self.feed.safe_mode_entered if self.feed is not None else []

    # -- kernel side -------------------------------------------------------------------------
    def _load(self, ring_bytes: int | None = None, mode: str = "PERF") -> tuple[Probe, LoadGen | None, Feed]:
        """Compile and load the probe, give it a feed in `mode`, and only then attach it, so the
        first event it sees already has a perf fd, a ring consumer and the right mode."""
        if self.cfg.source.kind == "bcc":
            return self._load_operator(mode)
        b = self.cfg.buffers
        probe = Probe(self.cfg.probe.name, ring_bytes=ring_bytes or b.ring_bytes, ring_submit=b.ring_submit,
                      wakeup=b.wakeup)
        gen = feed = None
        try:
            feed = Feed(probe.bpf, "events", channel=probe.channel, host=self.host, mode=mode,
                        registry=demo_registry(), window_seconds=self.cfg.window_seconds,
                        perf_pages=b.perf_pages, batch_interval=b.max_delay_ms / 1000, link=self.link,
                        guard=self.guard, metrics=self.metrics, ring_wakeup=b.wakeup != "no_wakeup")
            if self.cfg.probe.name == "tc":
                # replace-filter at an explicit (prio, handle): a reload swaps this one filter
                # atomically, never stacks another; recorded before it exists, so a SIGKILL at any
                # point leaves the next agent a record of it
                f = TcFilter(self.tc_device, self.tc_netns or None, "ingress", PRIO, FILTER_HANDLE, "tc_packet")
                self.record.add(f.to_dict())
                self.tc_filter = f
                attach_tc(probe.tc_fn.fd, f.device, f.netns, f.direction, f.name, prio=f.prio, handle=f.handle)
            elif self.cfg.probe.name == "synthetic":
                gen = LoadGen(self.cfg.probe.rate * 24 * 3600, self.cfg.probe.rate)
                probe.set_target(gen.pid)
                gen.start()
        except Exception:
            if feed is not None:
                feed.close()
            probe.close()
            raise
        return probe, gen, feed

    def _load_operator(self, mode: str) -> tuple[OperatorProgram, None, Feed]:
        """The operator's program: compile it, put a Feed (bcc's inferred payload type) with the
        sink on its channel, then attach its [[source.attach]] entries."""
        src = self.cfg.source
        prog = OperatorProgram.load(src, self.host)
        prog.record = self.record  # its tc/XDP attachments are recorded and removed exactly
        feed = None
        try:
            feed = Feed(prog.bpf, src.channel, channel=prog.channel, host=self.host, mode=mode,
                        window_seconds=self.cfg.window_seconds, perf_pages=self.cfg.buffers.perf_pages,
                        batch_interval=self.cfg.buffers.max_delay_ms / 1000, link=self.link, guard=self.guard,
                        metrics=self.metrics)
            feed.on_batch(self._to_sink)
            prog.attach()
        except Exception:
            if feed is not None:
                feed.close()
            prog.close()
            raise
        return prog, None, feed

    def _to_sink(self, rows) -> None:
        """Hand one decoded batch to the operator's sink, counting what it took."""
        try:
            self.sink(rows)
        except Exception:  # the operator's code: log it, count it, keep serving
            self.sink_errors += 1
            if self.sink_errors == 1 or self.sink_errors % 1000 == 0:
                log.exception("%s: sink %s raised (%d batches so far; their events are not counted as acted)",
                              self.host, self.cfg.source.sink, self.sink_errors)
            return
        self.sink_events += len(rows)

    def _annotate(self, ws: list[ChannelWindow]) -> None:
        """The sink's books in the windows being sent: the events it took since the last close on
        the acting channel's window, its running totals on both."""
        if self.sink is None or self.feed is None:
            return
        delta = self.sink_events - self._sink_reported
        self._sink_reported = self.sink_events
        acting = self.feed.handover.acting
        for w in ws:
            w.extra["sink_total"] = self.sink_events
            if self.sink_errors:
                w.extra["sink_errors"] = self.sink_errors
            if w.channel == acting:
                w.extra["sink_events"] = delta

    def _check_source(self) -> None:
        """Refuse to run an operator's program other than the one the migration recorded."""
        if self.cfg.source.kind != "bcc":
            return
        with self.sf() as s:
            m = get_migration(s, self.migration_id)
            recorded = m.source_hash
        digest = source_hash(self.cfg)
        if recorded is not None and digest != recorded:
            raise SourceChanged(self.migration_id, self.cfg.source.file, digest, recorded)

    def _check_drill(self) -> Drill | None:
        """Apply a stall at once; return a shrink request for the loop (it needs a reload)."""
        d = self.drills.take() if self.drills is not None else None
        if d is None:
            return None
        if d.kind == "stall-ring":
            self.feed.pipe.stall_ring_until = time.monotonic() + d.seconds
            log.warning("%s: drill: ring consumer stalled for %s s", self.host, d.seconds)
            return None
        if self.cfg.source.kind == "bcc":
            log.warning("%s: drill %s ignored: the ring size of an operator's program is in its C text "
                        "(MIGRATOR_CHANNEL), not the agent's to change", self.host, d.kind)
            return None
        return d

    def _detach(self) -> None:
        """Remove the demo tc probe's filter, exactly (its hook, prio, handle), and its record entry.
        An operator's program detaches its own in close(). Every exit of run() comes through here."""
        f, self.tc_filter = self.tc_filter, None
        if f is None:
            return
        try:
            detach_filter(f)
        except Exception as exc:  # noqa: BLE001 - the namespace may be gone (lab down)
            log.warning("%s: detaching tc filter %s: %s", self.host, f, exc)
        self.record.remove(f.to_dict())

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, deadline: float | None = None) -> str:
        """Serve until stopped; returns why it stopped."""
        stop = stop or threading.Event()
        mid = self.migration_id = serve_migration(self.sf, self.host, self.migration_id)
        if self.cfg.source.kind == "bcc":
            self._check_source()
            os.environ["MIGRATOR_HOST"] = self.host  # the sink may name its outputs after the host
            self.sink = import_sink(self.cfg.source)
        self.link = DbLink(self.sf, mid, self.host, poll=self.mode_poll, lost_after=self.db_lost_after)
        self.link.on_send = self._annotate
        if self.metrics_addr is not None and self.metrics is None:
            from migrator.agent.metrics import AgentMetrics

            self.metrics = AgentMetrics(self.metrics_addr, self.host, mid)
            log.info("%s: metrics at %s", self.host, self.metrics.url)
        # What a dead predecessor of this host left attached, found by its record, goes first.
        reap(self.host, self.record.directory)
        try:
            probe, gen, self.feed = self._load()  # PERF: safe until the database says otherwise
        except BaseException:
            self._detach()
            self.link.release()  # never started: stop() would not run
            if self.metrics is not None:
                self.metrics.close()
                self.metrics = None
            raise
        self.link.start()
        why = "stopped"
        try:
            next_drill_check = 0.0
            restore_at: float | None = None
            while not stop.is_set():
                if deadline is not None and time.time() >= deadline:
                    why = "deadline"
                    break
                if self.link.lease_lost is not None:  # another process serves this host now
                    why = f"host lease taken over by {self.link.lease_lost}"
                    break
                if time.monotonic() >= next_drill_check:
                    next_drill_check = time.monotonic() + DRILL_CHECK_S
                    shrink = self._check_drill()
                    if shrink:
                        ring = shrink.ring_bytes or SHRUNK_RING_BYTES
                        log.warning("%s: drill: ring shrunk to %d bytes for %s s", self.host, ring, shrink.seconds)
                        probe, gen = self._reload(probe, gen, ring)
                        restore_at = time.monotonic() + shrink.seconds
                    elif restore_at is not None and time.monotonic() >= restore_at:
                        log.warning("%s: drill over: ring back to %d bytes", self.host, self.cfg.buffers.ring_bytes)
                        probe, gen = self._reload(probe, gen, None)
                        restore_at = None
                wait = max(self.mode_poll, LOOP_WAIT_S if self.drills is None else DRILL_CHECK_S)
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.time()))
                self.feed.poll(int(wait * 1000))
        finally:
            self._detach()  # first: the program stops emitting into a ring nobody will read
            if gen is not None:
                gen.kill()
            self.link.stop()
            self.feed.close()
            probe.close()
            if self.metrics is not None:
                self.metrics.close()
                self.metrics = None
        return why

    def _reload(self, probe: Probe, gen, ring_bytes: int | None):
        """Reload the probe with another ring size (the shrink-ring drill and its end).

        A reload, unlike a mode switch, replaces programs and maps. The new probe is loaded,
        given its feed in the current mode, and swapped onto the hook before the old one is
        closed, so no event goes unseen; the old maps' part of the running window is closed
        (its books balance) and merged into the window the new maps close.
        """
        old_feed = self.feed
        new_probe, new_gen, new_feed = self._load(ring_bytes=ring_bytes, mode=old_feed.mode)
        if gen is not None:
            gen.kill()
        new_feed.succeed(old_feed)
        old_feed.close()
        probe.close()
        self.feed = new_feed
        return new_probe, new_gen
