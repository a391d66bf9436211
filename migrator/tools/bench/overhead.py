"""What the agent costs, whole process, against a libbpf C consumer of the same maps.

Per rate, two runs of the synthetic probe in DUAL (both channels written) on the same
rate-limited generator, each consumer in its own child process so that its whole-process CPU
(every thread, user + system, as its own getrusage counts it) is measured apart from the load
generator and from this process:

  ours  a child that loads the probe and drives a Feed in DUAL (acting on perf, measuring the
        ring) the way the agent does: `feed.poll(AGENT_POLL_MS)` in a loop, windows closed on the
        shared clock, the channels waited on with the agent's `[buffers] max_delay_ms`
  c     this process loads the probe and hands its ring and perf map fds to the libbpf reference
        consumer (migrator/tools/bench/c/refconsumer.c, built by scripts/setup.sh), which calls
        ring_buffer__consume and perf_buffer__consume every interval_ms (default: max_delay_ms)

Each child answers SIGUSR1 with one line {"cpu_s", "mono"} (its getrusage and CLOCK_MONOTONIC),
so CPU is taken between two marks around the generator's run: start-up and compilation are not
counted. At the end each child drains and reports what it consumed; the books must match the
kernel's counters exactly (records written == records consumed, per channel).

    python -m migrator.tools.bench.overhead agent ...   (the `ours` child; not for direct use)
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from migrator.config import Buffers
from migrator.errors import BenchError, OptionError

DEFAULT_RATES = (0, 10_000, 100_000, 1_000_000)
# The agent loop's longest wait in one feed.poll (agent/loop.py LOOP_WAIT_S): a new desired mode
# wakes it through the database link's eventfd, so it need not return more often than this.
AGENT_POLL_MS = 250
# Targets (issue 18): whole-process CPU at most this many times the C reference's, per rate; idle
# at most 0.3 % of a core.
RATIO_MAX = {10_000: 3.0, 100_000: 2.0, 1_000_000: 2.0}
IDLE_MAX_PCT = 0.3
REF_ENV = "MIGRATOR_REFCONSUMER"
ROOT = Path(__file__).resolve().parents[3]


def ref_binary() -> Path:
    """The built libbpf reference consumer ($MIGRATOR_REFCONSUMER, else build/refconsumer), or BenchError."""
    path = Path(os.environ.get(REF_ENV) or ROOT / "build" / "refconsumer")
    if not os.access(path, os.X_OK):
        raise BenchError("overhead", f"the libbpf reference consumer {path} is not built",
                         "run `sudo bash scripts/setup.sh` (installs gcc and libbpf-dev, builds it), "
                         f"or point {REF_ENV} at a build of migrator/tools/bench/c/refconsumer.c")
    return path


def check_rates(rates: tuple[float, ...]) -> tuple[float, ...]:
    """Rates in events per second, each >= 0 (0: no events, the idle cost)."""
    if not rates:
        raise OptionError("--rate", "(none)", "gives no rate", "give --rate one or more times, e.g. --rate 100000")
    for r in rates:
        if not r >= 0:
            raise OptionError("--rate", r, "is not >= 0", "use 0 (idle) or a number of events per second")
    return tuple(rates)


# -- the children ---------------------------------------------------------------------------------
class ConsumerChild:
    """A consumer child speaking the line protocol: "ready", marks on SIGUSR1, a JSON line at SIGTERM."""

    def __init__(self, argv: list[str], pass_fds: tuple[int, ...] = (), ready_s: float = 60.0) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, pass_fds=pass_fds,
                                     text=True, bufsize=1)
        line = self._line(ready_s)
        if line != "ready":
            self.kill()
            raise BenchError("overhead", f"consumer {argv[0]} did not start (said {line!r}, exit {self.proc.poll()})",
                             "run it by hand to see its error; `migrator doctor` checks BPF")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else ""

    def mark(self) -> dict:
        """The child's CPU seconds and monotonic clock now (it answers SIGUSR1)."""
        self.proc.send_signal(signal.SIGUSR1)
        line = self._line(10.0)
        if not line:
            raise BenchError("overhead", f"consumer pid {self.pid} did not answer a CPU mark", "see its stderr")
        return json.loads(line)

    def finish(self, timeout: float = 60.0) -> dict:
        """Stop it: it drains what is left and reports its counts."""
        self.proc.send_signal(signal.SIGTERM)
        line = self._line(timeout)
        self.proc.wait(timeout)
        if not line:
            raise BenchError("overhead", f"consumer pid {self.pid} exited {self.proc.returncode} without its report",
                             "see its stderr")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "ConsumerChild":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def _generator(rate: float, seconds: float):
    """The rate-limited generator of one run (killed at exit), or nothing for the idle rate."""
    from migrator.dataplane.loadgen import LoadGen

    return LoadGen(max(1, round(rate * seconds)), rate) if rate > 0 else contextlib.nullcontext()


def _measure(child: ConsumerChild, rate: float, seconds: float, gen, progress: Callable[[str], None], tag: str) -> dict:
    """CPU of the child between two marks around the generator's run (or `seconds` idle)."""
    time.sleep(0.3)  # let start-up work (first window, page faults) pass before the first mark
    m0 = child.mark()
    if gen is not None:
        gen.start()
        deadline = time.monotonic() + seconds * 3 + 30
        next_report = time.monotonic() + 1.0
        while gen.running() and time.monotonic() < deadline:
            time.sleep(0.05)
            if time.monotonic() >= next_report:
                progress(f"{tag} generating ...")
                next_report += 1.0
        if gen.running():
            raise BenchError("overhead", f"the generator did not finish {rate:g} events/s x {seconds:g} s in time",
                             "lower --rate or --seconds")
    else:
        time.sleep(seconds)
    m1 = child.mark()
    wall = m1["mono"] - m0["mono"]
    cpu = m1["cpu_s"] - m0["cpu_s"]
    return {"wall_s": round(wall, 4), "cpu_s": round(cpu, 6), "cpu_pct": round(100 * cpu / wall, 3) if wall else None}


def _ours(rate: float, seconds: float, buffers: Buffers, max_delay_ms: float, progress, tag: str) -> dict:
    with _generator(rate, seconds) as gen:
        argv = [sys.executable, "-m", "migrator.tools.bench.overhead", "agent", str(gen.pid if gen else 0),
                str(buffers.ring_bytes), str(buffers.perf_pages), buffers.wakeup, str(max_delay_ms), str(os.getpid())]
        with ConsumerChild(argv) as child:
            res = _measure(child, rate, seconds, gen, progress, tag)
            rep = child.finish()
    res.update(events=rep["attempts"]["perf"], consumed=rep["delivered"], written=rep["ok"], report=rep)
    return res


def _c(rate: float, seconds: float, buffers: Buffers, interval_ms: float, progress, tag: str) -> dict:
    from migrator.dataplane.demo_probes import Probe

    binary = ref_binary()
    with Probe("synthetic", ring_bytes=buffers.ring_bytes, ring_submit=buffers.ring_submit,
               wakeup=buffers.wakeup) as probe, _generator(rate, seconds) as gen:
        probe.set_mode("DUAL")
        ring_fd, perf_fd = probe.channel.ring_map_fd, probe.channel.perf_map.map_fd
        argv = [str(binary), "--ring-fd", str(ring_fd), "--perf-fd", str(perf_fd),
                "--interval-ms", str(max(1, round(interval_ms))), "--perf-pages", str(buffers.perf_pages)]
        with ConsumerChild(argv, pass_fds=(ring_fd, perf_fd)) as child:
            if gen is not None:
                probe.set_target(gen.pid)
            res = _measure(child, rate, seconds, gen, progress, tag)
            probe.set_target(0)
            counters = probe.counters()  # final: nothing else emits once the generator is done
            rep = child.finish()
    written = {"perf": counters["perf"].ok, "ring": counters["ring"].ok}
    consumed = {"perf": rep["perf_records"], "ring": rep["ring_records"]}
    res.update(events=counters["perf"].attempts, consumed=consumed, written=written, report=rep)
    return res


# -- the bench ------------------------------------------------------------------------------------
def _pair(rate: float, seconds: float, buffers: Buffers, max_delay_ms: float, interval_ms: float, progress,
          k: int, repeat: int) -> dict:
    """One run of each consumer at `rate`, ours first in even pairs and the C consumer first in odd
    ones (so a machine that slows down or speeds up during a bench weighs on both alike)."""
    row: dict = {"rate": rate}
    order = (("ours", _ours, max_delay_ms), ("c", _c, interval_ms))
    for name, run, arg in (order if k % 2 == 0 else order[::-1]):
        tag = f"[{name} @ {rate:,.0f}/s" + (f", pair {k + 1}/{repeat}]" if repeat > 1 else "]")
        progress(f"{tag} starting")
        r = run(rate, seconds, buffers, arg, progress, tag)
        row[name] = r
        progress(f"{tag} {r['cpu_pct']:.3f} % of a core over {r['wall_s']:.2f} s, "
                 f"{r['events']:,} events, consumed {r['consumed']}")
    for name in ("ours", "c"):
        # A consumer that lost records (perf full) did less work: compare per record too.
        n = sum(row[name]["consumed"].values())
        row[name]["cpu_us_per_record"] = round(row[name]["cpu_s"] / n * 1e6, 4) if n else None
    row["ratio"] = _ratio(row["ours"]["cpu_pct"], row["c"]["cpu_pct"])
    row["ratio_per_record"] = _ratio(row["ours"]["cpu_us_per_record"], row["c"]["cpu_us_per_record"])
    row["exact"] = {name: row[name]["consumed"] == row[name]["written"] for name in ("ours", "c")}
    return row


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours is not None and theirs else None


def bench_overhead(rates: tuple[float, ...] = DEFAULT_RATES, seconds: float = 5.0, *, max_delay_ms: float | None = None,
                   c_interval_ms: float | None = None, buffers: Buffers | None = None, repeat: int = 1,
                   progress: Callable[[str], None] = lambda _m: None) -> dict:
    """Whole-process CPU (% of a core) of our agent loop and of the libbpf C consumer, per rate.

    repeat: pairs of runs per rate, in alternating order; the pair of the median ratio is reported,
    every pair's figures in `runs` (on a shared machine one pair can be off by a third).

    Returns {"rates": [{rate, ours, c, ratio, ratio_per_record, exact, runs}], "targets": {name: bool},
    "notes": {...}}.
    """
    check_rates(rates)
    if repeat < 1:
        raise OptionError("--repeat", repeat, "is not a positive number of pairs", "give --repeat 1 or more")
    if not seconds > 0:
        raise OptionError("--seconds", seconds, "is not a positive number of seconds", "give --seconds a number > 0")
    buffers = buffers or Buffers()
    max_delay_ms = float(max_delay_ms if max_delay_ms is not None else buffers.max_delay_ms)
    interval_ms = float(c_interval_ms if c_interval_ms is not None else max_delay_ms)
    ref_binary()  # refuse before loading anything
    from migrator.dataplane.kstats import close_stats, enable_stats

    # BPF run-time accounting on for both runs (the agent's pipeline turns it on for its own), so
    # both producers pay the same per-event cost.
    stats_fd = enable_stats()
    rows = []
    try:
        for rate in rates:
            pairs = [_pair(rate, seconds, buffers, max_delay_ms, interval_ms, progress, k, repeat) for k in range(repeat)]
            # The pair of the median ratio speaks for the rate (the lower of the two middle ones
            # when there is an even number): one measured pair, not a blend of several.
            ratios = [p["ratio"] for p in pairs]
            if all(x is not None for x in ratios):
                row = dict(pairs[ratios.index(statistics.median_low(ratios))])
            else:
                row = dict(pairs[0])
            row["runs"] = [{"ours_cpu_pct": p["ours"]["cpu_pct"], "c_cpu_pct": p["c"]["cpu_pct"], "ratio": p["ratio"]}
                           for p in pairs]
            row["exact"] = {name: all(p["exact"][name] for p in pairs) for name in ("ours", "c")}
            rows.append(row)
    finally:
        close_stats(stats_fd)
    targets: dict[str, bool] = {}
    for row in rows:
        most = RATIO_MAX.get(row["rate"])
        if most is not None:
            targets[f"ours/c <= {most:g}x at {row['rate']:,.0f} events/s"] = (
                row["ratio"] is not None and row["ratio"] <= most)
        if row["rate"] == 0:
            targets[f"idle <= {IDLE_MAX_PCT:g} % of a core"] = row["ours"]["cpu_pct"] <= IDLE_MAX_PCT
    for row in rows:
        for name, ok in row["exact"].items():
            targets[f"{name} consumed every record written at {row['rate']:,.0f} events/s"] = ok
    return {"rates": rows, "targets": targets,
            "notes": {"seconds": seconds, "repeat": repeat, "max_delay_ms": max_delay_ms, "c_interval_ms": interval_ms,
                      "agent_poll_ms": AGENT_POLL_MS, "ring_bytes": buffers.ring_bytes,
                      "perf_pages": buffers.perf_pages, "wakeup": buffers.wakeup, "ring_submit": buffers.ring_submit,
                      "probe": "synthetic, DUAL (perf and ring written for every event)",
                      "cpu": "whole consumer process, user + system (getrusage), between marks around the "
                             "generator's run; the generator and this process are not counted"}}


# -- the `ours` child ------------------------------------------------------------------------------
def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _agent_child(argv: list[str]) -> None:
    """Load the synthetic probe, run a Feed in DUAL as the agent does, answer marks, report at SIGTERM."""
    from migrator.agent.feed import Feed
    from migrator.dataplane.demo_probes import Probe
    from migrator.dataplane.loadgen import die_with_parent
    from migrator.dataplane.schema import demo_registry

    target, ring_bytes, perf_pages, wakeup, max_delay_ms, parent = argv
    die_with_parent(int(parent))
    state = {"stop": False}

    def on_mark(_sig, _frm) -> None:
        print(json.dumps({"cpu_s": _cpu_s(), "mono": time.monotonic()}), flush=True)

    def on_stop(_sig, _frm) -> None:
        state["stop"] = True

    signal.signal(signal.SIGUSR1, on_mark)
    signal.signal(signal.SIGTERM, on_stop)
    with Probe("synthetic", ring_bytes=int(ring_bytes), wakeup=wakeup) as probe:
        feed = Feed(probe.bpf, "events", channel=probe.channel, mode="DUAL", registry=demo_registry(),
                    perf_pages=int(perf_pages), batch_interval=float(max_delay_ms) / 1000,
                    ring_wakeup=wakeup != "no_wakeup")
        try:
            probe.set_target(int(target))
            print("ready", flush=True)
            while not state["stop"]:
                feed.poll(AGENT_POLL_MS)
            probe.set_target(0)
            feed.close_window()
            c = probe.counters()
            ws = feed.windows
            p99 = [w.lag_p99_ms for w in ws if w.lag_p99_ms is not None and w.delivered]
            rep = {"attempts": {ch: c[ch].attempts for ch in c}, "ok": {ch: c[ch].ok for ch in c},
                   "delivered": dict(feed.pipe.delivered_total), "acted": dict(feed.acted),
                   "windows": len({w.index for w in ws}),
                   "residuals": sorted({w.residual for w in ws}),
                   "lag_p99_ms": {ch: sorted(w.lag_p99_ms for w in ws if w.channel == ch and w.lag_p99_ms is not None
                                             and w.delivered) for ch in ("perf", "ring")},
                   "lag_p99_ms_max": max(p99) if p99 else None}
        finally:
            feed.close()
    print(json.dumps(rep), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        _agent_child(sys.argv[2:])
    else:
        sys.exit("usage: python -m migrator.tools.bench.overhead agent TARGET RING_BYTES PERF_PAGES WAKEUP "
                 "MAX_DELAY_MS PARENT_PID (run by `migrator bench overhead`)")


__all__ = ["bench_overhead", "ref_binary", "check_rates", "DEFAULT_RATES", "RATIO_MAX", "IDLE_MAX_PCT"]
