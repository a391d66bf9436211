"""Consumers side by side: bcc's callbacks against the library's callback and batch targets.

Two streams, each from a freshly loaded program per path:
  fixed  the synthetic demo probe: 72-byte records (32-byte header + 40-byte demo payload)
  mixed  bpf/mixed.bpf.c, an operator-style program: payloads of 24..4096 bytes from an event
         counter (mostly small, every 64th 4096 bytes), decoded with its own Registry

Paths (each with its own load generator of the same length and rate):
  bcc-perf  bcc's open_perf_buffer + perf_buffer_poll on `events__perf`, PERF mode
  bcc-ring  bcc's open_ring_buffer + ring_buffer_poll on `events__ring`, RING mode
  callback  the Feed in PERF mode, open_perf_buffer(callback): bcc's callback shape
  batch     the Feed in RING mode, on_batch(cb) with decoded arrays
  ring/perf the bare Pipeline consumers (fixed stream only), as before the Feed existed
  c         the libbpf reference consumer (tools/bench/c/refconsumer.c, its own process) on
            `events__ring`, RING mode: ring_buffer__consume every batch interval

Every ring path runs with the same producer flag (adaptive wakeup, bcc's default), so the ratios
compare consumers, not producers: ours wait on epoll only when a drain found nothing and on the
batch clock while records flow, so adaptive wakeups cost them one wake-up per quiet spell.

Every callback does the same per-record work, reading the payload's first 8 bytes; bcc's
callbacks also read seq and ktime from the header for the lag and order figures the library
computes itself. The batch callback checks decoded fields of every row (vectorised).

Every path is measured the same way: wall time from the generator's release to the last record
consumed, and consumer CPU as `time.thread_time()` around every poll call (the callbacks, the
decode, the epoll wait and the library's bookkeeping all run on this one thread; nothing else
runs in-process meanwhile). Books are exact per path: attempts == delivered + dropped + lost,
with `delivered` the records the operator's callback saw.
"""
from __future__ import annotations

import ctypes as ct
import os
import time
from array import array
from dataclasses import dataclass
from typing import Callable

import numpy as np

from migrator.agent.feed import Feed
from migrator.dataplane import rewrite
from migrator.dataplane.channel import Channel, load
from migrator.dataplane.kstats import close_stats, enable_stats, prog_run_stats
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline
from migrator.dataplane.schema import Registry, demo_registry
from migrator.errors import OptionError
from migrator.shared.resources import bpf_dir
from migrator.tools.bench.bcc_ref import BccPerfRef, BccRingRef
from migrator.tools.bench.overhead import ConsumerChild, ref_binary

STREAMS = ("fixed", "mixed")
STREAM_PATHS = {
    "fixed": ("bcc-ring", "bcc-perf", "ring", "perf", "callback", "batch", "c"),
    "mixed": ("bcc-ring", "bcc-perf", "callback", "batch", "c"),
}
KEYS = ("attempts", "delivered", "dropped", "lost", "wall_s", "consumer_cpu_s", "events_per_cpu_s",
        "process_cpu_s", "events_per_process_cpu_s", "lag_p99_ms")
# The library's targets: events per consumer CPU-second of `batch`, and callback against bcc-perf.
BATCH_MIN_EPS = {"fixed": 10e6, "mixed": 3e6}
CALLBACK_MIN_RATIO = 1.0
# ratio name -> (ours, bcc's)
RATIOS = {
    "fixed": {"batch/bcc-ring": ("batch", "bcc-ring"), "callback/bcc-perf": ("callback", "bcc-perf"),
              "ring/bcc-ring": ("ring", "bcc-ring"), "perf/bcc-perf": ("perf", "bcc-perf"), "batch/c": ("batch", "c")},
    "mixed": {"batch/bcc-ring": ("batch", "bcc-ring"), "callback/bcc-perf": ("callback", "bcc-perf"),
              "batch/c": ("batch", "c")},
}
# ours against libbpf in C on the same stream: events per consumer CPU-second, at least this fraction.
C_MIN_RATIO = 0.3

# bpf/mixed.bpf.c: struct mixed_event's fields (the filler after them is not decoded).
MIXED_FILE = "mixed.bpf.c"
MIXED_DTYPE = np.dtype([("id", "<u8"), ("size", "<u4"), ("pid", "<u4"), ("check", "<u8")])
MIXED_CHECK = 0x9E3779B97F4A7C15
KIND_SYNTH = 1


def mixed_registry() -> Registry:
    """The mixed program's payload type: MIGRATOR_OUTPUT without a type is (type 0, version 0)."""
    reg = Registry()
    reg.register(0, 0, MIXED_DTYPE, name="mixed")
    return reg


def registry_for(stream: str) -> Registry:
    """The registry an operator would hand the Feed for this stream."""
    return demo_registry() if stream == "fixed" else mixed_registry()


def first_word_errors(stream: str, first: np.ndarray, attempts: int) -> int:
    """Per-record callbacks read the payload's first 8 bytes: how many hold what they must not.

    fixed: the demo payload starts with kind (u32) = synthetic; mixed: the event id, below the
    number of events the program emitted.
    """
    if stream == "fixed":
        return int(((first & 0xFFFFFFFF) != KIND_SYNTH).sum())
    return int((first >= attempts).sum())


def rows_errors(stream: str, rows: np.ndarray) -> int:
    """Decoded rows whose fields disagree with what the program wrote (vectorised)."""
    if stream == "fixed":
        return int((rows["kind"] != KIND_SYNTH).sum())
    return int(((rows["check"] != (rows["id"] ^ np.uint64(MIXED_CHECK))) | (rows["size"] != rows["len"])).sum())


@dataclass(frozen=True)
class PathSpec:
    """One benchmarked path: which channel the probe writes, whose consumer reads it, which wakeup."""

    mode: str  # mode map value: which channel the probe writes
    consumer: str  # "bcc", "pipeline" or "feed"
    wakeup: str  # ring producer flag (rewrite.cflags ring_wakeup=); perf ignores it
    flags: str  # printed so a reader sees what each path was given


def _specs(perf_pages: int, batch_interval: float) -> dict[str, PathSpec]:
    ms = f"{batch_interval * 1e3:g} ms"
    return {
        # bcc users get adaptive wakeups (the default) and one callback per record.
        "bcc-ring": PathSpec("RING", "bcc", "adaptive", "producer adaptive wakeup; open_ring_buffer + ring_buffer_poll"),
        "bcc-perf": PathSpec("PERF", "bcc", "adaptive",
                             f"{perf_pages} pages/CPU, wakeup_events=1 (bcc); open_perf_buffer + perf_buffer_poll"),
        # A batched consumer polls on its own clock, so the producer need not wake it at all.
        "ring": PathSpec("RING", "pipeline", "adaptive", f"producer adaptive wakeup; RingConsumer via Pipeline, {ms} batches"),
        "perf": PathSpec("PERF", "pipeline", "adaptive",
                         f"{perf_pages} pages/CPU, watermark 1/4 buffer; PerfConsumer via Pipeline, {ms} batches"),
        "callback": PathSpec("PERF", "feed", "adaptive",
                             f"{perf_pages} pages/CPU, watermark 1/4 buffer; Feed PERF, open_perf_buffer(callback)"),
        "batch": PathSpec("RING", "feed", "adaptive",
                          f"producer adaptive wakeup; Feed RING, on_batch(decoded arrays), {ms} batches"),
        "c": PathSpec("RING", "c", "adaptive",
                      f"producer adaptive wakeup; libbpf ring_buffer__consume every {ms} (C, own process)"),
    }


class _Source:
    """One freshly loaded program of a stream: `.bpf`, `.channel`, its target map, unload."""

    def __init__(self, stream: str, ring_bytes: int, wakeup: str) -> None:
        self._probe = None
        if stream == "fixed":
            self._probe = Probe("synthetic", ring_bytes=ring_bytes, wakeup=wakeup)
            self.bpf, self.channel = self._probe.bpf, self._probe.channel
        else:
            rewrite.check_ring_bytes(ring_bytes)
            self.bpf = load(src_file=str(bpf_dir() / MIXED_FILE),
                            cflags=[*rewrite.cflags(ring_wakeup=wakeup), f"-DRING_BYTES={ring_bytes}"])
            self.channel = Channel(self.bpf, "events")

    def set_target(self, tgid: int) -> None:
        """Both programs watch the getppid() calls of the tgid in their `target_tgid` map."""
        self.bpf["target_tgid"][ct.c_int(0)] = ct.c_uint32(tgid)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        elif self.bpf is not None:
            self.bpf.cleanup()
        self.bpf = None


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


class _FeedPath:
    """The library as an operator uses it: a Feed with their callback or their batch handler."""

    def __init__(self, stream: str, src: _Source, spec: PathSpec, perf_pages: int, batch_interval: float) -> None:
        self.stream = stream
        self.feed = Feed(src.bpf, "events", channel=src.channel, registry=registry_for(stream), mode=spec.mode,
                         perf_pages=perf_pages, batch_interval=batch_interval)
        self.timeout_ms = batch_interval * 1e3
        self.first = array("Q")
        self.rows = 0
        self.bad_rows = 0
        if spec.mode == "PERF":
            at, append = (ct.c_uint64 * 1).from_address, self.first.append

            def callback(_cpu, data, _size):  # bcc's shape; data is the payload's address
                append(at(data)[0])

            self.feed.open_perf_buffer(callback)
        else:
            def on_batch(rows: np.ndarray) -> None:
                self.rows += len(rows)
                self.bad_rows += rows_errors(stream, rows)

            self.feed.on_batch(on_batch)

    @property
    def delivered(self) -> int:
        return len(self.first) + self.rows

    def step(self) -> int:
        before = self.delivered
        self.feed.poll(self.timeout_ms)
        return self.delivered - before

    def finish(self, ch: str, attempts: int) -> tuple[float | None, dict]:
        """Close the last window; (lag p99 in ms, notes) from every window the feed closed."""
        self.feed.close_window()
        ws = [w for w in self.feed.windows if w.channel == ch]
        p99 = [w.lag_p99_ms for w in ws if w.lag_p99_ms is not None]
        errors = (first_word_errors(self.stream, np.frombuffer(self.first, dtype=np.uint64), attempts)
                  if len(self.first) else 0) + self.bad_rows
        return (max(p99) if p99 else None), {
            "inversions": sum(w.inversions for w in ws), "residual": ws[-1].residual if ws else None,
            "parse_errors": sum(w.parse_errors for w in ws), "windows": len(ws),
            "acted": self.feed.acted[ch], "payload_errors": errors,
            "lag_note": "worst p99 of the feed's windows (1 s each)",
        }

    def close(self) -> None:
        self.feed.close()


class _CRef:
    """The libbpf reference consumer of the channel's ring, in its own process (tools/bench/overhead.py's
    protocol): its count is known when it stops; its CPU is its own, between a mark and its report."""

    def __init__(self, src: _Source, batch_interval: float) -> None:
        fd = src.channel.ring_map_fd
        self.child = ConsumerChild([str(ref_binary()), "--ring-fd", str(fd), "--interval-ms",
                             str(max(1, round(batch_interval * 1e3)))], pass_fds=(fd,))
        self.got = 0
        self.report: dict = {}
        self._mark: dict = {}

    def start(self) -> None:
        self._mark = self.child.mark()

    def step(self) -> int:
        time.sleep(0.05)  # this process only waits: the count comes at the end
        return 0

    def delivered(self) -> int:
        return self.got

    def finish(self) -> tuple[float, float]:
        """Stop it (it drains first); (consumer CPU s, whole-process CPU s) since start()."""
        self.report = self.child.finish()
        self.got = self.report["ring_records"]
        cpu = self.report["user_s"] + self.report["sys_s"] - self._mark["cpu_s"]
        return cpu, cpu

    def close(self) -> None:
        self.child.kill()


def _run_path(stream: str, name: str, spec: PathSpec, events: int, rate: float, ring_bytes: int, perf_pages: int,
              batch_interval: float, timeout_s: float, progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Measure one path of one stream on a freshly loaded program; returns (the KEYS dict, notes)."""
    ch = "ring" if spec.mode == "RING" else "perf"
    tag = f"[{stream}/{name}]"
    notes: dict = {"flags": spec.flags, "mode": spec.mode, "wakeup": spec.wakeup if ch == "ring" else None}
    progress(f"{tag} loading: mode {spec.mode}, {spec.flags}")
    src = _Source(stream, ring_bytes, spec.wakeup)
    try:
        src.channel.set_mode(spec.mode)
        pipe = ref = fp = cref = None
        if spec.consumer == "c":
            cref = _CRef(src, batch_interval)
            step, delivered = cref.step, cref.delivered
        elif spec.consumer == "bcc":
            ref = BccRingRef(src) if ch == "ring" else BccPerfRef(src, page_cnt=perf_pages)

            def step() -> int:
                before = ref.tally.delivered
                ref.poll(100)
                return ref.tally.delivered - before

            def delivered() -> int:
                return ref.tally.delivered
        elif spec.consumer == "pipeline":
            pipe = Pipeline(src.channel, perf_pages=perf_pages, batch_interval=batch_interval)

            def step() -> int:
                return pipe.poll(timeout=batch_interval)

            def delivered() -> int:
                return pipe.delivered_total[ch]
        else:
            fp = _FeedPath(stream, src, spec, perf_pages, batch_interval)
            step = fp.step

            def delivered() -> int:
                return fp.delivered

        gen = LoadGen(events, rate)
        timed_out = False
        try:
            src.set_target(gen.pid)
            _wait_ready(gen)
            run0 = prog_run_stats(src.channel.prog_fds())
            cpu = 0.0
            t0 = last = time.monotonic()
            next_report = t0 + 1.0
            proc0 = _process_cpu()
            if cref is not None:
                cref.start()
            gen.start()
            while True:
                c0 = time.thread_time()
                n = step()
                cpu += time.thread_time() - c0
                now = time.monotonic()
                if n:
                    last = now
                if now >= next_report:
                    progress(f"{tag} {delivered():,}/{events:,} delivered, {now - t0:.1f} s")
                    next_report = now + 1.0
                if not gen.running():
                    c = src.channel.counters()[ch]
                    if cref is not None or delivered() + c.full + c.other >= c.attempts:
                        break
                if now - t0 > timeout_s:
                    timed_out = True
                    progress(f"{tag} gave up after {timeout_s:.0f} s")
                    break
            proc_cpu = _process_cpu() - proc0
            gen.wait(timeout=10)
            if cref is not None:
                # The C consumer's own process: it drains what is left, then reports.
                cpu, proc_cpu = cref.finish()
                last = time.monotonic()
            run1 = prog_run_stats(src.channel.prog_fds())
            c = src.channel.counters()[ch]
            if pipe is not None:
                # The pipeline's own window: the same accounting `migrator shadow` prints.
                w = next(w for w in pipe.close_window() if w.channel == ch)
                got, lag_p99 = pipe.delivered_total[ch], w.lag_p99_ms
                notes.update(inversions=w.inversions, residual=w.residual, parse_errors=w.parse_errors)
            elif cref is not None:
                got, lag_p99 = cref.got, None
                notes.update(c_report=cref.report, lag_note="not measured by the C consumer")
            elif fp is not None:
                lag_p99, more = fp.finish(ch, c.attempts)
                got = fp.delivered
                notes.update(more)
            else:
                m = ref.tally.meter()
                got, lag_p99 = ref.tally.delivered, m.lag_summary()[1]
                notes.update(inversions=m.inversions, lost_reported=ref.tally.lost_reported,
                             payload_errors=first_word_errors(stream, np.frombuffer(ref.tally.first, dtype=np.uint64),
                                                              c.attempts))
        finally:
            gen.kill()
            for r in (pipe, ref, fp, cref):
                if r is not None:
                    r.close()
    finally:
        src.close()
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
        # What an operator pays: every thread of this process (bcc's and ours), user + system.
        "process_cpu_s": round(proc_cpu, 6),
        "events_per_process_cpu_s": round(got / proc_cpu, 1) if proc_cpu > 0 else None,
        "lag_p99_ms": round(lag_p99, 3) if lag_p99 is not None else None,
    }
    progress(f"{tag} done: {got:,} delivered, {dropped} dropped, {lost} lost, wall {wall:.2f} s, "
             f"consumer CPU {cpu:.3f} s, {(got / cpu if cpu else 0) / 1e6:.2f} M events/CPU-s")
    return res, notes


def _process_cpu() -> float:
    """CPU seconds (user + system) of this whole process so far, as /proc/self/stat counts them."""
    t = os.times()
    return t.user + t.system


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours and theirs else None


def stream_targets(stream: str, paths: dict, ratios: dict) -> dict[str, bool]:
    """The library's targets for one stream, met or not."""
    batch = paths["batch"]["events_per_cpu_s"] or 0.0
    return {
        f"batch >= {BATCH_MIN_EPS[stream] / 1e6:g} M events/CPU-s": batch >= BATCH_MIN_EPS[stream],
        f"callback/bcc-perf >= {CALLBACK_MIN_RATIO:g}": (ratios["callback/bcc-perf"] or 0.0) >= CALLBACK_MIN_RATIO,
        f"batch/c >= {C_MIN_RATIO:g}": (ratios["batch/c"] or 0.0) >= C_MIN_RATIO,
    }


def bench_consumers(events: int, rate: float = 0, *, streams: tuple[str, ...] = STREAMS, ring_bytes: int = 16 << 20,
                    perf_pages: int = 64, batch_interval: float = 0.005, timeout_s: float | None = None,
                    progress: Callable[[str], None] = lambda _msg: None) -> dict:
    """Run every path of every stream in turn; per stream the paths' figures, ratios and targets.

    Returns {"streams": {stream: {"paths", "ratios", "targets", "notes"}}, "targets": {"<stream>:
    <target>": bool}, "notes": {...}}.
    """
    if events <= 0:
        raise OptionError("--events", events, "is not a positive number of events", "use --events 1 or more")
    if rate < 0:
        raise OptionError("--rate", rate, "is negative", "use --rate 0 (as fast as the generator goes) or more")
    bad = [s for s in streams if s not in STREAMS]
    if bad or not streams:
        raise OptionError("--stream", ",".join(bad) or "(none)", "is not a stream",
                          f"use one of {', '.join(STREAMS)} or both")
    if timeout_s is None:
        # bcc's perf callback path runs ~0.15 M events/s here; leave it room.
        floor = events / rate if rate > 0 else 0.0
        timeout_s = 30.0 + max(floor * 2, events / 50_000)
    specs = _specs(perf_pages, batch_interval)
    # Hold BPF run-time accounting on for every path (the Pipeline turns it on for ours), so
    # each producer pays the same per-event cost.
    if any("c" in STREAM_PATHS[s] for s in streams):
        ref_binary()  # refuse before loading anything: the C path needs its build
    stats_fd = enable_stats()
    out: dict = {}
    try:
        for stream in streams:
            paths, notes = {}, {}
            for name in STREAM_PATHS[stream]:
                paths[name], notes[name] = _run_path(stream, name, specs[name], events, rate, ring_bytes, perf_pages,
                                                     batch_interval, timeout_s, progress)
            ratios = {k: _ratio(paths[a]["events_per_cpu_s"], paths[b]["events_per_cpu_s"])
                      for k, (a, b) in RATIOS[stream].items()}
            # The same ratios on whole-process CPU: what an operator pays, not only the inner loop.
            process_ratios = {k: _ratio(paths[a]["events_per_process_cpu_s"], paths[b]["events_per_process_cpu_s"])
                              for k, (a, b) in RATIOS[stream].items()}
            out[stream] = {"paths": paths, "ratios": ratios, "process_ratios": process_ratios,
                           "targets": stream_targets(stream, paths, ratios), "notes": notes}
    finally:
        close_stats(stats_fd)
    return {"streams": out,
            "targets": {f"{s}: {k}": ok for s, r in out.items() for k, ok in r["targets"].items()},
            "notes": {"events": events, "rate": rate, "ring_bytes": ring_bytes, "perf_pages": perf_pages,
                      "batch_interval_s": batch_interval, "streams": list(streams),
                      "payload": {"fixed": "72-byte records: 32-byte header + 40-byte demo payload (type 1 v2)",
                                  "mixed": f"bpf/{MIXED_FILE}: payloads 24..520 bytes, every 64th 4096 bytes"}}}


__all__ = ["bench_consumers", "STREAMS", "STREAM_PATHS", "KEYS", "RATIOS", "BATCH_MIN_EPS", "CALLBACK_MIN_RATIO", "C_MIN_RATIO",
           "mixed_registry"]
