"""The per-host agent: the data plane of one host, steered by and reporting to the database only.

It loads the probe, applies the host's desired mode (PERF / DUAL / RING) with one map write,
closes a window per channel on the shared clock (index = start // window_seconds, so every
host's window k covers the same period), writes it with a heartbeat, and, when started with
drills on, acts out the faults an operator queues for it (agent/drills.py). Controller and agents share nothing but rows.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from migrator.agent.drills import DRILL_DIR, Drill, DrillBox
from migrator.agent.link import DbLink, Desired
from migrator.dataplane.loader import Probe
from migrator.config import Config
from migrator.errors import MigratorError
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline
from migrator.dataplane.tc import attach_tc
from migrator.dataplane.schema import fingerprint
from migrator.store.api import active_migration, hosts
from migrator.records import ChannelWindow, merge_windows

log = logging.getLogger("migrator.agent")
SHRUNK_RING_BYTES = 4 * 4096  # 16 KiB: ~227 records


@dataclass
class AgentState:
    """What the agent knows about itself (exposed for tests and the live view)."""

    mode: str = "PERF"
    ring_confirmed: bool = False
    switches: list[dict] = field(default_factory=list)
    safe_mode_entered: list[float] = field(default_factory=list)


class Agent:
    """One host's agent. `run()` blocks until `stop` is set or `deadline` passes."""

    def __init__(self, session_factory: sessionmaker[Session], config: Config, host: str,
                 migration_id: int | None = None, *, tc_device: str | None = None, tc_netns: str | None = None,
                 drills: bool = False, drill_dir: Path = DRILL_DIR, mode_poll: float = 0.01,
                 db_lost_after: float | None = None) -> None:
        self.sf, self.cfg, self.host = session_factory, config, host
        self.migration_id = migration_id
        # Where the tc demo probe attaches: by default the lab's layout (device <host>-n inside
        # the namespace named after the host).
        self.tc_device = tc_device or f"{host}-n"
        self.tc_netns = tc_netns if tc_netns is not None else host
        # Drills exist only when asked for (`migrator agent --drills`, which the lab passes).
        self.drills = DrillBox(host, drill_dir) if drills else None
        self.mode_poll = mode_poll
        # Without a successful round trip for this long the database counts as lost.
        self.db_lost_after = db_lost_after if db_lost_after is not None else 3 * config.window_seconds
        self.state = AgentState()
        self.link: DbLink | None = None
        self._carry: list[ChannelWindow] = []
        self._fp = fingerprint()

    def _migration_id(self) -> int:
        """The migration to serve (the active one by default); refuses a host it does not list."""
        with self.sf() as s:
            if self.migration_id is None:
                m = active_migration(s)
                if m is None:
                    raise MigratorError("no active migration in the database; run `migrator init` first")
                self.migration_id = m.id
            names = [h["name"] for h in hosts(s, self.migration_id)]
        if self.host not in names:
            raise MigratorError(f"host {self.host!r} is not part of migration {self.migration_id}; "
                                f"its hosts are: {', '.join(names)} (fix: --host one of them, or add it to canary.toml)")
        return self.migration_id

    # -- kernel side -------------------------------------------------------------------------
    def _apply(self, probe: Probe, pipe: Pipeline, desired: Desired) -> None:
        mode = desired.mode
        if mode != self.state.mode:
            t0 = time.time()
            probe.set_mode(mode)
            read_back = probe.mode  # the map is the truth
            t1 = time.time()
            if read_back != mode:
                raise MigratorError(f"{self.host}: mode map reads {read_back} after writing {mode}")
            self.state.switches.append({"from": self.state.mode, "to": mode, "at": t0, "read_back": t1})
            if mode != "RING":
                pipe.watch("perf")
            self.state.mode = mode
            self.link.report(mode, t0)
        self.state.ring_confirmed = mode == "RING" and desired.settled

    def _safe_mode(self, probe: Probe) -> None:
        """Without the database, fall back to PERF unless RING was already confirmed here."""
        if self.state.mode != "PERF" and not self.state.ring_confirmed:
            probe.set_mode("PERF")
            now = time.time()
            self.state.switches.append({"from": self.state.mode, "to": "PERF", "at": now, "read_back": now,
                                        "reason": "database lost"})
            self.state.safe_mode_entered.append(now)
            self.state.mode = "PERF"
            log.warning("%s: database lost: holding PERF until it is back", self.host)

    def _switch_evidence(self, pipe: Pipeline) -> dict | None:
        """The last mode switch with its timings, reported once its first perf record arrived."""
        if not self.state.switches or self.state.switches[-1].get("reported"):
            return None
        sw = self.state.switches[-1]
        first = pipe.first_after.get("perf")
        if sw["to"] != "RING" and first is None and time.time() - sw["at"] < 5 * self.cfg.window_seconds:
            return None  # wait a little for the first perf record
        sw["reported"] = True
        return {"from": sw["from"], "to": sw["to"], "at": sw["at"], "read_back": sw.get("read_back"),
                "first_perf_at": first}

    def _check_drill(self, pipe: Pipeline) -> Drill | None:
        """Apply a stall at once; return a shrink request for the loop (it needs a reload)."""
        d = self.drills.take() if self.drills is not None else None
        if d is None:
            return None
        if d.kind == "stall-ring":
            pipe.stall_ring_until = time.monotonic() + d.seconds
            log.warning("%s: drill: ring consumer stalled for %s s", self.host, d.seconds)
            return None
        return d

    def _load(self, ring_bytes: int | None = None, mode: str = "PERF") -> tuple[Probe, object, Pipeline]:
        """Compile and load the probe, open both consumers, set `mode`, and only then attach it,
        so the first event it sees already has a perf fd, a ring consumer and the right mode."""
        b = self.cfg.buffers
        probe = Probe(self.cfg.probe.name, ring_bytes=ring_bytes or b.ring_bytes, ring_submit=b.ring_submit,
                      wakeup=b.wakeup)
        gen = pipe = None
        try:
            pipe = Pipeline(probe, host=self.host, perf_pages=b.perf_pages)
            probe.set_mode(mode)
            if self.cfg.probe.name == "tc":
                # replace-filter: an already attached program is swapped atomically
                attach_tc(probe.tc_fn.fd, self.tc_device, self.tc_netns or None)
            elif self.cfg.probe.name == "synthetic":
                gen = LoadGen(self.cfg.probe.rate * 24 * 3600, self.cfg.probe.rate)
                probe.set_target(gen.pid)
                gen.start()
        except Exception:
            if pipe is not None:
                pipe.close()
            probe.close()
            raise
        return probe, gen, pipe

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, deadline: float | None = None) -> str:
        """Serve until stopped; returns why it stopped."""
        stop = stop or threading.Event()
        mid = self._migration_id()
        win = self.cfg.window_seconds
        probe, gen, pipe = self._load()  # PERF: safe until the database says otherwise
        self.link = DbLink(self.sf, mid, self.host, poll=self.mode_poll, lost_after=self.db_lost_after)
        self.link.start()
        why = "stopped"
        try:
            next_close = (math.floor(time.time() / win) + 1) * win
            next_drill_check = 0.0
            restore_at: float | None = None
            while not stop.is_set():
                now = time.time()
                if deadline is not None and now >= deadline:
                    why = "deadline"
                    break
                if now >= next_close:
                    self._close(pipe, int(round(next_close / win)) - 1)
                    next_close += win
                    if now > next_close:  # we fell behind (suspended?): skip ahead, never fake windows
                        next_close = (math.floor(now / win) + 1) * win
                if self.link.up and self.link.desired is not None:
                    self._apply(probe, pipe, self.link.desired)
                elif not self.link.up:
                    self._safe_mode(probe)
                if time.monotonic() >= next_drill_check:
                    next_drill_check = time.monotonic() + 0.05
                    shrink = self._check_drill(pipe)
                    if shrink:
                        ring = shrink.ring_bytes or SHRUNK_RING_BYTES
                        log.warning("%s: drill: ring shrunk to %d bytes for %s s", self.host, ring, shrink.seconds)
                        probe, gen, pipe = self._reload(probe, gen, pipe, ring)
                        restore_at = time.monotonic() + shrink.seconds
                    elif restore_at is not None and time.monotonic() >= restore_at:
                        log.warning("%s: drill over: ring back to %d bytes", self.host, self.cfg.buffers.ring_bytes)
                        probe, gen, pipe = self._reload(probe, gen, pipe, None)
                        restore_at = None
                pipe.poll(timeout=max(0.0, min(self.mode_poll, next_close - time.time())))
        finally:
            if gen is not None:
                gen.kill()
            self.link.stop()
            pipe.close()
            probe.close()
        return why

    def _reload(self, probe: Probe, gen, pipe: Pipeline, ring_bytes: int | None):
        """Reload the probe with another ring size (the shrink-ring fault and its end).

        A reload, unlike a mode switch, replaces programs and maps. The new probe is loaded,
        given its consumers and the current mode, and swapped onto the hook before the old one
        is closed, so no event goes unseen; the old maps' part of the running window is closed
        (its books balance) and merged into the window the new maps close.
        """
        new = self._load(ring_bytes=ring_bytes, mode=self.state.mode)
        if gen is not None:
            gen.kill()
        self._carry = pipe.close_window(index=-1)
        pipe.close()
        probe.close()
        return new

    def _close(self, pipe: Pipeline, index: int) -> None:
        ws = pipe.close_window(index=index)
        if self._carry:
            ws = [merge_windows(old, new) for old, new in zip(self._carry, ws)]
            self._carry = []
        switch = self._switch_evidence(pipe)
        for w in ws:
            w.extra["schema_fingerprint"] = self._fp
            if switch:
                w.extra["mode_switch"] = switch
            gap = self.link.gap_since
            if gap is not None:
                w.extra["db_gap_since"] = gap
        self.link.send(ws)
