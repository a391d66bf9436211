"""`migrator shadow` through the CLI: one JSON object per window and channel, then a summary."""
import json

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app

runner = CliRunner()


@pytest.mark.kernel
@needs_root
def test_shadow_json_windows_balance():
    res = runner.invoke(app, ["shadow", "--seconds", "2", "--window", "500ms", "--rate", "50000", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    windows = [x for x in lines if x["type"] == "window"]
    summary = lines[-1]
    assert summary["type"] == "summary"
    # --seconds means seconds: the events stop at the deadline, so 2 s of 500 ms windows are 4 windows
    assert summary["windows"] == 4 and len(windows) == 8
    for i in range(4):  # DUAL: both channels were offered the same events in every window
        perf, ring = (next(w for w in windows if w["index"] == i and w["channel"] == ch) for ch in ("perf", "ring"))
        assert perf["attempts"] == ring["attempts"] > 0
    for w in windows:  # every window's own books balance
        assert w["attempts"] == w["delivered"] + w["dropped"] + w["lost"] + w["in_flight"], w
        assert (w["residual"], w["settled"]) == (0, True), w
    for ch in ("perf", "ring"):
        t = summary["channels"][ch]
        assert 0 < t["attempts"] <= 100_000  # at most rate * seconds: a slow generator gets no extra time
        assert t["delivered"] + t["dropped_full"] + t["dropped_other"] + t["lost"] == t["attempts"]
        assert (t["residual"], t["unbalanced_windows"], t["parse_errors"]) == (0, 0, 0)
        assert sum(w["attempts"] for w in windows if w["channel"] == ch) == t["attempts"]


def test_shadow_rejects_a_bad_window():
    res = runner.invoke(app, ["shadow", "--window", "fast"])
    assert res.exit_code == 2  # a usage error, like every bad option value
    assert "Invalid value for '--window'" in res.stderr
    assert "'fast' is not a duration" in res.stderr


def test_shadow_rejects_an_unknown_probe():
    res = runner.invoke(app, ["shadow", "--probe", "kprobe", "--seconds", "1"])
    assert res.exit_code == 2
    assert "Invalid value for '--probe'" in res.stderr
    assert "'kprobe' is not one of" in res.stderr
