"""Rollback latency on the lab, both paths side by side in one run.

Each run is a lab migration of 3 hosts whose canary slice 1 has two hosts on RING; the first one's
ring consumer is stalled. It protects itself (agent/selfprotect.py): its own windows breach N in a
row and its agent writes PERF into its mode map at once (the host-local path). The controller
then rolls the migration back on the host's report, and the other slice-1 host switches to PERF
the way every host did before (the controller path: agent -> database -> controller -> database
-> agent). Both are timed from the end of the same deciding window; the host-local path also
from the moment that window's books closed (one RCU grace period after it ended, the earliest
anything can judge it).
"""
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
from migrator.store import open_store, safe_url
from migrator.store.models import Host, Transition, Window

PLAN = """
window_seconds = {window}
slices = [{canary}, "100%"]
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
TARGET_LOCAL_MS = 5.0  # host-local: the deciding window's books closed -> mode map PERF
TARGET_MAP_MS = 50.0  # controller path: the deciding window's end -> mode map PERF
TARGET_FIRST_PERF_MS = 100.0
SUMMARY_KEYS = ("local_map_perf_ms", "local_after_close_ms", "decided_ms", "confirmed_ms", "map_perf_ms",
                "first_perf_ms")


def measure_run(database_url: str, migration_id: int) -> dict:
    """Read one rolled-back migration's timings back from its database: the host-local path on the
    host that decided, the controller path on the other hosts of canary slice 1."""
    sf = open_store(database_url, readonly=True)
    with sf() as s:
        slice_hosts = list(s.scalars(select(Host.name).where(Host.migration_id == migration_id, Host.slice == 1)))
        rb = s.scalars(select(Transition).where(Transition.migration_id == migration_id,
                                                Transition.to_phase == "ROLLED_BACK")).one()
        ids = json.loads(rb.window_ids)
        nth = s.get(Window, ids[-1])
        window_end = nth.end
        local = json.loads(nth.extra or "{}").get("self_protect")
        switches = {}
        for w in s.scalars(select(Window).where(Window.migration_id == migration_id, Window.host.in_(slice_hosts),
                                                Window.host != nth.host, Window.channel == "ring",
                                                Window.index > nth.index).order_by(Window.index)):
            sw = json.loads(w.extra or "{}").get("mode_switch")
            if sw and sw["to"] == "PERF" and w.host not in switches:
                switches[w.host] = sw
    missing = sorted(set(slice_hosts) - set(switches) - {nth.host})
    if missing or local is None:
        what = (f"no PERF switch reported by {', '.join(missing)} after the rollback" if missing else
                f"the rollback ({rb.actor}: {rb.reason}) did not come from {nth.host} protecting itself")
        raise BenchError("rollback", f"migration {migration_id} in {safe_url(database_url)}: {what}",
                         "rerun the scenario with `migrator lab run --fault stall-ring --run-dir DIR` and read "
                         "the agent logs in DIR, then run the bench again")
    ms = lambda t: None if t is None else round((t - window_end) * 1000, 2)  # noqa: E731
    firsts = [sw["first_perf_at"] for sw in switches.values()]
    return {
        "window_end": window_end,
        "actor": rb.actor,
        "local_host": nth.host,
        "local_map_perf_ms": ms(local["read_back"]),
        "local_after_close_ms": round((local["read_back"] - local["closed_at"]) * 1000, 2),
        "decided_ms": ms(rb.created_at),
        "confirmed_ms": ms(rb.confirmed_at),
        "map_perf_ms": ms(max(sw["read_back"] for sw in switches.values())),
        "first_perf_ms": None if None in firsts else ms(max(firsts)),
        "hosts": {h: {"map_perf_ms": ms(sw["read_back"]), "first_perf_ms": ms(sw["first_perf_at"])}
                  for h, sw in switches.items()},
    }


def bench_rollback(runs: int = 3, hosts: int = 3, window: float = 1.0, rollback_after: int = 2, pps: int = 2000,
                   prefix: str = "mbr", progress: Callable[[str], None] = lambda _: None) -> dict:
    """Run `runs` lab migrations that roll back on a stalled canary host; both paths' latency per run and summary."""
    if hosts < 3:
        raise BenchError("rollback", f"{hosts} hosts: the two paths need two canary hosts and a PERF host",
                         "give --hosts 3 or more")
    out = []
    with tempfile.TemporaryDirectory(prefix="migrator-bench-rollback-") as tmp:
        base_path = Path(tmp) / "base.toml"
        base_path.write_text(PLAN.format(window=window, n=rollback_after, hosts=hosts, pps=pps, canary=2))
        base = load_config(base_path)
        for i in range(runs):
            progress(f"run {i + 1}/{runs}: lab migration with a stalled canary host ...")
            res = run_lab_migration(base, Path(tmp) / f"run{i}", prefix=prefix, fault="stall-ring",
                                    say=lambda _: None, timeout=60, after_final_windows=2)
            if res.phase != "ROLLED_BACK":
                raise BenchError("rollback", f"run {i + 1} ended {res.phase}, not ROLLED_BACK (the stalled canary "
                                             "host did not breach)",
                                 "rerun the scenario with `migrator lab run --fault stall-ring --run-dir DIR` to see "
                                 "why, or give it more traffic (--pps), then run the bench again")
            r = measure_run(res.database_url, res.migration_id)
            progress(f"  host-local: mode map PERF {r['local_after_close_ms']} ms after the books closed "
                     f"({r['local_map_perf_ms']} ms after the window ended); controller path: "
                     f"{r['map_perf_ms']} ms, first perf record {r['first_perf_ms']} ms")
            out.append(r)

    def agg(key: str) -> dict:
        vals = [r[key] for r in out if r[key] is not None]
        return {"median": statistics.median(vals), "max": max(vals)} if vals else {"median": None, "max": None}

    summary = {k: agg(k) for k in SUMMARY_KEYS}
    return {
        "runs": out,
        "summary": summary,
        "targets": {
            f"host-local: map reads PERF <= {TARGET_LOCAL_MS:g} ms after the books close":
                (summary["local_after_close_ms"]["max"] or 1e9) <= TARGET_LOCAL_MS,
            f"controller path: map reads PERF < {TARGET_MAP_MS:g} ms": (summary["map_perf_ms"]["max"] or 1e9) < TARGET_MAP_MS,
            f"controller path: first perf record < {TARGET_FIRST_PERF_MS:g} ms":
                (summary["first_perf_ms"]["max"] or 1e9) < TARGET_FIRST_PERF_MS,
        },
    }
