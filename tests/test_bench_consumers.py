"""`migrator bench consumers` on the real kernel: four paths, exact shape, every event accounted."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from migrator.cli import app

PATHS = {"bcc-ring", "bcc-perf", "ring", "perf"}
KEYS = {"attempts", "delivered", "dropped", "lost", "wall_s", "consumer_cpu_s", "events_per_cpu_s", "lag_p99_ms"}
EVENTS = 20_000


@pytest.mark.kernel
def test_bench_consumers_json_balances_every_path():
    result = CliRunner().invoke(app, ["bench", "consumers", "--events", str(EVENTS), "--json"])
    assert result.exit_code == 0, result.output
    # Progress goes to stderr; stdout is exactly one JSON object.
    assert "[ring] done" in result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) - {"notes"} == {"paths", "ratios"}
    assert set(doc["paths"]) == PATHS
    assert set(doc["ratios"]) == {"ring", "perf"}
    for name, p in doc["paths"].items():
        assert set(p) == KEYS, name
        assert p["attempts"] == EVENTS, (name, p)
        assert p["delivered"] + p["dropped"] + p["lost"] == p["attempts"], (name, p)
        assert p["wall_s"] > 0 and p["consumer_cpu_s"] > 0, (name, p)
        assert p["events_per_cpu_s"] > 0 and p["lag_p99_ms"] is not None, (name, p)
    assert doc["ratios"]["ring"] > 0 and doc["ratios"]["perf"] > 0
