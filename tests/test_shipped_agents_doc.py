"""[agents] is documented where operators start: the shipped canary.toml (`init --example`) and the
flowlog example, with the defaults the loader uses."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from migrator.cli import app
from migrator.config import Agents, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_init_example_documents_agents():
    r = CliRunner().invoke(app, ["init", "--example"])
    assert r.exit_code == 0
    assert '\n[agents]\nlost_after_windows = 5\non_lost = "pause"' in r.stdout
    assert "an agent restart that takes longer than 5 s pauses the" in r.stdout


def test_flowlog_example_sets_the_default_agents():
    text = (ROOT / "examples" / "flowlog" / "canary.toml").read_text()
    assert "[agents]" in text
    assert load_config(ROOT / "examples" / "flowlog" / "canary.toml").agents == Agents()
