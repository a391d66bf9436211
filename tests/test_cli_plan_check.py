"""Every mover checks the plan: advance, pause and resume refuse a canary.toml changed since `init`
(as `start` does); rollback and abort go ahead with a warning; leaving PLANNED by `advance` freezes
the schema fingerprint as `start` does. Through typer's CliRunner: exact exit codes and stderr."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.config import load_config
from migrator.control.moves import default_fingerprint

runner = CliRunner()

GOOD = ('hosts = ["h1", "h2"]\nslices = [1, 2]\nrollback_after = 2\n'
        "[phases.dual_instrument]\nmin_clean_windows = 0\n"
        "[phases.shadow]\nmin_clean_windows = 2\n")
EDITED = GOOD.replace("rollback_after = 2", "rollback_after = 5")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def cfg_path(tmp_path, backend):
    p = tmp_path / "canary.toml"
    p.write_text(GOOD)
    assert run("init", p).exit_code == 0
    return p


def changed(cfg_path) -> str:
    """Edit canary.toml after `init`; returns the refusal `start` prints for it (without 'Error: ')."""
    recorded = load_config(cfg_path).hash
    cfg_path.write_text(EDITED)
    now = load_config(cfg_path).hash
    return (f"{cfg_path} changed since migration 1 was initialised (hash {now[:12]}, recorded {recorded[:12]}); "
            "revert it, or abort and `migrator init` again")


def state(cfg_path) -> dict:
    r = run("status", "-c", cfg_path, "--json")
    return json.loads(r.stdout)


def history(cfg_path) -> list[tuple[str, str]]:
    return [(h["from"], h["to"]) for h in json.loads(run("history", "-c", cfg_path, "--json").stdout)]


def test_advance_from_planned_refuses_a_changed_plan(cfg_path):
    msg = changed(cfg_path)
    r = run("start", "-c", cfg_path, "--no-run")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {msg}\n")
    r = run("advance", "-c", cfg_path)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {msg}\n")
    st = state(cfg_path)
    assert (st["phase"], st["schema_fingerprint"]) == ("PLANNED", None)
    assert history(cfg_path) == []


def test_advance_from_planned_freezes_the_fingerprint(cfg_path):
    r = run("advance", "-c", cfg_path)
    assert (r.exit_code, r.stderr) == (0, "")
    assert r.stdout == "migration 1: PLANNED -> DUAL_INSTRUMENT (transition 1, operator advance)\n"
    st = state(cfg_path)
    assert (st["phase"], st["schema_fingerprint"]) == ("DUAL_INSTRUMENT", default_fingerprint())
    assert [h["desired_mode"] for h in st["hosts"]] == ["DUAL", "DUAL"]


@pytest.mark.parametrize("op", ["advance", "pause", "resume"])
def test_movers_refuse_a_changed_plan(cfg_path, op):
    assert run("start", "-c", cfg_path, "--no-run", "--schema-fingerprint", "fp1").exit_code == 0
    if op == "resume":
        assert run("pause", "-c", cfg_path).exit_code == 0
    before = history(cfg_path)
    msg = changed(cfg_path)
    r = run(op, "-c", cfg_path)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {msg}\n")
    assert history(cfg_path) == before
    assert state(cfg_path)["phase"] == ("PAUSED" if op == "resume" else "DUAL_INSTRUMENT")


@pytest.mark.parametrize("op,final", [("rollback", "ROLLED_BACK"), ("abort", "ABORTED")])
def test_stopping_goes_ahead_with_a_warning(cfg_path, op, final):
    assert run("start", "-c", cfg_path, "--no-run", "--schema-fingerprint", "fp1").exit_code == 0
    msg = changed(cfg_path)
    r = run(op, "-c", cfg_path, "--reason", "stop it")
    assert r.exit_code == 0, r.output
    assert r.stderr == f"Warning: {msg}; {op} goes ahead anyway (stopping is always allowed)\n"
    assert r.stdout == f"migration 1: DUAL_INSTRUMENT -> {final} (transition 2, stop it)\n"
    st = state(cfg_path)
    assert st["phase"] == final and [h["desired_mode"] for h in st["hosts"]] == ["PERF", "PERF"]


def test_abort_from_planned_with_a_changed_plan_warns(cfg_path):
    msg = changed(cfg_path)
    r = run("abort", "-c", cfg_path)
    assert (r.exit_code, r.stderr) == (0, f"Warning: {msg}; abort goes ahead anyway (stopping is always allowed)\n")
    assert r.stdout == "migration 1: PLANNED -> ABORTED (transition 1, operator abort)\n"


def test_unchanged_plan_moves_without_a_warning(cfg_path):
    assert run("start", "-c", cfg_path, "--no-run", "--schema-fingerprint", "fp1").exit_code == 0
    for op, out in [("pause", "DUAL_INSTRUMENT -> PAUSED (transition 2"), ("resume", "PAUSED -> DUAL_INSTRUMENT (transition 3"),
                    ("rollback", "DUAL_INSTRUMENT -> ROLLED_BACK (transition 4")]:
        r = run(op, "-c", cfg_path)
        assert (r.exit_code, r.stderr) == (0, ""), r.output
        assert r.stdout.startswith(f"migration 1: {out}")
