"""`migrator bench consumers` on the real kernel: four paths, exact shape, every event accounted."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app

PATHS = {"bcc-ring", "bcc-perf", "ring", "perf"}
KEYS = {"attempts", "delivered", "dropped", "lost", "wall_s", "consumer_cpu_s", "events_per_cpu_s", "lag_p99_ms"}
EVENTS = 20_000


@pytest.mark.kernel
@needs_root
def test_bench_consumers_json_balances_every_path():
    result = CliRunner().invoke(app, ["bench", "consumers", "--events", str(EVENTS), "--json"])
    assert result.exit_code == 0, result.output
    # Progress goes to stderr; stdout is exactly one JSON object.
    assert "[ring] done" in result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"paths", "ratios", "notes"}
    assert set(doc["paths"]) == PATHS
    assert set(doc["ratios"]) == {"ring", "perf"}
    assert (doc["notes"]["events"], set(doc["notes"]["paths"])) == (EVENTS, PATHS)
    # A smoke run: exact counts and states only. The timings are the benchmark's output, and a busy
    # machine may make any of them arbitrarily large, so none is compared with a bound here.
    for name, p in doc["paths"].items():
        assert set(p) == KEYS, name
        assert p["attempts"] == EVENTS, (name, p)
        assert p["delivered"] + p["dropped"] + p["lost"] == p["attempts"], (name, p)
        assert p["lag_p99_ms"] is not None, (name, p)  # records arrived and were timed
        assert doc["notes"]["paths"][name]["timed_out"] is False, (name, doc["notes"]["paths"][name])
    for name in ("ring", "perf"):  # our consumers: their window's books close exactly
        n = doc["notes"]["paths"][name]
        assert (n["residual"], n["parse_errors"]) == (0, 0), (name, n)
