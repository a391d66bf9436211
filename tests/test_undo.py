"""`migrator undo`: the one way out of COMPLETE, every host back on PERF, audited like any move."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from migrator.cli import app
from migrator.store import open_store
from migrator.store.models import Host, Migration, Transition

runner = CliRunner()

PLAN = ('hosts = ["h1", "h2"]\nslices = [1, 2]\n'
        "[phases.dual_instrument]\nmin_clean_windows = 0\n"
        "[phases.shadow]\nmin_clean_windows = 0\n"
        "[phases.canary]\nmin_clean_windows = 0\n")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_undo_from_complete_puts_every_host_on_perf_with_a_transition_row(tmp_path):
    p = tmp_path / "canary.toml"
    p.write_text(PLAN)
    assert run("init", p).exit_code == 0
    r = run("undo", "-c", p)  # PLANNED: nothing to undo
    assert (r.exit_code, r.stdout, r.stderr) == (
        1, "", "Error: cannot go from PLANNED to undo: undo only leaves COMPLETE; from PLANNED use `migrator rollback`\n")
    assert run("start", "-c", p, "--no-run", "--schema-fingerprint", "fp1").exit_code == 0
    for _ in range(4):  # SHADOW, CANARY 1/2, CANARY 2/2, COMPLETE
        r = run("advance", "-c", p)
        assert r.exit_code == 0, r.output
    assert r.stdout == "migration 1: CANARY slice 2/2 -> COMPLETE (transition 5, operator advance)\n"
    sf = open_store(f"sqlite:///{tmp_path / 'migrator.db'}")
    with sf() as s:
        assert [h.desired_mode for h in s.query(Host).order_by(Host.position)] == ["RING", "RING"]

    r = run("rollback", "-c", p)  # COMPLETE is final for rollback: it names undo
    assert (r.exit_code, r.stdout, r.stderr) == (
        1, "", "Error: cannot go from COMPLETE to ROLLED_BACK: COMPLETE is final; "
               "`migrator undo` puts every host back on PERF\n")

    r = run("undo", "-c", p, "--reason", "ring regressed after rollout", "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)
    assert (t["from"], t["to"], t["actor"], t["reason"], t["label"]) == (
        "COMPLETE", "ROLLED_BACK", "manual", "ring regressed after rollout", "COMPLETE -> ROLLED_BACK")
    with sf() as s:
        row = s.get(Transition, t["id"])
        assert (row.from_phase, row.to_phase, row.actor, row.reason, row.status) == (
            "COMPLETE", "ROLLED_BACK", "manual", "ring regressed after rollout", "confirmed")
        assert json.loads(row.modes) == {"h1": "PERF", "h2": "PERF"}
        assert [h.desired_mode for h in s.query(Host).order_by(Host.position)] == ["PERF", "PERF"]
        m = s.get(Migration, 1)
        assert (m.phase, m.pending_transition_id) == ("ROLLED_BACK", None)
    sf.dispose()

    r = run("undo", "-c", p)  # once: ROLLED_BACK is final
    assert (r.exit_code, r.stderr) == (1, "Error: cannot go from ROLLED_BACK to undo: ROLLED_BACK is final\n")
    r = run("history", "-c", p, "--json")
    assert [(h["from"], h["to"], h["actor"]) for h in json.loads(r.stdout)][-1] == ("COMPLETE", "ROLLED_BACK", "manual")
