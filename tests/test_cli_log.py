"""--log-format json|text and --log-level: one setup (cli/_log.py), JSON lines with their extra fields."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.cli._log import FORMAT_ENV, LEVEL_ENV, setup_logging

from kernel_util import needs_root

ROOT = Path(__file__).resolve().parent.parent
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def clean_logging(monkeypatch):
    """Restore the root logger and the exported MIGRATOR_LOG_* variables after the test."""
    monkeypatch.setenv(FORMAT_ENV, "text")
    monkeypatch.setenv(LEVEL_ENV, "INFO")
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    yield
    root.handlers[:] = before[0]
    root.setLevel(before[1])


def test_json_lines_carry_ts_level_logger_msg_and_extra_fields(clean_logging):
    out = io.StringIO()
    setup_logging("json", "info", stream=out)
    log = logging.getLogger("migrator.agent")
    log.debug("not at INFO")
    log.warning("%s: database unreachable: %s", "h1", "refused", extra={"host": "h1", "migration_id": 7})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert TS.fullmatch(first.pop("ts"))
    assert first == {"level": "WARNING", "logger": "migrator.agent", "msg": "h1: database unreachable: refused",
                     "host": "h1", "migration_id": 7}
    assert list(json.loads(out.getvalue().splitlines()[0])) == ["ts", "level", "logger", "msg", "host", "migration_id"]
    assert (second["level"], second["msg"]) == ("ERROR", "failed")
    assert second["exc"].startswith("Traceback (most recent call last):") and second["exc"].endswith("RuntimeError: boom")
    # exported for the processes a command starts (the lab's agents)
    assert (os.environ[FORMAT_ENV], os.environ[LEVEL_ENV]) == ("json", "INFO")


def test_text_format_and_a_second_setup_replaces_the_first(clean_logging):
    first, out = io.StringIO(), io.StringIO()
    setup_logging("json", "DEBUG", stream=first)
    setup_logging("text", "WARNING", stream=out)
    log = logging.getLogger("migrator.control.controller")
    log.info("quiet")
    log.warning("database back after %.1f s", 2.0)
    assert first.getvalue() == ""
    line, = out.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING migrator.control.controller "
                        r"database back after 2.0 s", line)
    assert sum(1 for h in logging.getLogger().handlers if getattr(h, "_migrator", False)) == 1


@pytest.mark.parametrize("cmd", [["agent", "--host", "h1"], ["start"], ["lab", "run"], ["shadow"], ["wrap"]])
def test_bad_log_options_are_usage_errors(cmd, clean_logging):
    r = CliRunner().invoke(app, [*cmd, "--log-level", "LOUD", "--", "true"] if cmd == ["wrap"] else
                           [*cmd, "--log-level", "LOUD"])
    assert r.exit_code == 2 and "got 'LOUD'" in r.stderr and "--log-level" in r.stderr
    r = CliRunner().invoke(app, [*cmd, "--log-format", "yaml"])
    assert r.exit_code == 2 and "'yaml'" in r.stderr and "--log-format" in r.stderr


def test_long_running_commands_offer_the_log_options():
    from typer.main import get_command

    group = get_command(app)
    cmds = {"agent": group.get_command(None, "agent"), "shadow": group.get_command(None, "shadow"),
            "wrap": group.get_command(None, "wrap"), "start": group.get_command(None, "start"),
            "lab run": group.get_command(None, "lab").get_command(None, "run")}
    for name, cmd in cmds.items():
        opts = {o for p in cmd.params for o in p.opts}
        assert {"--log-format", "--log-level"} <= opts, name


@pytest.mark.kernel
@needs_root
def test_agent_logs_json_lines(started):
    """A real agent (synthetic probe, DUAL) run with --log-format json: every stderr line is a JSON document."""
    cfg, sf, mid = started
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(FORMAT_ENV, None)
    p = subprocess.run([sys.executable, "-m", "migrator", "agent", "--host", "h1", "-c", str(cfg.path),
                        "--seconds", "1.5", "--log-format", "json"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    docs = [json.loads(line) for line in p.stderr.splitlines()]
    last = docs[-1]
    assert TS.fullmatch(last.pop("ts"))
    assert last == {"level": "INFO", "logger": "migrator.agent", "msg": "agent h1: " + last["msg"][len("agent h1: "):],
                    "host": "h1", "migration_id": mid}
    assert all(set(d) >= {"level", "logger", "msg"} for d in docs)
