"""Drill files and `migrator fault`: every malformed request is refused before it reaches a path."""
from __future__ import annotations

import json
import logging
import math

import pytest
from typer.testing import CliRunner

from migrator.agent.drills import Drill, DrillBox, drill_path, inject, validate
from migrator.cli import app
from migrator.errors import DrillError

runner = CliRunner()


def _drop(tmp_path, host: str, body: str | bytes):
    path = drill_path(host, tmp_path)
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    return path


def test_valid_drill_is_taken_once(tmp_path):
    path = inject("mig1", "stall-ring", 2, tmp_path)
    assert path == tmp_path / "mig1.json"
    box = DrillBox("mig1", tmp_path)
    assert box.take() == Drill("mig1", "stall-ring", 2.0)
    assert box.take() is None and not path.exists()


@pytest.mark.parametrize("body", [
    "[1, 2]",                                                     # wrong shape
    "null",
    '"stall-ring"',
    '{"host": "mig1", "kind": "stall-ring"}',                     # missing seconds
    '{"host": "mig1", "kind": "stall-ring", "seconds": "abc"}',
    '{"host": "mig1", "kind": "stall-ring", "seconds": NaN}',
    '{"host": "mig1", "kind": "stall-ring", "seconds": Infinity}',
    '{"host": "mig1", "kind": "stall-ring", "seconds": -Infinity}',
    '{"host": "mig1", "kind": "stall-ring", "seconds": 0}',
    '{"host": "mig1", "kind": "stall-ring", "seconds": true}',
    '{"host": "mig1", "kind": "stall-ring", "seconds": 1e9}',
    '{"host": "mig1", "kind": "melt-cpu", "seconds": 1}',        # unknown kind
    '{"host": "mig1", "kind": ["stall-ring"], "seconds": 1}',
    '{"host": "mig2", "kind": "stall-ring", "seconds": 1}',      # another host's drill
    '{"host": "../../etc/x", "kind": "stall-ring", "seconds": 1}',
    '{"host": "mig1", "kind": "shrink-ring", "seconds": 1, "ring_bytes": 1000}',
    '{"host": "mig1", "kind": "shrink-ring", "seconds": 1, "ring_bytes": true}',
    "{not json",
    "",
    "[" * 100_000,                                                # nesting deep enough for RecursionError
    b"\xff\xfe{}",                                                # not UTF-8
])
def test_malformed_drill_file_is_refused_removed_and_logged(tmp_path, caplog, body):
    path = _drop(tmp_path, "mig1", body)
    with caplog.at_level(logging.WARNING, logger="migrator.agent"):
        assert DrillBox("mig1", tmp_path).take() is None
    assert not path.exists()
    assert "refused" in caplog.text


@pytest.mark.parametrize("host,kind,seconds,field", [
    ("../../etc/x", "stall-ring", 1, "host"),
    ("/etc/passwd", "stall-ring", 1, "host"),
    ("mig1\n", "stall-ring", 1, "host"),
    ("", "stall-ring", 1, "host"),
    (None, "stall-ring", 1, "host"),
    ("mig1", "melt-cpu", 1, "kind"),
    ("mig1", "stall-ring", math.nan, "seconds"),
    ("mig1", "stall-ring", math.inf, "seconds"),
    ("mig1", "stall-ring", "abc", "seconds"),
    ("mig1", "stall-ring", None, "seconds"),
    ("mig1", "stall-ring", -1, "seconds"),
])
def test_validate_names_the_field(host, kind, seconds, field):
    with pytest.raises(DrillError) as ei:
        validate(host, kind, seconds)
    assert ei.value.field == field


@pytest.mark.parametrize("host", ["../../etc/x", "a/b", "..", "mig1\n"])
def test_a_bad_host_never_reaches_a_path(tmp_path, host):
    with pytest.raises(DrillError):
        drill_path(host, tmp_path)
    with pytest.raises(DrillError):
        DrillBox(host, tmp_path)
    with pytest.raises(DrillError):
        inject(host, "stall-ring", 1, tmp_path / "d")
    assert not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []


# -- the CLI ------------------------------------------------------------------------------------
PLAN = 'hosts = ["h1", "h2"]\nslices = [1, 2]\n'


@pytest.fixture
def drill_dir(tmp_path, monkeypatch):
    d = tmp_path / "drills"
    monkeypatch.setattr("migrator.cli.agent.DRILL_DIR", d)
    monkeypatch.delenv("MIGRATOR_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return d


@pytest.fixture
def cfg_path(tmp_path, drill_dir):
    path = tmp_path / "canary.toml"
    path.write_text(PLAN)
    r = runner.invoke(app, ["init", str(path)])
    assert r.exit_code == 0, r.output
    return path


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_fault_queues_for_a_listed_host(cfg_path, drill_dir):
    r = runner.invoke(app, ["fault", "h2", "stall-ring", "--seconds", "3", "-c", str(cfg_path)])
    assert r.exit_code == 0, r.output
    assert json.loads((drill_dir / "h2.json").read_text())["seconds"] == 3.0


def test_fault_refuses_a_host_the_migration_does_not_list(cfg_path, drill_dir):
    r = runner.invoke(app, ["fault", "h9", "stall-ring", "-c", str(cfg_path)])
    line = _one_error(r)
    assert "h9" in line and "h1, h2" in line
    assert not drill_dir.exists()


def test_fault_uses_migrator_config(cfg_path, drill_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MIGRATOR_CONFIG", str(cfg_path))
    monkeypatch.chdir(tmp_path / "elsewhere" if (tmp_path / "elsewhere").mkdir() is None else tmp_path)
    _one_error(runner.invoke(app, ["fault", "h9", "stall-ring"]))


@pytest.mark.parametrize("args,word", [
    (["../../etc/x", "stall-ring"], "host"),
    (["h1", "melt-cpu"], "kind"),
    (["h1", "stall-ring", "--seconds", "nan"], "seconds"),
    (["h1", "stall-ring", "--seconds", "inf"], "seconds"),
    (["h1", "stall-ring", "--seconds", "0"], "seconds"),
])
def test_fault_refuses_bad_values_exit_1(cfg_path, drill_dir, args, word):
    line = _one_error(runner.invoke(app, ["fault", *args, "-c", str(cfg_path)]))
    assert word in line
    assert not drill_dir.exists()


def test_fault_without_a_database_says_so_and_checks_the_name(drill_dir, tmp_path):
    r = runner.invoke(app, ["fault", "h7", "stall-ring"])  # no ./canary.toml, no MIGRATOR_CONFIG
    assert r.exit_code == 0, r.output
    assert "no config" in r.output and (drill_dir / "h7.json").exists()
    line = _one_error(runner.invoke(app, ["fault", "../../etc/x", "stall-ring"]))
    assert "host" in line and not (tmp_path / "etc").exists()


def test_fault_with_an_unreachable_database_says_so(drill_dir, tmp_path):
    path = tmp_path / "canary.toml"
    path.write_text(PLAN)  # never initialised: the read-only open finds no database
    r = runner.invoke(app, ["fault", "h7", "stall-ring", "-c", str(path)])
    assert r.exit_code == 0, r.output
    assert "database not reachable" in r.output
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".db", ".sqlite")] == []


# -- deadlines: a drill nobody took in time lapses and never fires -------------------------------

def test_a_drill_queued_then_expired_never_fires(tmp_path, caplog):
    path = inject("mig1", "stall-ring", 2, tmp_path, expires_in=30, now=1_000.0)
    assert json.loads(path.read_text())["expires_at"] == 1_030.0
    box = DrillBox("mig1", tmp_path)
    with caplog.at_level(logging.WARNING, logger="migrator.agent"):
        assert box.take(now=1_030.5) is None  # the first poll of an agent started after the deadline
    assert not path.exists() and "lapsed" in caplog.text and "not acted out" in caplog.text
    assert box.take(now=1_031.0) is None  # gone for good


def test_a_drill_is_taken_up_to_its_deadline(tmp_path):
    inject("mig1", "stall-ring", 2, tmp_path, expires_in=30, now=1_000.0)
    assert DrillBox("mig1", tmp_path).take(now=1_030.0) == Drill("mig1", "stall-ring", 2.0)


@pytest.mark.parametrize("expires_at", [None, "soon", True, "NaN"])
def test_a_drill_without_a_deadline_is_refused(tmp_path, caplog, expires_at):
    spec = {"host": "mig1", "kind": "stall-ring", "seconds": 1}
    if expires_at is not None:
        spec["expires_at"] = expires_at
    path = _drop(tmp_path, "mig1", json.dumps(spec).replace('"NaN"', "NaN"))
    with caplog.at_level(logging.WARNING, logger="migrator.agent"):
        assert DrillBox("mig1", tmp_path).take() is None
    assert not path.exists() and "refused" in caplog.text and "expires_at" in caplog.text


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, 3601, True, "30"])
def test_inject_refuses_a_bad_deadline(tmp_path, ttl):
    with pytest.raises(DrillError) as ei:
        inject("mig1", "stall-ring", 1, tmp_path / "d", expires_in=ttl)
    assert ei.value.field == "expires_in" and not (tmp_path / "d").exists()


def test_fault_writes_the_deadline_and_warns_when_no_agent_lives(cfg_path, drill_dir):
    import time

    before = time.time()
    r = runner.invoke(app, ["fault", "h2", "stall-ring", "--expires-in", "5", "-c", str(cfg_path)])
    assert r.exit_code == 0, r.output
    assert r.stderr == ("fault: no live agent for h2 in migration 1 (its agent never reported); the drill lapses "
                        "in 5 s unless an agent started with --drills takes it\n")
    assert r.stdout == (f"fault stall-ring for 5 s queued for h2 ({drill_dir / 'h2.json'}); "
                        "lapses in 5 s if no agent takes it\n")
    spec = json.loads((drill_dir / "h2.json").read_text())
    assert spec["expires_at"] == spec["at"] + 5 and before <= spec["at"] <= time.time()


def test_fault_for_a_live_agent_does_not_warn(cfg_path, drill_dir):
    from migrator.config import load_config
    from migrator.store import api, open_store

    sf = open_store(load_config(cfg_path).database_url)
    with sf() as s, s.begin():
        api.heartbeat(s, 1, "h1")
    r = runner.invoke(app, ["fault", "h1", "stall-ring", "-c", str(cfg_path)])
    assert (r.exit_code, r.stderr) == (0, "")
    assert r.stdout.endswith("lapses in 30 s if no agent takes it\n")


@pytest.mark.parametrize("ttl", ["0", "-5", "nan", "7200"])
def test_fault_refuses_a_bad_deadline_exit_1(cfg_path, drill_dir, ttl):
    line = _one_error(runner.invoke(app, ["fault", "h1", "stall-ring", "--expires-in", ttl, "-c", str(cfg_path)]))
    assert "expires_in" in line
    assert not drill_dir.exists()
