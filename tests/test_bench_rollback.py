"""`migrator bench rollback`: one real rolled-back lab migration, timings read back from the database."""
import json

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app

pytestmark = [pytest.mark.kernel, pytest.mark.slow, needs_root]


def test_bench_rollback_reports_ordered_timings():
    res = CliRunner().invoke(app, ["bench", "rollback", "--runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"runs", "summary", "targets"}
    (run,) = out["runs"]
    assert set(run["hosts"]) == {"mbr1"}
    # causality: the decision precedes the map write, which precedes the first perf record
    assert 0 <= run["decided_ms"] <= run["map_perf_ms"] <= run["first_perf_ms"]
    # Exact state instead of a bound on the durations (the benchmark reports those against its targets).
    assert set(run) == {"window_end", "decided_ms", "confirmed_ms", "map_perf_ms", "first_perf_ms", "hosts"}
    assert run["hosts"]["mbr1"] == {"map_perf_ms": run["map_perf_ms"], "first_perf_ms": run["first_perf_ms"]}
    assert set(out["summary"]) == {"decided_ms", "confirmed_ms", "map_perf_ms", "first_perf_ms"}
    assert out["summary"]["map_perf_ms"] == {"median": run["map_perf_ms"], "max": run["map_perf_ms"]}
