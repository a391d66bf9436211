"""One channel's data plane in one process: both consumers, and window accounting."""
from __future__ import annotations

import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


from migrator.dataplane.counters import Counters
from migrator.dataplane.kstats import close_stats, enable_stats, prog_run_stats
from migrator.dataplane.channels import PerfConsumer, RingConsumer
from migrator.dataplane.frames import Frames
from migrator.dataplane.windows import ChannelMeter
from migrator.shared.records import ChannelWindow


# snapshot(): a stream this busy in this many brackets in a row is not waited for any longer.
BUSY_BRACKET = 100
BUSY_TRIES = 3


class ChannelSource(Protocol):
    """What a pipeline reads: one migrator channel's maps and counters, and the programs behind it
    (a demo Probe, or a Channel of the operator's program)."""

    ring_map_fd: int
    ring_bytes: int
    perf_map: object
    mode: str

    def counters(self) -> dict[str, Counters]:
        """{"perf": Counters, "ring": Counters}: the channel's emit counters, summed over CPUs."""
        ...

    def prog_fds(self) -> list[int]:
        """The fds of the BPF programs that write the channel, for their run-time statistics."""
        ...


@dataclass
class ChannelTotals:
    """Cumulative balance of one channel since the pipeline started."""

    attempts: int
    delivered: int
    dropped_full: int
    dropped_other: int
    lost: int
    in_flight: int

    @property
    def residual(self) -> int:
        """Records the books cannot account for: 0 when the channel balances exactly."""
        return self.attempts - self.delivered - self.dropped_full - self.dropped_other - self.lost - self.in_flight


class Pipeline:
    """Drains both channels of one probe and closes per-channel windows that balance exactly.

    Waiting is epoll on the ring map fd and the perf fds with a bounded timeout; after a wake-up
    the loop waits out `batch_interval` since the previous drain, so records arrive in batches
    instead of one wake-up each.
    """

    def __init__(self, probe: "ChannelSource", host: str = "local", perf_pages: int = 64, perf_wakeup_events: int = 0,
                 batch_interval: float = 0.005, keep_records: bool = False) -> None:
        self.probe = probe
        self.host = host
        self.batch_interval = batch_interval
        self.ring = RingConsumer(probe.ring_map_fd, probe.ring_bytes)
        try:
            self.perf = PerfConsumer(probe.perf_map, pages=perf_pages, wakeup_events=perf_wakeup_events)
        except Exception:
            self.ring.close()
            raise
        self._ep = select.epoll()
        self._ep.register(self.ring.fileno(), select.EPOLLIN)
        for fd in self.perf.fds():
            self._ep.register(fd, select.EPOLLIN)
        self._stats_fd = enable_stats()
        self.meters = {"perf": ChannelMeter("perf"), "ring": ChannelMeter("ring")}
        self.keep_records = keep_records
        # Called with (channel, Frames) for every drained batch: the library routes events here.
        self.on_batch: Callable[[str, Frames], None] | None = None
        self.records: dict[str, list[Frames]] = {"perf": [], "ring": []}
        self.window_index = 0
        self._win_start = time.time()
        self._last_drain = time.monotonic()
        # Assume the producer ceiling (~2.2 M records/s of ~100 bytes here) until drains have
        # measured the real rate, in bytes per second.
        self._rate = {"perf": 2.5e8, "ring": 2.5e8}
        zero = Counters()
        self._prev = {"perf": zero, "ring": zero}
        self._prev_parse = {"perf": 0, "ring": 0}
        self._prev_run = prog_run_stats(probe.prog_fds())
        self.delivered_total = {"perf": 0, "ring": 0}
        self.stall_ring_until = 0.0
        # Rollback timing: after watch(channel), the wall time of the first record delivered on it.
        self.watch_first: dict[str, float | None] = {}
        self.first_after: dict[str, float | None] = {}

    # -- consuming ----------------------------------------------------------------------------
    def watch(self, channel: str) -> None:
        """Note when the next record arrives on `channel` (first delivery after a mode switch)."""
        self.drain()  # what is already buffered predates the switch
        self.watch_first[channel] = time.time()
        self.first_after[channel] = None

    @property
    def ring_stalled(self) -> bool:
        """Fault injection: while True the ring is not consumed (it fills and ages)."""
        return time.monotonic() < self.stall_ring_until

    def _take(self, channel: str) -> int:
        if channel == "ring" and self.ring_stalled:
            return 0
        t0 = time.thread_time()
        batch = (self.ring if channel == "ring" else self.perf).consume()
        n = len(batch)
        if n:
            if self.watch_first.get(channel) is not None and self.first_after.get(channel) is None:
                self.first_after[channel] = time.time()
            self.meters[channel].add(batch.hdr, time.monotonic_ns())
            if self.on_batch is not None:
                self.on_batch(channel, batch)
            self.delivered_total[channel] += n
            if self.keep_records:
                self.records[channel].append(batch)
        self.meters[channel].cpu_s += time.thread_time() - t0
        return n

    def drain(self) -> int:
        """Consume everything both channels hold right now."""
        now = time.monotonic()
        dt = max(now - self._last_drain, 1e-4)
        self._last_drain = now
        b_perf, b_ring = self.perf.consumed_bytes, self.ring.consumed_bytes
        n_perf, n_ring = self._take("perf"), self._take("ring")
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

    def poll(self, timeout: float = 0.1) -> int:
        """Wait up to `timeout` s for data (epoll), let the batch grow, drain both channels.

        The batch grows for up to `batch_interval` since the last drain, but never past the point
        where a buffer would be half full at the rate just seen: batching must not cause drops.
        """
        ring_waiting = self.ring.pending_bytes() and not self.ring_stalled
        if not (ring_waiting or self.perf.pending_bytes()):
            self._ep.poll(timeout)
            if self.ring_stalled:
                time.sleep(min(timeout, 0.01))  # the ring's fd stays readable while stalled
        wait = min(self._last_drain + self.batch_interval - time.monotonic(), self._headroom())
        if wait > 0:
            time.sleep(wait)
        return self.drain()

    # -- accounting ---------------------------------------------------------------------------
    def snapshot(self, tries: int = 20) -> tuple[dict[str, Counters], dict[str, int], bool]:
        """Counters and buffer occupancy read between two identical counter reads.

        Two equal reads mean no program counted anything in between, so the drain and the
        occupancy inside the bracket balance the counters exactly. `settled` is False when events
        kept arriving on every try; the close is then best effort and says so. A stream that
        brought BUSY_BRACKET records or more into each of BUSY_TRIES brackets in a row will not
        pause for the next one: trying on only costs a drain and two counter reads per try.
        """
        self.drain()
        busy = 0
        for _ in range(tries):
            before = self.probe.counters()
            self.drain()
            in_flight = {"perf": self.perf.in_flight(), "ring": self.ring.in_flight()}
            after = self.probe.counters()
            if before == after:
                return after, in_flight, True
            moved = sum(after[ch].attempts - before[ch].attempts for ch in after)
            busy = busy + 1 if moved >= BUSY_BRACKET else 0
            if busy >= BUSY_TRIES:
                break
        return after, in_flight, False

    def totals(self, counters: dict[str, Counters], in_flight: dict[str, int]) -> dict[str, ChannelTotals]:
        """Each channel's cumulative books (attempts vs delivered, dropped, lost, in flight) from one snapshot."""
        out = {}
        for ch, c in counters.items():
            loss = c.losses(ch)
            out[ch] = ChannelTotals(c.attempts, self.delivered_total[ch], loss.dropped_full, loss.dropped_other,
                                    loss.lost, in_flight[ch])
        return out

    def close_window(self, index: int | None = None) -> list[ChannelWindow]:
        """Close the current window: one ChannelWindow per channel, then start the next.

        `index` names the window (agents use the shared clock so all hosts agree); by default
        windows are numbered from 0. Records still waiting in a buffer count in the lag at their
        current age, so a consumer that stopped shows as lag, not as silence.
        """
        counters, in_flight, settled = self.snapshot()
        end = time.time()
        now_ns = time.monotonic_ns()
        totals = self.totals(counters, in_flight)
        run_ns, run_cnt = prog_run_stats(self.probe.prog_fds())
        mode = self.probe.mode
        out = []
        for ch in ("perf", "ring"):
            m, d, t = self.meters[ch], counters[ch] - self._prev[ch], totals[ch]
            loss = d.losses(ch)
            parse = (self.ring if ch == "ring" else self.perf).parse_errors
            oldest = (self.ring if ch == "ring" else self.perf).oldest_ktime()
            backlog_ms = (now_ns - oldest) / 1e6 if oldest is not None else 0.0
            p50, p99, pmax = m.lag_summary(backlog_ms, t.in_flight)
            w = ChannelWindow(
                host=self.host, channel=ch, index=self.window_index if index is None else index, start=self._win_start, end=end, mode=mode,
                attempts=d.attempts, delivered=m.delivered,
                dropped_full=loss.dropped_full, dropped_other=loss.dropped_other, lost=loss.lost,
                parse_errors=parse - self._prev_parse[ch], in_flight=t.in_flight,
                lag_p50_ms=p50, lag_p99_ms=p99, lag_max_ms=pmax, inversions=m.inversions,
                consumer_cpu_s=m.cpu_s, bpf_run_ns=run_ns - self._prev_run[0], bpf_run_cnt=run_cnt - self._prev_run[1],
                residual=t.residual, settled=settled,
                extra={"seq_min": m.seq_min, "seq_max": m.seq_max, "backlog_age_ms": round(backlog_ms, 3)},
            )
            if ch == "perf":
                w.extra["lost_reported"] = self.perf.lost_reported
            out.append(w)
            self._prev[ch] = counters[ch]
            self._prev_parse[ch] = parse
            m.reset()
        self._prev_run = (run_ns, run_cnt)
        self._win_start = end
        self.window_index += 1
        return out

    def run(self, seconds: float, window: float, on_window=None, stop=None) -> list[ChannelWindow]:
        """Consume for `seconds`, closing a window every `window` s; a final window closes at the end."""
        windows: list[ChannelWindow] = []
        t_end = time.monotonic() + seconds
        next_close = time.monotonic() + window
        while True:
            now = time.monotonic()
            if now >= next_close or now >= t_end:
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
        """Release both consumers, the epoll and the stats fd (the probe itself is the caller's)."""
        self._ep.close()
        self.perf.close()
        self.ring.close()
        close_stats(self._stats_fd)
        self._stats_fd = None
