"""Rollback latency on the lab: from the end of the Nth breaching window to the slice hosts' mode
maps reading PERF, and to the first perf record delivered after the switch."""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from migrator.config import load_config
from migrator.errors import BenchError
from migrator.tools.lab.run import run_lab_migration
from migrator.store import open_store
from migrator.store.models import Transition, Window

PLAN = """
window_seconds = {window}
slices = [1, "100%"]
rollback_after = {n}
[phases.dual_instrument]
min_clean_windows = 1
[phases.shadow]
min_clean_windows = 1
[phases.canary]
min_clean_windows = 2
[lab]
hosts = {hosts}
pps = {pps}
"""
TARGET_MAP_MS = 50.0
TARGET_FIRST_PERF_MS = 100.0


def measure_run(database_url: str, migration_id: int, slice_hosts: list[str]) -> dict:
    """Read one rolled-back migration's timings back from its database."""
    sf = open_store(database_url, readonly=True)
    with sf() as s:
        rb = s.scalars(select(Transition).where(Transition.migration_id == migration_id,
                                                Transition.to_phase == "ROLLED_BACK")).one()
        ids = json.loads(rb.window_ids)
        nth = s.get(Window, ids[-1])
        ends = s.scalars(select(Window.end).where(Window.migration_id == migration_id, Window.index == nth.index,
                                                  Window.host.in_(slice_hosts), Window.channel == "ring")).all()
        window_end = max(ends)
        switches = {}
        for w in s.scalars(select(Window).where(Window.migration_id == migration_id, Window.host.in_(slice_hosts),
                                                Window.channel == "ring", Window.index > nth.index)
                           .order_by(Window.index)):
            sw = json.loads(w.extra or "{}").get("mode_switch")
            if sw and sw["to"] == "PERF" and w.host not in switches:
                switches[w.host] = sw
    missing = sorted(set(slice_hosts) - set(switches))
    if missing:
        raise BenchError("rollback", f"migration {migration_id} in {database_url}: no PERF switch reported by "
                                     f"{', '.join(missing)} after the rollback",
                         "rerun the scenario with `migrator lab run --fault stall-ring --run-dir DIR` and read "
                         "the agent logs in DIR, then run the bench again")
    ms = lambda t: None if t is None else round((t - window_end) * 1000, 2)  # noqa: E731
    firsts = [sw["first_perf_at"] for sw in switches.values()]
    return {
        "window_end": window_end,
        "decided_ms": ms(rb.created_at),
        "confirmed_ms": ms(rb.confirmed_at),
        "map_perf_ms": ms(max(sw["read_back"] for sw in switches.values())),
        "first_perf_ms": None if None in firsts else ms(max(firsts)),
        "hosts": {h: {"map_perf_ms": ms(sw["read_back"]), "first_perf_ms": ms(sw["first_perf_at"])}
                  for h, sw in switches.items()},
    }


def bench_rollback(runs: int = 3, hosts: int = 2, window: float = 1.0, rollback_after: int = 2, pps: int = 2000,
                   progress: Callable[[str], None] = lambda _: None) -> dict:
    """Run `runs` lab migrations that roll back on a stalled canary host; latency per run and summary."""
    out = []
    with tempfile.TemporaryDirectory(prefix="migrator-bench-rollback-") as tmp:
        base_path = Path(tmp) / "base.toml"
        base_path.write_text(PLAN.format(window=window, n=rollback_after, hosts=hosts, pps=pps))
        base = load_config(base_path)
        for i in range(runs):
            progress(f"run {i + 1}/{runs}: lab migration with a stalled canary host ...")
            res = run_lab_migration(base, Path(tmp) / f"run{i}", prefix="mbr", fault="stall-ring",
                                    say=lambda _: None, timeout=60, after_final_windows=2)
            if res.phase != "ROLLED_BACK":
                raise BenchError("rollback", f"run {i + 1} ended {res.phase}, not ROLLED_BACK (the stalled canary "
                                             "host did not breach)",
                                 "rerun the scenario with `migrator lab run --fault stall-ring --run-dir DIR` to see "
                                 "why, or give it more traffic (--pps), then run the bench again")
            r = measure_run(res.database_url, res.migration_id, [res.fault_host])
            progress(f"  mode map PERF after {r['map_perf_ms']} ms, first perf record after {r['first_perf_ms']} ms")
            out.append(r)

    def agg(key: str) -> dict:
        vals = [r[key] for r in out if r[key] is not None]
        return {"median": statistics.median(vals), "max": max(vals)} if vals else {"median": None, "max": None}

    summary = {k: agg(k) for k in ("decided_ms", "confirmed_ms", "map_perf_ms", "first_perf_ms")}
    return {
        "runs": out,
        "summary": summary,
        "targets": {
            f"map reads PERF < {TARGET_MAP_MS:g} ms": (summary["map_perf_ms"]["max"] or 1e9) < TARGET_MAP_MS,
            f"first perf record < {TARGET_FIRST_PERF_MS:g} ms": (summary["first_perf_ms"]["max"] or 1e9) < TARGET_FIRST_PERF_MS,
        },
    }
