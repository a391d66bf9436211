"""Start-up cost: read-only commands and --help never import the kernel, lab, bench or plotting stacks.

A structural check (which modules a fresh interpreter has loaded after the command), not a timing
check: timings depend on the machine, the import list does not.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli import app

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pyroute2", "bcc", "numpy", "matplotlib")
# What --help and --version must not load either: the store and its migrations.
STORE = ("sqlalchemy", "alembic")

PROBE = """
import json, sys
from migrator.cli import app
try:
    app(sys.argv[1:], prog_name="migrator")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in %r)}), file=sys.stderr)
""" % (HEAVY + STORE,)


def loaded_after(*args: str, cwd: Path = ROOT) -> tuple[int, set[str]]:
    """(exit code, top-level heavy packages imported) of `migrator ARGS` in a fresh interpreter."""
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    doc = json.loads(p.stderr.strip().splitlines()[-1])
    return doc["code"], {m.split(".")[0] for m in doc["loaded"]}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["status", "--help"], ["list", "--help"],
                                  ["agent", "--help"], ["lab", "--help"], ["lab", "run", "--help"],
                                  ["shadow", "--help"], ["wrap", "--help"], ["bench", "--help"],
                                  ["doctor", "--help"]])
def test_help_and_version_load_neither_the_kernel_stack_nor_the_store(args):
    code, loaded = loaded_after(*args)
    assert (code, loaded) == (0, set())


def test_read_only_commands_load_no_kernel_lab_or_plotting_module(tmp_path):
    (tmp_path / "canary.toml").write_text('hosts = ["h1", "h2"]\nslices = [1, 2]\n')
    cfg = str(tmp_path / "canary.toml")
    assert CliRunner().invoke(app, ["init", cfg]).exit_code == 0
    for args in (["status", "-c", cfg], ["status", "-c", cfg, "--json"], ["list", "-c", cfg],
                 ["history", "-c", cfg], ["windows", "-c", cfg], ["what-if", "-c", cfg], ["plan", "-c", cfg]):
        code, loaded = loaded_after(*args)
        assert code == 0, args
        assert loaded & set(HEAVY) == set(), args
        assert loaded >= ({"sqlalchemy"} if args[0] != "plan" else set()), args  # it did read the database


def test_every_command_is_still_registered():
    from typer.main import get_command

    group = get_command(app)
    names = set(group.list_commands(None))
    assert names >= {"doctor", "shadow", "plan", "init", "start", "advance", "pause", "resume", "rollback", "abort",
                     "status", "list", "history", "windows", "what-if", "lab", "bench", "agent", "fault", "cflags",
                     "wrap"}
    bench = group.get_command(None, "bench")
    assert set(bench.list_commands(None)) >= {"consumers", "controller", "rollback"}
    lab = group.get_command(None, "lab")
    assert set(lab.list_commands(None)) >= {"up", "down", "status", "traffic", "run"}
