"""`migrator bench rollback`: one real rolled-back lab migration, timings read back from the database."""
import json

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app

pytestmark = [pytest.mark.kernel, pytest.mark.slow, needs_root]


def test_bench_rollback_reports_both_paths_with_ordered_timings():
    res = CliRunner().invoke(app, ["bench", "rollback", "--runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"runs", "summary", "targets"}
    (run,) = out["runs"]
    # mbr1 (stalled) protected itself; mbr2, the other canary host, went PERF through the controller.
    assert (run["local_host"], run["actor"], set(run["hosts"])) == ("mbr1", "host mbr1", {"mbr2"})
    # causality: the host's own switch needs no database; the controller path needs its report, then the decision
    assert 0 <= run["local_after_close_ms"] <= run["local_map_perf_ms"] <= run["map_perf_ms"]
    assert 0 <= run["decided_ms"] <= run["map_perf_ms"] <= run["first_perf_ms"]
    # Exact state instead of a bound on the durations (the benchmark reports those against its targets).
    assert set(run) == {"window_end", "actor", "local_host", "local_map_perf_ms", "local_after_close_ms",
                        "decided_ms", "confirmed_ms", "map_perf_ms", "first_perf_ms", "hosts"}
    assert run["hosts"]["mbr2"] == {"map_perf_ms": run["map_perf_ms"], "first_perf_ms": run["first_perf_ms"]}
    assert set(out["summary"]) == {"local_map_perf_ms", "local_after_close_ms", "decided_ms", "confirmed_ms",
                                   "map_perf_ms", "first_perf_ms"}
    assert out["summary"]["local_after_close_ms"] == {"median": run["local_after_close_ms"],
                                                      "max": run["local_after_close_ms"]}
