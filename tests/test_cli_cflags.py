"""`migrator cflags`: the flags that find migrator.h, its knobs, and usage errors."""
import json

from typer.testing import CliRunner

from migrator.cli import app
from migrator.shared.resources import bpf_dir

runner = CliRunner()


def test_cflags_point_at_the_shipped_header():
    res = runner.invoke(app, ["cflags"])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"-I{bpf_dir()}"
    assert (bpf_dir() / "migrator.h").is_file()


def test_cflags_knobs_and_json():
    res = runner.invoke(app, ["cflags", "--json", "--max-payload", "1024", "--ring-wakeup", "no_wakeup"])
    assert res.exit_code == 0
    assert json.loads(res.stdout) == [f"-I{bpf_dir()}", "-DMIGRATOR_MAX_PAYLOAD=1024", "-DMIGRATOR_RING_WAKEUP=1"]


def test_cflags_bad_knob_is_a_usage_error():
    res = runner.invoke(app, ["cflags", "--max-payload", "3"])
    assert res.exit_code == 2
    assert "max_payload: 3 is not a power of two" in res.stderr
