"""Fault helpers the lab can inject by itself: bounded CPU load (burst traffic is a profile of
migrator.tools.lab.traffic). Stalling the ring consumer and shrinking the ring are agent-side."""
from __future__ import annotations

import os
import subprocess
import sys

from migrator.errors import LabConfigError

MAX_SECONDS = 600.0


def cpu_load(seconds: float, cpu: int | None = None, duty: float = 1.0) -> subprocess.Popen:
    """Start a child that keeps one CPU busy (`duty` of each 10 ms) for `seconds`, then exits.

    `cpu` pins it with sched_setaffinity (None: wherever the scheduler puts it). The caller
    may wait() on the returned Popen or terminate() it early.
    """
    if not 0 < seconds <= MAX_SECONDS:
        raise LabConfigError("seconds", seconds, f"choose 0 < seconds <= {MAX_SECONDS:g}")
    if not 0 < duty <= 1:
        raise LabConfigError("duty", duty, "choose 0 < duty <= 1")
    if cpu is not None and cpu not in os.sched_getaffinity(0):
        raise LabConfigError("cpu", cpu, f"choose one of {sorted(os.sched_getaffinity(0))}")
    # `-c` rather than `-m migrator.tools.lab.faults`: the package imports this module first, and runpy
    # warns about running a module that is already imported.
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from migrator.tools.lab.faults import _burn; "
                             "_burn(float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))",
                             str(seconds), "-1" if cpu is None else str(cpu), str(duty)])
    if cpu is not None:  # pinned before we return, not only once the child's interpreter has started
        os.sched_setaffinity(proc.pid, {cpu})
    return proc


def _burn(seconds: float, cpu: int, duty: float) -> None:
    import time

    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    end = time.monotonic() + seconds
    period = 0.01
    while True:
        start = time.monotonic()
        if start >= end:
            return
        while time.monotonic() - start < period * duty:
            pass
        if duty < 1:
            time.sleep(period * (1 - duty))

