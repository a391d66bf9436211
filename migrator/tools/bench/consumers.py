"""Consumers side by side: bcc's callbacks against our batched ring and perf consumers.

Each path gets a freshly loaded synthetic probe and its own generator of the same length and
rate, and is measured the same way: wall time from the generator's release to the last record
consumed, and consumer CPU as `time.thread_time()` around every poll call (the callbacks, the
decode, the epoll wait and the bookkeeping all run on this one thread; nothing else runs
in-process meanwhile).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from migrator.dataplane.loader import Probe
from migrator.dataplane.kstats import close_stats, enable_stats, prog_run_stats
from migrator.tools.bench.bcc_ref import BccPerfRef, BccRingRef
from migrator.errors import OptionError
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline

PATHS = ("bcc-ring", "bcc-perf", "ring", "perf")
KEYS = ("attempts", "delivered", "dropped", "lost", "wall_s", "consumer_cpu_s", "events_per_cpu_s", "lag_p99_ms")


@dataclass(frozen=True)
class PathSpec:
    """One benchmarked path: which channel the probe writes, whose consumer reads it, which wakeup."""

    mode: str  # mode map value: which channel the probe writes
    consumer: str  # "bcc" or "ours"
    wakeup: str  # ring producer flag (Probe wakeup=); perf ignores it
    flags: str  # printed so a reader sees what each path was given


def _specs(perf_pages: int, batch_interval: float) -> dict[str, PathSpec]:
    ms = f"{batch_interval * 1e3:g} ms"
    return {
        # bcc users get adaptive wakeups (the default) and one callback per record.
        "bcc-ring": PathSpec("RING", "bcc", "adaptive", "producer adaptive wakeup; open_ring_buffer + ring_buffer_poll"),
        "bcc-perf": PathSpec("PERF", "bcc", "adaptive",
                             f"{perf_pages} pages/CPU, wakeup_events=1 (bcc); open_perf_buffer + perf_buffer_poll"),
        # A batched consumer polls on its own clock, so the producer need not wake it at all.
        "ring": PathSpec("RING", "ours", "no_wakeup", f"producer BPF_RB_NO_WAKEUP; RingConsumer via Pipeline, {ms} batches"),
        "perf": PathSpec("PERF", "ours", "adaptive",
                         f"{perf_pages} pages/CPU, watermark 1/4 buffer; PerfConsumer via Pipeline, {ms} batches"),
    }


def _wait_ready(gen: LoadGen, limit: float = 5.0) -> None:
    """Wait until the generator child blocks reading stdin, so its interpreter start-up is not
    counted in wall_s (x86_64 /proc/PID/syscall: read is 0, fd 0)."""
    deadline = time.monotonic() + limit
    path = f"/proc/{gen.pid}/syscall"
    while time.monotonic() < deadline and gen.running():
        try:
            with open(path) as f:
                if f.read().startswith("0 0x0 "):
                    return
        except OSError:
            break
        time.sleep(0.005)
    time.sleep(0.2)  # no /proc/PID/syscall: a fixed margin instead


def _run_path(name: str, spec: PathSpec, events: int, rate: float, ring_bytes: int, perf_pages: int,
              batch_interval: float, timeout_s: float, progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Measure one path on a fresh probe; returns (the KEYS dict, notes)."""
    ch = "ring" if spec.mode == "RING" else "perf"
    notes: dict = {"flags": spec.flags, "mode": spec.mode, "wakeup": spec.wakeup if ch == "ring" else None}
    progress(f"[{name}] loading probe: mode {spec.mode}, {spec.flags}")
    with Probe("synthetic", ring_bytes=ring_bytes, wakeup=spec.wakeup) as probe:
        probe.set_mode(spec.mode)
        pipe = ref = None
        if spec.consumer == "bcc":
            ref = BccRingRef(probe) if ch == "ring" else BccPerfRef(probe, page_cnt=perf_pages)

            def step() -> int:
                before = ref.tally.delivered
                ref.poll(100)
                return ref.tally.delivered - before

            def delivered() -> int:
                return ref.tally.delivered
        else:
            pipe = Pipeline(probe, perf_pages=perf_pages, batch_interval=batch_interval)

            def step() -> int:
                # With NO_WAKEUP nothing wakes epoll: its timeout is the batch clock.
                return pipe.poll(timeout=batch_interval)

            def delivered() -> int:
                return pipe.delivered_total[ch]

        gen = LoadGen(events, rate)
        timed_out = False
        try:
            probe.set_target(gen.pid)
            _wait_ready(gen)
            run0 = prog_run_stats(probe.prog_fds())
            cpu = 0.0
            t0 = last = time.monotonic()
            next_report = t0 + 1.0
            gen.start()
            while True:
                c0 = time.thread_time()
                n = step()
                cpu += time.thread_time() - c0
                now = time.monotonic()
                if n:
                    last = now
                if now >= next_report:
                    progress(f"[{name}] {delivered():,}/{events:,} delivered, {now - t0:.1f} s")
                    next_report = now + 1.0
                if not gen.running():
                    c = probe.counters()[ch]
                    if delivered() + c.full + c.other >= c.attempts:
                        break
                if now - t0 > timeout_s:
                    timed_out = True
                    progress(f"[{name}] gave up after {timeout_s:.0f} s")
                    break
            gen.wait(timeout=10)
            run1 = prog_run_stats(probe.prog_fds())
            c = probe.counters()[ch]
            if pipe is not None:
                # The pipeline's own window: the same accounting `migrator shadow` prints.
                w = next(w for w in pipe.close_window() if w.channel == ch)
                got, lag_p99 = pipe.delivered_total[ch], w.lag_p99_ms
                notes.update(inversions=w.inversions, residual=w.residual, parse_errors=w.parse_errors)
            else:
                m = ref.tally.meter()
                got, lag_p99 = ref.tally.delivered, m.lag_summary()[1]
                notes.update(inversions=m.inversions, lost_reported=ref.tally.lost_reported)
        finally:
            gen.kill()
            if pipe is not None:
                pipe.close()
    loss = c.losses(ch)
    dropped, lost = loss.dropped, loss.lost
    wall = last - t0
    runs = run1[1] - run0[1]
    notes.update(timed_out=timed_out,
                 bpf_ns_per_event=round((run1[0] - run0[0]) / runs, 1) if runs else None,
                 producer_events_per_s=round(c.attempts / wall) if wall > 0 else None)
    res = {
        "attempts": c.attempts, "delivered": got, "dropped": dropped, "lost": lost,
        "wall_s": round(wall, 4), "consumer_cpu_s": round(cpu, 6),
        "events_per_cpu_s": round(got / cpu, 1) if cpu > 0 else None,
        "lag_p99_ms": round(lag_p99, 3) if lag_p99 is not None else None,
    }
    progress(f"[{name}] done: {got:,} delivered, {dropped} dropped, {lost} lost, wall {wall:.2f} s, "
             f"consumer CPU {cpu:.3f} s, {(got / cpu if cpu else 0) / 1e6:.2f} M events/CPU-s")
    return res, notes


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours and theirs else None


def bench_consumers(events: int, rate: float = 0, *, ring_bytes: int = 16 << 20, perf_pages: int = 64,
                    batch_interval: float = 0.005, timeout_s: float | None = None,
                    progress: Callable[[str], None] = lambda _msg: None) -> dict:
    """Run bcc-ring, bcc-perf, ring and perf in turn on the same synthetic stream; per-path figures and ratios."""
    if events <= 0:
        raise OptionError("--events", events, "is not a positive number of events", "use --events 1 or more")
    if rate < 0:
        raise OptionError("--rate", rate, "is negative", "use --rate 0 (as fast as the generator goes) or more")
    if timeout_s is None:
        # bcc's perf callback path runs ~0.15 M events/s here; leave it room.
        floor = events / rate if rate > 0 else 0.0
        timeout_s = 30.0 + max(floor * 2, events / 50_000)
    specs = _specs(perf_pages, batch_interval)
    # Hold BPF run-time accounting on for every path (the Pipeline turns it on for ours), so
    # each producer pays the same per-event cost.
    stats_fd = enable_stats()
    paths, notes = {}, {}
    try:
        for name in PATHS:
            paths[name], notes[name] = _run_path(name, specs[name], events, rate, ring_bytes, perf_pages,
                                                 batch_interval, timeout_s, progress)
    finally:
        close_stats(stats_fd)
    ratios = {
        "ring": _ratio(paths["ring"]["events_per_cpu_s"], paths["bcc-ring"]["events_per_cpu_s"]),
        "perf": _ratio(paths["perf"]["events_per_cpu_s"], paths["bcc-perf"]["events_per_cpu_s"]),
    }
    return {"paths": paths, "ratios": ratios,
            "notes": {"events": events, "rate": rate, "ring_bytes": ring_bytes, "perf_pages": perf_pages,
                      "batch_interval_s": batch_interval, "paths": notes}}
