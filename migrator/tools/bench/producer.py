"""`migrator bench producer`: what each ring wakeup policy costs the traced code, side by side.

Per policy (adaptive, no_wakeup, force_wakeup, batched) and rate, the synthetic probe runs in DUAL
(both channels written for every event) with a rate-limited generator, consumed by a Pipeline in
this process the way an agent consumes it (its batch clock, idle waits that last as long as the
policy lets them). Per cell: each channel's emit cost in the traced context (the windows'
producer_ns: migrator.h times one emit in 16), the BPF program's run time per event, this
process's whole CPU (the generator is another process), and the ring's lag p99. Rate 0 is the idle
consumer. A last measurement compares the program's run time with emit timing compiled out and
in (MIGRATOR_TIME_EVERY=0 vs 16): what the sampling itself costs.
"""
from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

from migrator.shared.vocab import RING_WAKEUPS

DEFAULT_RATES = (0.0, 2_000.0, 20_000.0, 200_000.0)
CEILING_RATE = 5_000_000.0  # more than one CPU's generator reaches: each thread goes as fast as it can
WINDOW_S = 1.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def measure(wakeup: str, rate: float, seconds: float, *, extra_cflags: tuple[str, ...] = (),
            max_delay_ms: float = 10.0, cpus: int = 1) -> dict:
    """One cell: the probe with `wakeup`, `rate` events/s (0: idle) for `seconds`; see the module doc."""
    from migrator.dataplane.demo_probes import Probe
    from migrator.dataplane.loadgen import LoadGen
    from migrator.dataplane.pipeline import Pipeline

    with Probe("synthetic", wakeup=wakeup, extra_cflags=extra_cflags) as probe:
        pipe = Pipeline(probe, batch_interval=max_delay_ms / 1000)
        gen = None
        try:
            probe.set_mode("DUAL")
            # An agent's wait: without the batch clock when records are sure to wake it
            pipe.records_wake = wakeup != "no_wakeup"
            if rate > 0:
                gen = LoadGen(int(rate * seconds * 2) + 1000, rate, cpus=cpus)
                probe.set_target(gen.pid)
                gen.start()
            pipe.close_window()  # start clean: the first window holds only what we measure
            c0, t0 = _cpu(), time.monotonic()
            windows, next_close = [], t0 + WINDOW_S
            while (now := time.monotonic()) < t0 + seconds:
                if now >= next_close:
                    windows += pipe.close_window()
                    next_close += WINDOW_S
                pipe.poll(timeout=min(0.25, max(0.0, next_close - time.monotonic())))
            cpu, wall = _cpu() - c0, time.monotonic() - t0
            if gen is not None:
                probe.set_target(0)
                gen.kill()
            windows += pipe.close_window()
        finally:
            if gen is not None:
                gen.kill()
            pipe.close()
    busy = [w for w in windows if w.attempts > 0]
    by = {ch: [w for w in busy if w.channel == ch] for ch in ("perf", "ring")}
    run = [w.bpf_run_ns / w.bpf_run_cnt for w in by["ring"] if w.bpf_run_ns and w.bpf_run_cnt]
    return {"wakeup": wakeup, "rate": rate, "cpus": cpus, "events": sum(w.attempts for w in by["ring"]),
            "events_per_s": round(sum(w.attempts for w in by["ring"]) / wall),
            "producer_ns": {ch: _med([w.producer_ns for w in ws]) for ch, ws in by.items()},
            "bpf_run_ns_per_event": _med(run), "consumer_cpu_pct": round(100 * cpu / wall, 2),
            "lag_p99_ms": _med([w.lag_p99_ms for w in by["ring"]]),
            "residual": sum(w.residual for w in windows)}


def bench_producer(rates: tuple[float, ...] = DEFAULT_RATES, seconds: float = 3.0,
                   wakeups: tuple[str, ...] = tuple(RING_WAKEUPS), max_delay_ms: float = 10.0, cpus: int = 1,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Every (policy, rate) cell, the sampling's own cost, and the targets of issue 16 item 3."""
    cells = []
    for rate in rates:
        for w in wakeups:
            if progress:
                progress(f"{w} at {rate:g} ev/s")
            cells.append(measure(w, rate, seconds, max_delay_ms=max_delay_ms))
    if progress:
        progress("sampling cost: no_wakeup at 20000 ev/s, timing compiled out and in")
    off = measure("no_wakeup", 20_000, seconds, extra_cflags=("-DMIGRATOR_TIME_EVERY=0",), max_delay_ms=max_delay_ms)
    on = measure("no_wakeup", 20_000, seconds, max_delay_ms=max_delay_ms)
    sampling = {"run_ns_untimed": off["bpf_run_ns_per_event"], "run_ns_timed": on["bpf_run_ns_per_event"]}
    res = {"cells": cells, "sampling": sampling, "max_delay_ms": max_delay_ms, "seconds": seconds,
           "contention": contention(cpus, seconds, max_delay_ms, progress) if cpus > 1 else []}
    res["targets"] = _targets(res)
    return res


def contention(cpus: int, seconds: float, max_delay_ms: float = 10.0,
               progress: Callable[[str], None] | None = None) -> list[dict]:
    """The ring is one lock for every CPU: the emit cost with 1 and with `cpus` CPUs emitting at
    once, as fast as the generator goes (batched wakeups, so the wakeup does not hide the lock)."""
    out = []
    for c in sorted({1, cpus}):
        if progress:
            progress(f"contention: {c} CPU(s) emitting at once, as fast as they go")
        out.append(measure("batched", CEILING_RATE, seconds, max_delay_ms=max_delay_ms, cpus=c))
    return out


def _cell(res: dict, wakeup: str, rate: float) -> dict | None:
    return next((c for c in res["cells"] if c["wakeup"] == wakeup and c["rate"] == rate), None)


def _targets(res: dict) -> dict:
    out = {}
    b, n = _cell(res, "batched", 2_000.0), _cell(res, "no_wakeup", 2_000.0)
    if b and n and b["producer_ns"]["ring"] and n["producer_ns"]["ring"]:
        out["batched ring emit <= 1.1x no_wakeup's at 2k ev/s"] = b["producer_ns"]["ring"] <= 1.1 * n["producer_ns"]["ring"]
    idle = _cell(res, "batched", 0.0)
    if idle:
        out["idle consumer (batched) <= 0.3 % of a core"] = idle["consumer_cpu_pct"] <= 0.3
    if b and b["lag_p99_ms"] is not None:
        out["batched lag p99 within max_delay_ms + one wakeup at 2k ev/s"] = b["lag_p99_ms"] <= res["max_delay_ms"] + 1.0
    return out


def render(res: dict) -> str:
    """A row per (rate, policy): emit ns per channel, run time, consumer CPU, lag; then targets."""
    lines = [f"{'rate/s':>8} {'wakeup':<13} {'ring ns':>8} {'perf ns':>8} {'run ns':>7} {'cpu %':>6} "
             f"{'lag p99':>8} {'events':>8}"]

    def f(v, fmt=".0f"):
        return "-" if v is None else format(v, fmt)

    for c in res["cells"]:
        lines.append(f"{c['rate']:>8g} {c['wakeup']:<13} {f(c['producer_ns']['ring']):>8} "
                     f"{f(c['producer_ns']['perf']):>8} {f(c['bpf_run_ns_per_event']):>7} "
                     f"{c['consumer_cpu_pct']:>6.2f} {f(c['lag_p99_ms'], '.2f'):>8} {c['events']:>8}")
    s = res["sampling"]
    lines.append(f"sampling (one emit in 16 timed): program run time {f(s['run_ns_untimed'])} ns untimed, "
                 f"{f(s['run_ns_timed'])} ns timed (no_wakeup, 20k ev/s)")
    for c in res.get("contention", []):
        lines.append(f"contention: {c['cpus']} CPU(s) emitting at once: {c['events_per_s']:,} events/s, ring emit "
                     f"{f(c['producer_ns']['ring'])} ns, perf emit {f(c['producer_ns']['perf'])} ns per event")
    for name, ok in res["targets"].items():
        lines.append(f"target: {name}: {'met' if ok else 'MISSED'}")
    return "\n".join(lines)
