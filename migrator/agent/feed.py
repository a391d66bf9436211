"""The library that replaces bcc's reader inside the operator's process, and does the agent's duties.

A ring has one shared consumer position and perf one per CPU, so the process that acts on the
events must be the reader. A Feed reads both channels of one MIGRATOR_CHANNEL, hands each event
exactly once to the operator's code from the acting channel (perf in PERF and DUAL, ring in
RING; switches cut at a seq, see dataplane/handover.py; in DUAL a record perf lost comes from its
ring copy instead, `filled_from_ring`), keeps the books of both channels per
window on the shared clock, and, given a database link, follows the host's desired mode, writes
its windows and falls back to PERF when the database is lost (unless RING was confirmed).

    feed = migrator.attach(bpf, "events", config="canary.toml", host="web-7")
    feed.open_perf_buffer(callback)          # bcc's shape: callback(cpu, data, size)
    while True:
        feed.poll(100)                       # replaces bpf.perf_buffer_poll(100)
"""
from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from migrator.agent.link import DbLink, Desired
from migrator.agent.selfprotect import Protection, SelfProtect
from migrator.dataplane.channel import Channel
from migrator.dataplane.handover import Handover
from migrator.dataplane.pipeline import Pipeline
from migrator.dataplane.router import Router
from migrator.dataplane.schema import Registry, bcc_registry
from migrator.errors import MigratorError
from migrator.shared.records import WINDOW_HEADER, ChannelWindow, merge_windows, window_line
from migrator.shared.signals import held
from migrator.shared.vocab import MODES, PERF_PAGES_RULE, is_perf_pages

if TYPE_CHECKING:
    from migrator.agent.metrics import AgentMetrics

log = logging.getLogger("migrator.agent")


def acting_channel(mode: str) -> str:
    """The channel whose records reach the operator's code in a host mode."""
    return "ring" if mode == "RING" else "perf"


class Feed:
    """One channel of the operator's program, read in their process; see the module docstring."""

    def __init__(self, bpf, name: str = "events", *, host: str = "local", mode: str = "DUAL",
                 registry: Registry | None = None, window_seconds: float = 1.0, perf_pages: int = 64,
                 batch_interval: float = 0.005, link: DbLink | None = None, fingerprint: str | None = None,
                 channel: Channel | None = None, guard: SelfProtect | None = None,
                 metrics_addr: str | None = None, metrics: "AgentMetrics | None" = None,
                 ring_wakeup: bool = False) -> None:
        if mode not in MODES:
            raise MigratorError(f"mode {mode!r} unknown; choose one of {', '.join(MODES)}")
        self.bpf, self.name, self.host = bpf, name, host
        self.channel = channel or Channel(bpf, name)
        self.registry = registry or registry_from_bcc(bpf, name)
        self.window_seconds = window_seconds
        self.link = link
        self.owns_link = False  # attach() hands the feed a link it started; the agent keeps its own
        self.report_at_close = False  # standalone: print the window comparison when closed
        self.fingerprint = fingerprint or self.registry.fingerprint()
        # Start from what the kernel runs now (PERF in a program just loaded), then switch.
        self.mode = self.channel.mode
        # Delivery to the operator's code is the data plane's (dataplane/router.py): the pipe routes
        # every drained batch there; the feed only says whom to deliver to and which channel acts.
        self.router = Router(self.registry, acting_channel(self.mode))
        self.pipe = Pipeline(self.channel, host=host, perf_pages=perf_pages, batch_interval=batch_interval,
                             router=self.router)
        self._batched = self.pipe.announce_sleep  # batched ring wakeups: the reader always announces
        self.ring_confirmed = False
        self.switches: list[dict] = []
        self.safe_mode_entered: list[float] = []
        self.windows: list[ChannelWindow] = []  # kept when there is no database link (or keep_windows)
        self.keep_windows = False  # keep them with a link too (wrap's report)
        self._lost_cb: Callable | None = None
        # What lost_cb is told: perf's PERF_RECORD_LOST counts less the records the ring delivered in
        # their place (router.ring_held), plus the ring's refusals while it acts (_operator_lost).
        self._ring_lost = 0  # ring refusals while the ring acted
        self._ring_refused_at: int | None = None
        # The program's ring producer wakes its reader (adaptive or forced wakeups, not
        # BPF_RB_NO_WAKEUP): in DUAL and RING a quiet feed can then sleep until its next duty.
        self.ring_wakeup = ring_wakeup
        self._carry: list[ChannelWindow] = []
        self._lost_seen = 0
        self._next_close = (math.floor(time.time() / window_seconds) + 1) * window_seconds
        # The local rollback rule (agent/selfprotect.py); None: only the controller rolls back.
        self.guard = guard
        # Prometheus counters of the windows this feed closes: served by the feed itself when it is
        # given an address, or shared with the agent that makes it (they outlive a reload).
        self.metrics, self.owns_metrics = metrics, False
        if metrics_addr is not None:
            from migrator.agent.metrics import AgentMetrics

            mid = getattr(link, "migration_id", None)  # the series' `migration` label
            self.metrics, self.owns_metrics = AgentMetrics(metrics_addr, host, mid), True
        if self.metrics is not None:
            self.metrics.mode_source = lambda: self.mode
        self.set_mode(mode)
        self._set_wakes()
        if link is not None:
            link.mode_source = lambda: self.channel.mode  # every heartbeat reports the map's mode
            if getattr(link, "wake_fd", None) is not None:
                self.pipe.add_wake_fd(link.wake_fd)  # a new desired mode ends an idle wait at once

    # -- bcc's reader API -----------------------------------------------------------------------
    def open_perf_buffer(self, callback: Callable, page_cnt: int | None = None, lost_cb: Callable | None = None,
                         wakeup_events: int = 1) -> None:
        """bcc's `table.open_perf_buffer`: callback(cpu, data, size) per event, data at the payload.

        Perf stays what the operator's bcc reader had: `page_cnt` pages per CPU (None: the feed's
        `perf_pages`), a wakeup every `wakeup_events` records (bcc's 1; 0: wake at a quarter-full
        buffer and drain on the batch clock, cheaper for the consumer but the producer then runs
        unthrottled), drained as soon as woken. lost_cb(count) hears of the events lost to the
        operator: perf's lost counts less those the ring delivered instead (DUAL), and the ring's
        refusals while it acts.
        """
        if page_cnt is not None and not is_perf_pages(page_cnt):
            raise MigratorError(f"open_perf_buffer({self.name!r}): page_cnt must be {PERF_PAGES_RULE}, got {page_cnt}")
        self.pipe.reopen_perf(page_cnt or self.pipe.perf.pages, max(0, int(wakeup_events)))
        self._set_wakes()
        self.deliver_to(callback, lost_cb)

    def deliver_to(self, callback: Callable | None, lost_cb: Callable | None = None) -> None:
        """Hand every delivered event to callback(cpu, data, size) (None: nobody), leaving the buffers as they are."""
        self.router.deliver_to(callback)
        self._lost_cb = lost_cb

    def on_batch(self, callback: Callable[[np.ndarray], None]) -> None:
        """Hand every delivered batch to callback as a decoded numpy array (one per event type)."""
        self.router.on_batch(callback)

    @property
    def handover(self) -> Handover:
        """Which channel owns which seqs (the router's)."""
        return self.router.handover

    @property
    def acted(self) -> dict[str, int]:
        """Events delivered to the operator's code so far, per channel."""
        return self.router.acted

    def poll(self, timeout_ms: int = -1) -> int:
        """bcc's `perf_buffer_poll`: wait up to timeout_ms (-1: 1 s) for events and deliver them."""
        timeout = 1.0 if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000
        delivered = sum(self.acted.values())
        self._duties()
        until = self._next_close - time.time()
        if self.link is not None and self.link.up:
            # The link goes down by the clock, not by a wake: be awake when it would.
            until = min(until, self.link.last_ok + self.link.lost_after - time.monotonic() + 0.001)
        self.pipe.poll(timeout=max(0.0, min(timeout, until)))
        self._duties()
        return sum(self.acted.values()) - delivered

    def consume(self) -> int:
        """bcc's `perf_buffer_consume`: deliver what is waiting now, without blocking."""
        delivered = sum(self.acted.values())
        self._duties()
        self.pipe.drain()
        return sum(self.acted.values()) - delivered

    def batches(self, timeout_ms: int = 100) -> Iterator[np.ndarray]:
        """Yield delivered events as decoded numpy structured arrays, for operators who want speed."""
        self.router.queueing = True
        while True:
            self.poll(timeout_ms)
            while self.router.queue:
                yield self.router.queue.pop(0)

    # -- modes ------------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        """Switch this host to PERF, DUAL or RING with every event delivered exactly once.

        A switch of the acting channel passes through DUAL and cuts at the seq read there; no wait is
        needed (dataplane/handover.py: a record emitted in one channel's mode is delivered from it).
        """
        if mode not in MODES:
            raise MigratorError(f"mode {mode!r} unknown; choose one of {', '.join(MODES)}")
        if mode == self.mode:
            return
        t0 = time.time()
        old = self.mode
        if acting_channel(mode) != self.handover.acting:
            if self.channel.mode != "DUAL":
                self.channel.set_mode("DUAL")
            self.handover.cut(self.channel.next_seq, acting_channel(mode))
        self.channel.set_mode(mode)
        read_back = self.channel.mode
        if read_back != mode:
            raise MigratorError(f"{self.host}: mode map reads {read_back} after writing {mode}")
        if mode != "RING":
            self.pipe.watch("perf")
        self.mode = mode
        self._set_wakes()
        self.switches.append({"from": old, "to": mode, "at": t0, "read_back": time.time()})
        if self.link is not None:
            self.link.report(mode, t0)

    def _set_wakes(self) -> None:
        """Tell the pipe how records wake it in this mode: the ring's producer wakes its reader
        (DUAL, RING with ring wakeups); perf wakes by count (PERF, DUAL with wakeup_events), and
        then, while perf acts, a wakeup drains at once as the operator's bcc reader did; in PERF
        the ring's doorbell wakes a reader that announced its sleep (bpf/migrator.h), so an idle
        PERF host needs no batch clock whatever perf's watermark."""
        perf_wakes = self.pipe.perf.wakeup_events > 0 and self.mode != "RING"
        doorbell = self.mode == "PERF" and not perf_wakes  # perf waking by count needs no doorbell
        self.pipe.records_wake = (self.ring_wakeup and self.mode != "PERF") or perf_wakes or doorbell
        self.pipe.announce_sleep = self._batched or doorbell
        self.pipe.drain_on_wake = perf_wakes and self.handover.acting == "perf"

    def _follow(self, desired: Desired) -> None:
        self.set_mode(desired.mode)
        self.ring_confirmed = desired.mode == "RING" and desired.settled

    def _safe_mode(self) -> None:
        """Without the database, fall back to PERF unless RING was already confirmed here."""
        if self.mode != "PERF" and not self.ring_confirmed:
            self.set_mode("PERF")
            self.switches[-1]["reason"] = "database lost"
            self.safe_mode_entered.append(time.time())
            log.warning("%s: database lost: holding PERF until it is back", self.host)

    # -- self-protection (agent/selfprotect.py) ---------------------------------------------------
    def _protect(self, ws: list[ChannelWindow], closed: float) -> Protection | None:
        """Judge the ring window just closed; at the Nth breach in a row, switch to PERF at once."""
        ring = next((w for w in ws if w.channel == "ring"), None)
        desired = self.link.desired if self.link is not None else None
        p = self.guard.observe(ring, desired.phase if desired else None, closed) if ring is not None else None
        if p is None:
            return None
        if self.mode == "PERF":  # already there (cannot happen after a RING window, but never switch twice)
            p.read_back = time.time()
        else:
            self.set_mode("PERF")
            self.switches[-1]["reason"] = "self-protect"
            p.read_back = self.switches[-1]["read_back"]
        self.ring_confirmed = False
        ring.extra["self_protect"] = p.as_dict()
        log.warning("%s: %s; mode map PERF %.2f ms after its books closed (%.2f ms after it ended)", self.host,
                    p.reason, (p.read_back - p.closed_at) * 1000, (p.read_back - p.window_end) * 1000)
        return p

    def _held(self) -> bool:
        """Whether a self-protection holds this host on PERF (released by the migration's next move)."""
        d = self.link.desired if self.link is not None and self.link.up else None
        held = self.guard.holding(d.phase if d else None, d.confirmed_at if d else None)
        if held and self.mode != "PERF":
            self.set_mode("PERF")  # e.g. a reload started the new program in another mode
        return held

    # -- windows ----------------------------------------------------------------------------------
    def _duties(self) -> None:
        now = time.time()
        if now >= self._next_close:
            self.close_window(self.next_index)
            self._next_close += self.window_seconds
            if now > self._next_close:  # we fell behind (suspended?): skip ahead, never fake windows
                self._next_close = (math.floor(now / self.window_seconds) + 1) * self.window_seconds
        if self.link is not None:
            if self.guard is not None and self._held():
                pass  # self-protected: PERF whatever desired_mode says, until the migration moves on
            elif self.link.up and self.link.desired is not None:
                self._follow(self.link.desired)
            elif not self.link.up:
                self._safe_mode()
        if self._lost_cb is not None:
            lost = self._operator_lost()
            if lost > self._lost_seen:
                self._lost_cb(lost - self._lost_seen)
                self._lost_seen = lost

    def _operator_lost(self) -> int:
        """Events lost to the operator so far: perf's PERF_RECORD_LOST counts (what bcc's lost_cb
        hears) less the ring copies delivered in their place, and the ring's refusals while it acts.
        A ring copy is committed before perf can report its loss, and a drain takes perf before the
        ring, so the difference never runs ahead of the truth."""
        if self.handover.acting == "ring":
            refused = self.channel.refused("ring")  # 4 map lookups, every poll, only while the ring acts
            if self._ring_refused_at is not None:
                self._ring_lost += refused - self._ring_refused_at
            self._ring_refused_at = refused
        else:
            self._ring_refused_at = None
        return max(0, self.pipe.perf.lost_reported - self.router.ring_held) + self._ring_lost

    def _switch_evidence(self) -> dict | None:
        """The last mode switch with its timings, reported once its first perf record arrived."""
        if not self.switches or self.switches[-1].get("reported"):
            return None
        sw = self.switches[-1]
        first = self.pipe.first_after.get("perf")
        if sw["to"] != "RING" and first is None and time.time() - sw["at"] < 5 * self.window_seconds:
            return None  # wait a little for the first perf record
        sw["reported"] = True
        return {"from": sw["from"], "to": sw["to"], "at": sw["at"], "read_back": sw.get("read_back"),
                "first_perf_at": first}

    def close_window(self, index: int | None = None) -> list[ChannelWindow]:
        """Close the current window of both channels; send it (or keep it without a database).

        Whole or not at all: a Ctrl-C or SIGTERM that comes meanwhile (a bcc tool stops on
        KeyboardInterrupt) is raised once the window is booked (see shared.signals.held)."""
        with held():
            return self._close_window(index)

    def _close_window(self, index: int | None) -> list[ChannelWindow]:
        ws = _with_lag(self.pipe, self.pipe.close_window(index=index))
        closed = time.time()  # the books are final now (the window ended one grace period ago)
        if self._carry:
            ws = [merge_windows([old, new]) for old, new in zip(self._carry, ws)]
            self._carry = []
        switch = self._switch_evidence()
        for w in ws:
            w.extra["schema_fingerprint"] = self.fingerprint
            if switch:
                w.extra["mode_switch"] = switch
            if self.link is not None and self.link.gap_since is not None:
                w.extra["db_gap_since"] = self.link.gap_since
        protection = self._protect(ws, closed) if self.guard is not None else None
        if self.link is not None:
            self.link.send(ws, protection=protection.as_dict() if protection is not None else None)
        if self.link is None or self.keep_windows:
            self.windows.extend(ws)
        if self.metrics is not None:
            self.metrics.observe(ws)
        return ws

    @property
    def next_index(self) -> int:
        """The index (on the shared clock) of the window this feed closes next."""
        return int(round(self._next_close / self.window_seconds)) - 1

    def join_clock(self, first: "Feed") -> None:
        """Close windows from the same one as `first`, a feed of another channel of the same program
        made just before: a window boundary passing between the two must not leave this feed
        without a part of the window `first` is in (a host's windows merge every channel's part)."""
        self._next_close = min(self._next_close, first._next_close)

    def succeed(self, old: "Feed") -> None:
        """Take over from the feed of a program this one replaces (a reload): the part of the
        running window the old maps measured is folded into this feed's next close, on the same
        clock, and the old feed's history of switches goes on here."""
        self._carry = _with_lag(old.pipe, old.pipe.close_window(index=-1))
        self._next_close = old._next_close
        self.switches, self.safe_mode_entered = old.switches, old.safe_mode_entered
        self.ring_confirmed = old.ring_confirmed
        self.guard = self.guard or old.guard

    def report(self, file=None) -> None:
        """Print the windows kept so far (standalone feeds), perf and ring side by side."""
        out = file or sys.stderr
        print(WINDOW_HEADER, file=out)
        for w in self.windows:
            print(window_line(w), file=out)
        print(f"{self.host}: acted on {self.acted['perf']} events from perf and {self.acted['ring']} from ring",
              file=out)

    def close(self) -> None:
        """Deliver what is left, stop reading (the program and its maps stay with the caller)."""
        try:
            self.pipe.drain()
            if self.report_at_close and self.link is None:
                self.close_window()
                self.report()
        finally:
            self.pipe.close()
            if self.owns_link and self.link is not None:
                self.link.stop()
            if self.owns_metrics:
                self.metrics.close()


def _with_lag(pipe: Pipeline, ws: list[ChannelWindow]) -> list[ChannelWindow]:
    """The windows the pipe just closed, each with its lag histogram at the exported bounds
    (extra lag_buckets and lag_sum_s, taken by the meter as it reset)."""
    for w in ws:
        closed = getattr(pipe.meters.get(w.channel), "closed_lag", None)
        if closed is not None:
            w.extra["lag_buckets"], w.extra["lag_sum_s"] = closed
    return ws


def registry_from_bcc(bpf, name: str) -> Registry:
    """A registry holding the payload type bcc inferred for `name` (type 0, version 0), if any.

    bcc records the struct the program hands to `name.perf_submit`; migrator.h keeps that call
    (never executed) next to every MIGRATOR_OUTPUT so the operator's struct is known here.
    """
    return bcc_registry(bpf, name)  # one implementation: `migrator start` freezes its fingerprint
