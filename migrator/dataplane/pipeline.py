"""One channel's data plane in one process: both consumers, and window accounting."""
from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from migrator.dataplane.counters import Counters
from migrator.dataplane.kstats import close_stats, enable_stats, prog_run_stats, stats_on
from migrator.dataplane.readers import PerfConsumer, RingConsumer
from migrator.dataplane.frames import EPOCHS, Frames, concat_headers
from migrator.dataplane.grace import GracePeriod
from migrator.dataplane.native_loop import NativeLoop
from migrator.dataplane.router import Router
from migrator.dataplane.windows import ChannelMeter
from migrator.shared.records import ChannelWindow
from migrator.shared.signals import held

# Measurement (lag histogram, ordering, epoch counts, and the router's: payload
# comparison, parse checks) runs on the batches of many drains at once, about this often, and
# always before a window's books are read: delivery stays at every drain, while the fixed cost of
# a measuring pass (some 30 numpy calls) is paid ~10 times a second instead of once per drain.
MEASURE_EVERY_S = 0.1
# ...or sooner, after this many batches (bounds the ring's spare buffers they hold) or records: at
# high rates a pass over 100 ms of records would stall draining long enough for perf to overflow,
# while there the fixed cost is small beside the per-record one anyway.
MEASURE_MAX_BATCHES = 24
MEASURE_MAX_RECORDS = 16384
# With drain_on_wake, records below 1/TRICKLE of a perf buffer may wait for a batch to form (not
# past the batch clock), checked every step in which the producer's ceiling (~2.2 M records/s of
# ~100 bytes here, KERNEL_NOTES) fills half a buffer; more are drained at once.
TRICKLE = 16
PRODUCER_CEILING_BPS = 2.5e8
MIN_STEP_S = 50e-6


class ChannelSource(Protocol):
    """What a pipeline reads: one migrator channel's maps and counters, and the programs behind it
    (a demo Probe, or a Channel of the operator's program)."""

    ring_map_fd: int
    ring_bytes: int
    perf_map: object
    mode: str
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        """Stamp the next records with `epoch` and count them in its parity's counter set."""
        ...

    def counters(self, parity: int | None = None) -> dict[str, Counters]:
        """{"perf": Counters, "ring": Counters}: the channel's emit counters, summed over CPUs (and
        over the counter sets of both epoch parities, or of one)."""
        ...

    def prog_fds(self) -> list[int]:
        """The fds of the BPF programs that write the channel, for their run-time statistics."""
        ...

    def reader_sleeps(self, on: bool) -> None:
        """Set or clear the mode word's sleep bit (batched ring wakeups)."""
        ...

    def mode_map(self) -> tuple[int, int]:
        """(fd, value size) of the map holding the mode word: the native loop sets the sleep bit itself."""
        ...


class Pipeline:
    """Drains both buffers of one channel (its `source`) and closes per-channel windows that balance exactly.

    Each window is one epoch of the channel (bpf/migrator.h EPOCHS): its records carry it and its
    counters are kept apart, so closing a window is moving the channel to the next epoch, waiting
    one RCU grace period (grace.py) while draining, and then balancing the closed epoch alone:
    attempts = delivered + dropped + lost + in flight, exactly, however busy the stream.

    Waiting (poll) is a timer while records flow: a drain every `batch_interval` (the
    `[buffers] max_delay_ms` budget), sooner when a buffer would pass half full, so records
    arrive in batches instead of one wake-up each; after a quiet drain it is epoll on the ring map
    fd and the perf fds, bounded by the same budget.
    """

    def __init__(self, source: "ChannelSource", host: str = "local", perf_pages: int = 64, perf_wakeup_events: int = 0,
                 batch_interval: float = 0.005, keep_records: bool = False, router: Router | None = None,
                 native: bool = True) -> None:
        self.source = source  # the channel read: a Channel, or a demo Probe (its channel and its target)
        self.host = host
        self.batch_interval = batch_interval
        self.ring = RingConsumer(source.ring_map_fd, source.ring_bytes)
        try:
            self.perf = PerfConsumer(source.perf_map, pages=perf_pages, wakeup_events=perf_wakeup_events)
        except Exception:
            self.ring.close()
            raise
        self._ep = select.epoll()
        self._wake_ep = select.epoll()  # the wake fds alone: what the native loop waits on while records flow
        self._ep.register(self.ring.fileno(), select.EPOLLIN)
        for fd in self.perf.fds():
            self._ep.register(fd, select.EPOLLIN)
        self._stats_fd = enable_stats()
        self.meters = {"perf": ChannelMeter("perf"), "ring": ChannelMeter("ring")}
        self.keep_records = keep_records
        # Delivery (router.py): every drained batch is routed to the operator's code, each measuring
        # pass's headers measured, each closed window annotated. None: measure only (shadow, benches).
        self.router = router
        # Delivered batches not measured yet, in consumption order: (channel, batch, consume time ns).
        self._pending: list[tuple[str, Frames, int]] = []
        self._pending_n = 0  # records in _pending
        self._next_measure = time.monotonic() + MEASURE_EVERY_S
        self.records: dict[str, list[Frames]] = {"perf": [], "ring": []}
        self.window_index = 0
        self._win_start = time.time()
        self._last_drain = time.monotonic()
        # Assume the producer ceiling until drains have measured the real rate, in bytes per second.
        self._rate = {"perf": PRODUCER_CEILING_BPS, "ring": PRODUCER_CEILING_BPS}
        self._prev_parse = {"perf": 0, "ring": 0}
        self._prev_run = prog_run_stats(source.prog_fds())
        self._prev_lost_reported = 0
        # Records delivered per channel and epoch since the epoch's window was last closed.
        self._by_epoch = {"perf": np.zeros(EPOCHS, np.int64), "ring": np.zeros(EPOCHS, np.int64)}
        self._grace = GracePeriod()
        # Written when a window close's grace period has passed: a wake fd (add_wake_fd below).
        self._grace_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Counters of the idle parity's set, read before its epoch starts (what that epoch adds to).
        self._base: dict[int, dict[str, Counters]] = {}
        # Start a fresh epoch: whatever ran before us (records still buffered included) is not ours.
        self._grace.wait()
        self._epoch = source.epoch
        self._advance_epoch()
        self.delivered_total = {"perf": 0, "ring": 0}
        self.stall_ring_until = 0.0
        # poll(): the last drain found nothing, so wait on epoll rather than on the batch clock.
        self._idle = True
        # Whether every record is sure to wake an epoll waiter: the ring's producer wakes (adaptive
        # or forced wakeups) and every record reaches the ring (DUAL, RING), or perf wakes by count
        # (wakeup_events) and every record reaches perf (PERF, DUAL). An idle wait may then last
        # the caller's whole timeout instead of one batch interval, since a record can no longer
        # arrive unseen. False (the timer, as for perf below its watermark) unless the owner
        # knows; set it through `records_wake`.
        self._records_wake = False
        # Whether a perf wakeup ends any wait at once (bcc's reader: drain as records arrive): set
        # by the owner while perf acts and its buffers wake by count, so a burst the producer
        # writes is drained as fast as an unmodified bcc tool drains it, never on the batch clock.
        self.drain_on_wake = False
        # Producers that wake the reader only when it says it sleeps: batched ring wakeups
        # (bpf/migrator.h MIGRATOR_RING_WAKEUP 3), and in PERF the ring's doorbell
        # (__migrator_doorbell). Before a wait without the batch clock the reader sets the mode
        # word's sleep bit, and clears it when it wakes: one wakeup per quiet spell, none while
        # it drains. The owner sets it for PERF; batched probes have it from the start.
        self.announce_sleep = getattr(source, "wakeup", None) == "batched"
        self._timer_until = 0.0  # until then idle waits keep the batch clock (after a mode switch)
        # eventfds (add_wake_fd) whose write ends an idle wait at once: the owner's duties changed.
        self._wake_fds: set[int] = set()
        self.add_wake_fd(self._grace_fd)
        # Rollback timing: after watch(channel), the wall time of the first record delivered on it.
        self.watch_first: dict[str, float | None] = {}
        self.first_after: dict[str, float | None] = {}
        # The hot loop in C (loop.c, native_loop.py): waits, drains and measures without entering
        # Python between the owner's duties. native=False keeps the Python path of poll and drain,
        # the loop's reference (tests hold the two to the same books); so does keep_records.
        self._native = NativeLoop(self) if native else None

    # -- consuming ----------------------------------------------------------------------------
    def watch(self, channel: str) -> None:
        """Note when the next record arrives on `channel` (first delivery after a mode switch)."""
        self.drain()  # what is already buffered predates the switch
        self.watch_first[channel] = time.time()
        self.first_after[channel] = None

    @property
    def records_wake(self) -> bool:
        """Whether a new record is sure to end an idle epoll wait (see __init__)."""
        return self._records_wake

    @records_wake.setter
    def records_wake(self, on: bool) -> None:
        if on and not self._records_wake:
            # A record emitted just before the switch may sit in perf below its watermark:
            # keep the batch clock a little longer so it is not left waiting.
            self._timer_until = time.monotonic() + 2 * self.batch_interval
        self._records_wake = bool(on)

    def add_wake_fd(self, fd: int) -> None:
        """Let an eventfd end waits: a write to it makes poll() return (its count is read). The native
        loop hears it in any wait; the Python path in idle waits."""
        if fd not in self._wake_fds:
            self._ep.register(fd, select.EPOLLIN)
            self._wake_ep.register(fd, select.EPOLLIN)
            self._wake_fds.add(fd)

    def reopen_perf(self, pages: int, wakeup_events: int) -> None:
        """Re-size the perf buffers (pages per CPU) and their wakeup (every `wakeup_events`-th record,
        0: the quarter-buffer watermark), losing nothing: the new buffers take the map's slots, one
        grace period lets the writers that read the old slots finish, and what they wrote is
        delivered before the old buffers are freed. Running totals (lost, parse errors) go on."""
        old = self.perf
        if pages == old.pages and wakeup_events == old.wakeup_events:
            return
        self.drain()
        new = PerfConsumer(self.source.perf_map, pages=pages, wakeup_events=wakeup_events)
        self._grace.wait()  # no program still writes to the old buffers after this
        self._take("perf", old)
        new.carry_from(old)
        self.perf = new
        for fd in old.fds():
            self._ep.unregister(fd)
        old.close(clear_map=False)
        for fd in new.fds():
            self._ep.register(fd, select.EPOLLIN)

    def _clear_wakes(self, events: list[tuple[int, int]]) -> None:
        for fd, _ev in events:
            if fd in self._wake_fds:
                try:
                    os.eventfd_read(fd)
                except OSError:  # already read (or closed by its owner): nothing to clear
                    pass

    @property
    def ring_stalled(self) -> bool:
        """Fault injection: while True the ring is not consumed (it fills and ages)."""
        return time.monotonic() < self.stall_ring_until

    def _take(self, channel: str, consumer=None) -> int:
        if channel == "ring" and self.ring_stalled:
            return 0
        batch = (consumer or (self.ring if channel == "ring" else self.perf)).consume()
        n = len(batch)
        if n:
            if self.watch_first.get(channel) is not None and self.first_after.get(channel) is None:
                self.first_after[channel] = time.time()
            # Measured later (flush_measure), against this consume time.
            self._pending.append((channel, batch, time.monotonic_ns()))
            self._pending_n += n
            if self.router is not None:
                self.router.route(channel, batch, self.compare_room())
            self.delivered_total[channel] += n
            if self.keep_records:
                self.records[channel].append(batch)
        return n

    def flush_measure(self) -> None:
        """Measure every batch delivered since the last pass: lag, ordering, epochs, then the
        router's measuring pass; the results are those of measuring each batch as it was drained."""
        self._next_measure = time.monotonic() + MEASURE_EVERY_S
        pending, self._pending, self._pending_n = self._pending, [], 0
        if not pending:
            return
        t0 = time.thread_time()
        joined: dict[str, np.ndarray] = {}
        for ch in ("perf", "ring"):
            mine = [(b.hdr, t) for c, b, t in pending if c == ch]
            if not mine:
                continue
            hdr = joined[ch] = concat_headers([h for h, _ in mine])
            self.meters[ch].add_batches(hdr, [len(h) for h, _ in mine], [t for _, t in mine], self._by_epoch[ch])
            t1 = time.thread_time()
            self.meters[ch].cpu_s += t1 - t0
            t0 = t1
        if self.router is not None:
            self.router.measure(joined)
            # the router's share, by records (its work is per record: hashing, checks)
            spent = time.thread_time() - t0
            n = {"perf": 0, "ring": 0}
            for c, b, _ in pending:
                n[c] += len(b)
            total = n["perf"] + n["ring"]
            for ch in ("perf", "ring"):
                self.meters[ch].cpu_s += spent * n[ch] / total

    def compare_room(self) -> bool:
        """Whether the payload comparison may spend CPU now: not while a buffer is a quarter full
        after a drain (the consumer is behind, and the acting channel must not lose records)."""
        return (self.perf.max_pending_bytes() < self.perf.capacity_per_cpu() // 4
                and self.ring.pending_bytes() < self.ring.capacity() // 4)

    @property
    def native(self) -> bool:
        """Whether poll and drain run in C (loop.c)."""
        return self._native is not None and not self.keep_records

    @native.setter
    def native(self, on: bool) -> None:
        """Run poll and drain in C (True) or on the Python path, the reference (False): tests that
        reach into the readers (a fault made in userspace) take the Python path."""
        if on and self._native is None:
            self._native = NativeLoop(self)
        elif not on:
            self._native = None

    def drain(self) -> int:
        """Consume everything both channels hold right now (and measure, when a pass is due)."""
        if self.native:
            return self._native.drain()
        now = time.monotonic()
        dt = max(now - self._last_drain, 1e-4)
        self._last_drain = now
        b_perf, b_ring = self.perf.consumed_bytes, self.ring.consumed_bytes
        t0 = time.thread_time()
        n_perf = self._take("perf")
        t1 = time.thread_time()
        n_ring = self._take("ring")
        t2 = time.thread_time()
        self.meters["perf"].cpu_s += t1 - t0
        self.meters["ring"].cpu_s += t2 - t1
        if self._pending and (now >= self._next_measure or len(self._pending) >= MEASURE_MAX_BATCHES
                              or self._pending_n >= MEASURE_MAX_RECORDS):
            self.flush_measure()
        # Bytes per second per channel. Fast attack, slow decay: one quiet gap must not make the
        # next sleep overrun a buffer.
        self._rate = {"perf": max((self.perf.consumed_bytes - b_perf) / dt, 0.95 * self._rate["perf"]),
                      "ring": max((self.ring.consumed_bytes - b_ring) / dt, 0.95 * self._rate["ring"])}
        return n_perf + n_ring

    def _headroom(self) -> float:
        """Seconds until the fullest buffer reaches half its capacity at the last drain's rate."""
        perf_cap = self.perf.capacity_per_cpu()
        ring_cap = self.ring.capacity()
        room = [(perf_cap / 2 - self.perf.max_pending_bytes()) / max(self._rate["perf"], 1.0)]
        if not self.ring_stalled:
            room.append((ring_cap / 2 - self.ring.pending_bytes()) / max(self._rate["ring"], 1.0))
        return max(0.0, min(room))

    def _let_batch_form(self, timeout: float) -> None:
        """With drain_on_wake: a trickle in perf (below 1/TRICKLE of a buffer) waits a little so a
        batch forms (one drain per record costs the consumer several times bcc's per-record price);
        more is drained at once, as bcc's reader drains a burst. The wait is two sleeps: a first
        one short enough that even the producer's ceiling cannot fill half a buffer within it,
        which measures the rate now, then the rest of the batch clock, unless that rate would
        reach 2/TRICKLE of a buffer sooner. Sleeps, so perf's wakeups meanwhile cost nothing."""
        cap = self.perf.capacity_per_cpu()
        step = cap / 2 / PRODUCER_CEILING_BPS
        if step < MIN_STEP_S:  # a buffer this small is drained as soon as anything is in it
            return
        t0 = time.monotonic()
        end = min(t0 + timeout, self._last_drain + self.batch_interval)
        p0 = self.perf.max_pending_bytes()
        if not 0 < p0 < cap // TRICKLE or end <= t0:
            return
        time.sleep(min(step, end - t0))
        t1, p1 = time.monotonic(), self.perf.max_pending_bytes()
        if p1 >= cap // TRICKLE or end <= t1:
            return
        rate = (p1 - p0) / max(t1 - t0, 1e-6)
        time.sleep(min(end - t1, (2 * cap / TRICKLE - p1) / rate) if rate > 0 else end - t1)

    def poll(self, timeout: float = 0.1) -> int:
        """Wait for the batch clock (never longer than `timeout` s), then drain both channels.

        A drain is due `batch_interval` (the `[buffers] max_delay_ms` budget) after the previous
        one, sooner when a buffer would pass half full at the rate just seen: batches grow as long
        as the rate allows, and no record waits longer than the budget. While records flow the wait
        is one sleep to that instant (no epoll, no wake-up per record, nothing read per call but the
        buffer positions). With `drain_on_wake` (perf acts and wakes by count, as the operator's bcc
        reader did) every wait is the idle one below, and records perf holds are drained at once,
        as bcc's reader drains them. After a drain that found nothing, the wait is an epoll on the
        ring and perf fds, bounded by the budget: the ring's wakeup or perf's watermark ends it early, and a
        record that wakes nobody (BPF_RB_NO_WAKEUP, perf below its watermark) is found by the
        timer. When every record is sure to wake a waiter (`records_wake`), the idle wait
        lasts the whole `timeout`: a quiet consumer then wakes only for its owner's duties. A write
        to a wake fd (add_wake_fd) ends any idle wait. Returns 0 without draining when `timeout`
        ends before a drain is due.

        The native loop (loop.c) does the same in C, over and over until `timeout` has passed (or a
        wake fd fires, a signal comes, or a drained batch is to be delivered); returns the records drained.
        """
        if self.native:
            return self._native.run(timeout)
        now = time.monotonic()
        eager = self.drain_on_wake and not self.ring_stalled
        if self._idle or eager:
            long_wait = self._records_wake and now >= self._timer_until
            wait = timeout if long_wait else min(timeout, self.batch_interval)
            if eager and self.perf.pending_bytes():
                pass  # perf holds records (its wakeup may have been seen by another waiter)
            elif self.ring_stalled:
                time.sleep(min(wait, self.batch_interval))  # the ring's fd stays readable while stalled: epoll would spin
            elif wait > 0:
                sleeps = long_wait and self.announce_sleep and wait > self.batch_interval
                if sleeps:
                    self.source.reader_sleeps(True)
                try:
                    # a record written before the bit was seen wakes nobody: look once more
                    if not (sleeps and (self.ring.pending_bytes() or self.perf.pending_bytes())):
                        events = self._ep.poll(wait)
                        if events and self._wake_fds:
                            self._clear_wakes(events)
                finally:
                    if sleeps:
                        self.source.reader_sleeps(False)
            if eager:
                self._let_batch_form(timeout)
            ring = 0 if self.ring_stalled else self.ring.pending_bytes()
            if not (ring or self.perf.pending_bytes()):
                return 0  # nothing came: no drain, no allocation
            # The first records after a quiet spell: take them now (they waited since the epoll).
        else:
            due = min(self._last_drain + self.batch_interval, now + self._headroom())
            if due - now > timeout:
                if timeout > 0:
                    time.sleep(timeout)
                return 0
            if due > now:
                time.sleep(due - now)
        n = self.drain()
        self._idle = n == 0
        return n

    # -- accounting ---------------------------------------------------------------------------
    def _advance_epoch(self) -> int:
        """Move the channel to the next epoch; returns the one that ended.

        The next epoch's counter set is idle here (its previous epoch ended a grace period ago), so
        its value now is exactly what the new epoch will add to."""
        ended, nxt = self._epoch, (self._epoch + 1) % EPOCHS
        self._base[nxt & 1] = self.source.counters(parity=nxt & 1)
        self.source.set_epoch(nxt)
        self._epoch = nxt
        return ended

    def close_window(self, index: int | None = None) -> list[ChannelWindow]:
        """Close the current window: one ChannelWindow per channel, then start the next.

        `index` names the window (agents use the shared clock so all hosts agree); by default
        windows are numbered from 0. The window ends when the channel moves to the next epoch;
        after one grace period (about 8 ms, spent draining) the ended epoch's counters are final,
        and its books are: attempts = delivered + dropped + lost + in flight (records of the epoch
        still in a buffer, walked and counted), `residual` the difference, 0 unless a record was
        mangled or counted wrong. `settled` is False only if the grace period could not be waited
        for. Records still waiting count in the lag at their current age, so a consumer that
        stopped shows as lag, not as silence; records of an earlier epoch delivered now are
        `extra["late"]`.
        """
        self.flush_measure()  # the window's books see everything consumed so far
        end = time.time()
        ended = self._advance_epoch()
        settled = True
        try:
            if self.native:  # its wait ends when the grace thread writes this eventfd
                self._grace.wait_while(lambda step: self.poll(timeout=step), step=0.05, wake_fd=self._grace_fd)
            else:
                self._grace.wait_while(lambda step: self.poll(timeout=step))
        except Exception:  # noqa: BLE001 -- the window is still reported, marked unsettled
            settled = False
        final = self.source.counters(parity=ended & 1)
        self.drain()
        self.flush_measure()
        now_ns = time.monotonic_ns()
        run = prog_run_stats(self.source.prog_fds()) if stats_on(self._stats_fd) else None
        mode = self.source.mode
        out = []
        for ch in ("perf", "ring"):
            cons = self.ring if ch == "ring" else self.perf
            m, d = self.meters[ch], final[ch] - self._base[ended & 1][ch]
            loss = d.losses(ch)
            by_epoch = self._by_epoch[ch]
            delivered, current = int(by_epoch[ended]), int(by_epoch[self._epoch])
            late = int(by_epoch.sum()) - delivered - current
            by_epoch[:] = 0
            by_epoch[self._epoch] = current
            waiting, waiting_by_epoch = cons.waiting()
            in_flight = waiting_by_epoch[ended]
            parse = cons.parse_errors
            oldest = cons.oldest_ktime()
            backlog_ms = (now_ns - oldest) / 1e6 if oldest is not None else 0.0
            p50, p99, pmax = m.lag_summary(backlog_ms, waiting)
            # what is still waiting of this window and the earlier ones (not of the epoch just begun)
            pending = sum(waiting_by_epoch) - waiting_by_epoch[self._epoch]
            w = ChannelWindow(
                host=self.host, channel=ch, index=self.window_index if index is None else index, start=self._win_start,
                end=end, mode=mode, attempts=d.attempts, delivered=delivered,
                dropped_full=loss.dropped_full, dropped_other=loss.dropped_other, lost=loss.lost,
                parse_errors=parse - self._prev_parse[ch], in_flight=in_flight,
                lag_p50_ms=p50, lag_p99_ms=p99, lag_max_ms=pmax, inversions=m.inversions,
                consumer_cpu_s=m.cpu_s,
                bpf_run_ns=None if run is None else run[0] - self._prev_run[0],
                bpf_run_cnt=None if run is None else run[1] - self._prev_run[1],
                residual=d.attempts - delivered - loss.dropped - loss.lost - in_flight, settled=settled,
                producer_ns=None if d.producer_ns is None else round(d.producer_ns, 1),
                peak_bytes=max(cons.peak_bytes, cons.pending_bytes() if ch == "ring" else cons.max_pending_bytes()),
                extra={"seq_min": m.seq_min, "seq_max": m.seq_max, "backlog_age_ms": round(backlog_ms, 3),
                       "epoch": ended, "pending": pending, "cpus": len(self.perf.fds())},
            )
            if late:  # in a first window: records emitted before this pipeline started, in no window's books
                w.extra["late" if self.window_index else "before_start"] = late
            if run is None:
                w.extra["bpf_stats"] = "refused: run time unknown (sysctl kernel.bpf_stats_enabled=1 turns it on)"
            if ch == "perf":
                w.extra["lost_reported"] = self.perf.lost_reported - self._prev_lost_reported
                self._prev_lost_reported = self.perf.lost_reported
            out.append(w)
            cons.peak_bytes = 0
            self._prev_parse[ch] = parse
            m.reset()
        if run is not None:
            self._prev_run = run
        if self.router is not None:
            self.router.close_window(out)
        self._win_start = end
        self.window_index += 1
        return out

    def run(self, seconds: float, window: float, on_window=None, stop=None,
            before_last: Callable[[], None] | None = None) -> list[ChannelWindow]:
        """Consume for `seconds`, closing a window every `window` s; a final window closes at the end.

        before_last() runs at the deadline, just before the final close (stop the event source there,
        and the last window holds everything that was emitted, nothing after)."""
        windows: list[ChannelWindow] = []
        t_end = time.monotonic() + seconds
        next_close = time.monotonic() + window
        while True:
            now = time.monotonic()
            if now >= next_close or now >= t_end:
                if now >= t_end and before_last is not None:
                    before_last()
                with held():  # a Ctrl-C waits until the window is in `windows` (see Feed.close_window)
                    ws = self.close_window()
                    windows.extend(ws)
                    if on_window:
                        on_window(ws)
                next_close += window
                if now >= t_end or (stop is not None and stop()):
                    break
            self.poll(timeout=min(0.05, max(0.0, min(next_close, t_end) - time.monotonic())))
        return windows

    def close(self) -> None:
        """Release both consumers, the epolls and the stats fd (the source itself is the caller's)."""
        self._ep.close()
        self._wake_ep.close()
        self.perf.close()
        self.ring.close()
        close_stats(self._stats_fd)
        self._stats_fd = None
        self._grace.close()
        os.close(self._grace_fd)
