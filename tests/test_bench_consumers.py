"""`migrator bench consumers` on the real kernel: both streams, every path, exact shape, every event accounted."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app
from migrator.cli.bench import render_table

PATHS = {
    "fixed": {"bcc-ring", "bcc-perf", "ring", "perf", "callback", "batch", "c"},
    "mixed": {"bcc-ring", "bcc-perf", "callback", "batch", "c"},
}
RATIOS = {
    "fixed": {"batch/bcc-ring", "callback/bcc-perf", "ring/bcc-ring", "perf/bcc-perf", "batch/c"},
    "mixed": {"batch/bcc-ring", "callback/bcc-perf", "batch/c"},
}
TARGETS = {
    "fixed": {"batch >= 10 M events/CPU-s", "callback/bcc-perf >= 1", "batch/c >= 0.3"},
    "mixed": {"batch >= 3 M events/CPU-s", "callback/bcc-perf >= 1", "batch/c >= 0.3"},
}
KEYS = {"attempts", "delivered", "dropped", "lost", "wall_s", "consumer_cpu_s", "events_per_cpu_s",
        "process_cpu_s", "events_per_process_cpu_s", "lag_p99_ms"}
EVENTS = 20_000


@pytest.mark.kernel
@needs_root
def test_bench_consumers_json_balances_every_path_of_both_streams():
    result = CliRunner().invoke(app, ["bench", "consumers", "--events", str(EVENTS), "--json"])
    assert result.exit_code == 0, result.output
    # Progress goes to stderr; stdout is exactly one JSON object.
    for stream, paths in PATHS.items():
        for name in paths:
            assert f"[{stream}/{name}] done" in result.stderr, (stream, name)
    doc = json.loads(result.stdout)
    assert set(doc) == {"streams", "targets", "notes"}
    assert set(doc["streams"]) == set(PATHS)
    assert (doc["notes"]["events"], doc["notes"]["streams"]) == (EVENTS, ["fixed", "mixed"])
    assert set(doc["targets"]) == {f"{s}: {t}" for s, ts in TARGETS.items() for t in ts}
    # A smoke run: exact counts and states only. The timings are the benchmark's output, and a busy
    # machine may make any of them arbitrarily large, so none is compared with a bound here.
    for stream, res in doc["streams"].items():
        assert set(res) == {"paths", "ratios", "process_ratios", "targets", "notes"}, stream
        assert set(res["process_ratios"]) == RATIOS[stream], stream
        assert set(res["paths"]) == PATHS[stream] == set(res["notes"]), stream
        assert set(res["ratios"]) == RATIOS[stream], stream
        assert set(res["targets"]) == TARGETS[stream], stream
        assert all(isinstance(ok, bool) for ok in res["targets"].values()), stream
        for name, p in res["paths"].items():
            n = res["notes"][name]
            where = (stream, name, p, n)
            assert set(p) == KEYS, where
            assert p["attempts"] == EVENTS, where
            assert p["delivered"] + p["dropped"] + p["lost"] == p["attempts"], where
            assert p["delivered"] > 0, where
            if name != "c":  # the C reference counts records and bytes, no lag
                assert p["lag_p99_ms"] is not None, where  # records arrived and were timed
            assert n["timed_out"] is False, where
            assert n.get("payload_errors", 0) == 0, where  # what the callbacks read is what the program wrote
        # The libbpf reference consumer counted every record the ring accepted, in its own process.
        c = res["notes"]["c"]["c_report"]
        assert c["ring_records"] == res["paths"]["c"]["delivered"] == EVENTS - res["paths"]["c"]["dropped"], stream
        assert res["notes"]["c"]["wakeup"] == res["notes"]["batch"]["wakeup"] == res["notes"]["bcc-ring"]["wakeup"]
        for name in PATHS[stream] - {"bcc-ring", "bcc-perf", "c"}:  # the library's books close exactly
            n = res["notes"][name]
            assert (n["residual"], n["parse_errors"]) == (0, 0), (stream, name, n)
        for name in ("callback", "batch"):  # the operator's code saw exactly what the feed acted on
            assert res["notes"][name]["acted"] == res["paths"][name]["delivered"], (stream, name)
    text = render_table(doc)
    assert "stream fixed" in text and "stream mixed" in text and "batch/bcc-ring" in text


@pytest.mark.kernel
@needs_root
def test_bench_consumers_one_stream():
    result = CliRunner().invoke(app, ["bench", "consumers", "--events", "5000", "--stream", "mixed", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["streams"]) == {"mixed"} and doc["notes"]["streams"] == ["mixed"]
    for name, p in doc["streams"]["mixed"]["paths"].items():
        assert p["delivered"] + p["dropped"] + p["lost"] == p["attempts"] == 5000, (name, p)


def test_bench_consumers_rejects_an_unknown_stream():
    result = CliRunner().invoke(app, ["bench", "consumers", "--stream", "wide"])
    assert result.exit_code == 2
