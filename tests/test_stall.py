"""A stall says why (issue 19, item 2): whenever a migration cannot advance, the controller logs the
reason once per change, `status` shows it in the phase line, and [agents] stall_pause_windows pauses
it with that reason. Also the [source] kind = "attach" a process running its own pipeline uses."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from migrator.cli import app
from migrator.cli.views import render_status, status_document
from migrator.config import Agents, load_config
from migrator.control.controller import Controller
from migrator.control.phases import DbApplier, Phase, transition
from migrator.errors import ConfigError
from migrator.store import api, open_store
from migrator.store.models import Migration, Transition

from conftest import T0, RecordingApplier, record, window

HOSTS = ("h1", "h2", "h3")
ROOT = Path(__file__).resolve().parent.parent
LOGGER = "migrator.control.controller"


def setup(toml_file, agents: str = "", gate: str = "false", min_clean: int = 50):
    cfg = load_config(toml_file(
        f'hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = 3\n'
        f"[phases.dual_instrument]\nmin_clean_windows = {min_clean}\nmanual_gate = {gate}\n"
        f"[agents]\n{agents}\n"))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0)
    return sf, mid, Controller(sf, mid, applier=RecordingApplier(), clock=lambda: T0)


def dual_index(sf, mid, i, fp="fp1", attempts=1000, start=None):
    """Every host's perf and ring window of index i, as agents serving schema `fp` send them."""
    with sf() as s, s.begin():
        for h in HOSTS:
            for ch in ("perf", "ring"):
                record(s, mid, window(h, ch, i, attempts=attempts, start=start, extra={"schema_fingerprint": fp}))


def step(sf, ctl, now=T0 + 1000):
    with sf() as s, s.begin():
        return ctl.step(s, now)


def stall_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "cannot advance" in r.getMessage()]


def phase_of(sf, mid):
    with sf() as s:
        m = s.get(Migration, mid)
        return m.phase, m.paused_phase


def last_transition(sf, mid):
    with sf() as s:
        return s.scalars(select(Transition).where(Transition.migration_id == mid)
                         .order_by(Transition.id.desc()).limit(1)).one()


def test_fingerprint_change_mid_migration_is_logged_shown_and_pauses_after_the_configured_windows(toml_file, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sf, mid, ctl = setup(toml_file, "stall_pause_windows = 3")
    for i in range(3):  # the frozen schema: judged, clean, no stall
        dual_index(sf, mid, i)
        assert step(sf, ctl).stall is None
    assert stall_lines(caplog) == []
    results = []
    for i in range(3, 6):  # the process now serves another schema
        dual_index(sf, mid, i, fp="fp2")
        results.append(step(sf, ctl))
        if i < 5:
            assert phase_of(sf, mid) == ("DUAL_INSTRUMENT", None)
            with sf() as s:
                text = render_status(status_document(s, mid))
            phase_line = text.splitlines()[0]
            assert "STALLED: event schema changed" in phase_line
            assert "cannot advance: event schema changed since start: frozen fp1, reported fp2" in text
    assert [r.stall.cause for r in results] == ["schema"] * 3
    assert [r.stall.windows for r in results] == [1, 2, 3]
    # Logged once, naming the reason, though three rounds saw it.
    lines = stall_lines(caplog)
    assert len(lines) == 1 and "event schema changed since start: frozen fp1, reported fp2" in lines[0], lines
    # The third stalled window pauses it, with that reason.
    assert results[-1].target == Phase.PAUSED
    ctl.finish()
    assert phase_of(sf, mid) == ("PAUSED", "DUAL_INSTRUMENT")
    t = last_transition(sf, mid)
    assert t.actor == "auto" and "stalled for 3 windows" in t.reason and "reported fp2" in t.reason
    assert json.loads(t.evidence)["stall"]["cause"] == "schema"
    with sf() as s:
        text = render_status(status_document(s, mid))
    assert "paused by auto: stalled for 3 windows ([agents] stall_pause_windows = 3)" in text


def test_status_json_carries_the_stall(toml_file):
    sf, mid, ctl = setup(toml_file)
    dual_index(sf, mid, 0, fp="fp2")
    step(sf, ctl)
    with sf() as s:
        rep = status_document(s, mid)
    assert rep["stall"]["cause"] == "schema" and rep["stall"]["windows"] == 1
    assert "reported fp2" in rep["stall"]["reason"]


def test_without_a_limit_a_stall_is_logged_and_shown_but_never_pauses(toml_file, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sf, mid, ctl = setup(toml_file)
    for i in range(20):
        dual_index(sf, mid, i, fp="fp2")
        assert step(sf, ctl).target is None
    assert phase_of(sf, mid) == ("DUAL_INSTRUMENT", None)
    assert len(stall_lines(caplog)) == 1


def test_no_agent_reported_waits_names_the_hosts_and_pauses_by_time(toml_file, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sf, mid, ctl = setup(toml_file, "stall_pause_windows = 5")
    # before two windows and a second have passed, the position's first window cannot be stored yet
    assert step(sf, ctl, now=T0 + 2.9).stall is None
    res = step(sf, ctl, now=T0 + 3.1)
    assert res.stall.cause == "no_agent" and res.target is None
    assert "no agent has reported yet (h1, h2, h3)" in res.stall.reason
    assert step(sf, ctl, now=T0 + 4).target is None
    assert len(stall_lines(caplog)) == 1
    with sf() as s:
        assert "WAITING for agents" in render_status(status_document(s, mid), now=T0 + 4).splitlines()[0]
    res = step(sf, ctl, now=T0 + 5.5)  # 5 windows of 1 s since DUAL_INSTRUMENT began
    assert res.target == Phase.PAUSED
    ctl.finish()
    assert "waiting for agents" in last_transition(sf, mid).reason


def test_too_few_events_pause_after_n_no_data_windows_and_resume_starts_over(toml_file, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sf, mid, ctl = setup(toml_file, "stall_pause_windows = 4")
    dual_index(sf, mid, 0)
    assert step(sf, ctl).stall is None
    for i in range(1, 4):
        dual_index(sf, mid, i, attempts=0)
        res = step(sf, ctl)
        assert res.stall.cause == "no_data" and res.stall.windows == i and res.target is None
    assert "too few events: the last 3 windows were no-data" in res.stall.reason
    dual_index(sf, mid, 4, attempts=0)
    assert step(sf, ctl).target == Phase.PAUSED
    ctl.finish()
    assert "too few events" in last_transition(sf, mid).reason
    # Resuming starts the count over: the no-data windows before it do not pause it again at once.
    transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0 + 1001)
    dual_index(sf, mid, 5, attempts=0, start=T0 + 1001.5)
    res = step(sf, ctl, now=T0 + 1002)
    assert res.target is None and res.stall.windows == 1
    # Events again: the stall clears, and that is logged too.
    dual_index(sf, mid, 6, start=T0 + 1002.5)
    assert step(sf, ctl, now=T0 + 1003).stall is None
    assert any("can advance again (no data resolved)" in r.getMessage() for r in caplog.records)


def test_a_manual_gate_is_shown_but_never_pauses(toml_file):
    sf, mid, ctl = setup(toml_file, "stall_pause_windows = 1", gate="true", min_clean=2)
    for i in range(6):
        dual_index(sf, mid, i)
        res = step(sf, ctl)
    assert res.stall.cause == "gate" and res.target is None
    assert "waiting for `migrator advance`" in res.stall.reason
    assert phase_of(sf, mid) == ("DUAL_INSTRUMENT", None)


# -- config -----------------------------------------------------------------------------------------

def test_stall_pause_windows_default_keeps_the_plan_hash(toml_file):
    plain = load_config(toml_file('[agents]\non_lost = "rollback"\n'))
    explicit = load_config(toml_file('[agents]\non_lost = "rollback"\nstall_pause_windows = 0\n'))
    assert plain.hash == explicit.hash
    assert "stall_pause_windows" not in plain.to_dict()["agents"]
    assert load_config(toml_file("[agents]\nstall_pause_windows = 0\n")).agents == Agents()
    assert load_config(toml_file("[agents]\nstall_pause_windows = 30\n")).hash != plain.hash


def test_a_misspelt_stall_key_gets_did_you_mean(toml_file):
    with pytest.raises(ConfigError) as exc:
        load_config(toml_file("[agents]\nstall_pause_window = 3\n"))
    assert "did you mean stall_pause_windows?" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(toml_file("[agents]\nstall_pause_windows = -1\n"))
    assert "agents.stall_pause_windows" in str(exc.value)


def test_shipped_canary_toml_documents_stall_pause_windows():
    r = CliRunner().invoke(app, ["init", "--example"])
    assert r.exit_code == 0
    assert "\nstall_pause_windows = 0 " in r.stdout
    assert 'kind = "attach"' in r.stdout


# -- [source] kind = "attach" ---------------------------------------------------------------------

def test_attach_source_has_file_and_channel_and_no_sink(tmp_path):
    (tmp_path / "tool.bpf.c").write_text("// the program\n")
    (tmp_path / "canary.toml").write_text('hosts = ["h1"]\nslices = [1]\n'
                                          '[source]\nkind = "attach"\nfile = "tool.bpf.c"\nchannel = "flows"\n')
    cfg = load_config(tmp_path / "canary.toml")
    assert cfg.source.kind == "attach" and cfg.source.file == str(tmp_path / "tool.bpf.c")
    assert cfg.source.channel == "flows" and cfg.source.sink is None
    assert cfg.to_dict()["source"] == {"kind": "attach", "file": str(tmp_path / "tool.bpf.c"), "cflags": [],
                                       "channel": "flows"}
    from migrator.dataplane.source import source_hash
    assert source_hash(cfg)  # `init` records what the process will load
    (tmp_path / "canary.toml").write_text('[source]\nkind = "attach"\nfile = "tool.bpf.c"\nsink = "s:h"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "canary.toml")
    assert 'source.sink: is not used with kind = "attach"' in str(exc.value)
    (tmp_path / "canary.toml").write_text('[source]\nkind = "attach"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "canary.toml")
    assert 'source.file: is required with kind = "attach"' in str(exc.value)


def test_plan_describes_an_attach_source_and_the_agent_refuses_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prog = ROOT / "examples" / "flowlog" / "flowlog.bpf.c"
    (tmp_path / "canary.toml").write_text('hosts = ["h1"]\nslices = [1]\n'
                                          f'[source]\nkind = "attach"\nfile = "{prog}"\nchannel = "events"\n')
    r = CliRunner().invoke(app, ["plan", "--json"])
    assert r.exit_code == 0, r.output
    src = json.loads(r.stdout)["source"]
    assert src["kind"] == "attach" and src["runs_through"] == "migrator.attach" and "sink_file" not in src
    # As root with bcc the program compiles once, as for kind = "bcc", and gives what `start` freezes.
    assert "skipped" in src["compile"] or src["compile"]["schema_fingerprint"]
    r = CliRunner().invoke(app, ["plan"])
    assert "served by your own process through migrator.attach (no agent)" in r.stdout
    from migrator.agent.loop import Agent
    from migrator.errors import MigratorError
    cfg = load_config(tmp_path / "canary.toml")
    with pytest.raises(MigratorError, match="your own process serves the channel through migrator.attach"):
        Agent(None, cfg, "h1", 1)


def test_start_before_init_refuses_without_creating_a_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "canary.toml").write_text('hosts = ["h1"]\nslices = [1]\n')
    r = CliRunner().invoke(app, ["start", "--no-run"])
    assert r.exit_code != 0
    assert "no database at" in r.output and "migrator init" in r.output, r.output
    assert not (tmp_path / "migrator.db").exists()


def test_the_controller_loop_logs_each_transition(toml_file, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sf, mid, ctl = setup(toml_file, min_clean=2)
    for i in range(2):
        dual_index(sf, mid, i)
    from migrator.control.controller import run_controller
    import threading
    stop = threading.Event()
    t = threading.Thread(target=run_controller, args=(sf, mid), kwargs={"applier": RecordingApplier(), "stop": stop,
                                                                         "poll_interval": 0.01})
    t.start()
    try:
        import time
        deadline = time.time() + 10
        while phase_of(sf, mid)[0] != "SHADOW" and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert any("DUAL_INSTRUMENT -> SHADOW (auto: 2 clean windows" in r.getMessage() for r in caplog.records)
