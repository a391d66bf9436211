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
    assert run["map_perf_ms"] < 1000  # a sanity bound, not the 50 ms target (that is the benchmark's)
