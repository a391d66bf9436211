"""[agents] lost_after_windows / on_lost: a judged host silent too long pauses or rolls back,
with exact transitions through a real SQLite store (helpers from test_controller)."""
from __future__ import annotations

import json

import pytest

from conftest import T0
from migrator.config import load_config
from migrator.control.phases import Phase
from migrator.errors import ConfigError
from migrator.store import api
from migrator.store.models import Migration, Transition
from test_controller import CANARY1, setup, step

LAST = "1970-01-12 13:46:45.000 UTC"  # T0 + 5


def beat(sf, mid, host, at):
    with sf() as s, s.begin():
        api.heartbeat(s, mid, host, now=at)


def test_judged_host_silent_for_the_limit_pauses_with_host_and_last_report(toml_file):
    sf, mid, ctl = setup(toml_file, CANARY1)
    beat(sf, mid, "h1", T0 + 5)
    beat(sf, mid, "h2", T0 + 5)
    assert step(sf, ctl, now=T0 + 10).transition_id is None  # exactly 5 windows: not yet
    res = step(sf, ctl, now=T0 + 10.5)
    assert res.target == "PAUSED"
    with sf() as s:
        t = s.get(Transition, res.transition_id)
        assert (t.status, t.actor, t.from_phase, t.from_slice, t.to_phase) == ("intent", "auto", "CANARY", 1, "PAUSED")
        assert t.reason == f"agent h1 lost: no report for 5 windows (5 s); last report {LAST} (in CANARY slice 1/2)"
        assert json.loads(t.evidence) == {"lost": {"h1": T0 + 5}}
        assert json.loads(t.modes) == {}
    ctl.finish()
    with sf() as s:
        m = s.get(Migration, mid)
        assert (m.phase, m.paused_phase, m.paused_slice) == ("PAUSED", "CANARY", 1)
    assert step(sf, ctl, now=T0 + 20).transition_id is None  # already paused: no second pause
    with sf() as s:
        assert [(h["from"], h["to"]) for h in api.history(s, mid)][-1] == ("CANARY", "PAUSED")
        assert len(api.history(s, mid)) == 4


def test_on_lost_rollback_rolls_back_to_perf(toml_file):
    sf, mid, ctl = setup(toml_file, CANARY1, '[agents]\nlost_after_windows = 2\non_lost = "rollback"')
    beat(sf, mid, "h1", T0 + 5)
    assert step(sf, ctl, now=T0 + 7).transition_id is None
    res = step(sf, ctl, now=T0 + 7.25)
    assert res.target == "ROLLED_BACK"
    with sf() as s:
        t = s.get(Transition, res.transition_id)
        assert t.reason == f"agent h1 lost: no report for 2 windows (2 s); last report {LAST} (in CANARY slice 1/2)"
        assert json.loads(t.modes) == {"h1": "PERF", "h2": "PERF", "h3": "PERF"}
    ctl.finish()
    with sf() as s:
        assert s.get(Migration, mid).phase == "ROLLED_BACK"


def test_on_lost_rollback_also_from_paused(toml_file):
    from migrator.control.phases import DbApplier, transition

    sf, mid, ctl = setup(toml_file, CANARY1, '[agents]\non_lost = "rollback"')
    transition(sf, mid, Phase.PAUSED, applier=DbApplier(), clock=lambda: T0)
    beat(sf, mid, "h1", T0 + 5)
    res = step(sf, ctl, now=T0 + 11)
    assert res.target == "ROLLED_BACK"
    with sf() as s:
        assert s.get(Transition, res.transition_id).from_phase == "PAUSED"


def test_unjudged_or_never_seen_or_live_hosts_do_not_trigger(toml_file):
    sf, mid, ctl = setup(toml_file, CANARY1)
    beat(sf, mid, "h2", T0)  # a baseline host (not judged in CANARY slice 1), silent
    beat(sf, mid, "h3", T0)
    assert step(sf, ctl, now=T0 + 100).transition_id is None  # h1 never reported: no-data handles it
    beat(sf, mid, "h1", T0 + 99)
    assert step(sf, ctl, now=T0 + 100).transition_id is None
    with sf() as s:
        assert s.get(Migration, mid).phase == "CANARY"


def test_every_host_is_judged_in_dual_instrument(toml_file):
    sf, mid, ctl = setup(toml_file, [(Phase.DUAL_INSTRUMENT, 0)])
    for h in ("h1", "h2", "h3"):
        beat(sf, mid, h, T0 + 5)
    beat(sf, mid, "h1", T0 + 9)
    res = step(sf, ctl, now=T0 + 10.5)
    with sf() as s:
        assert s.get(Transition, res.transition_id).reason == (
            f"agent h2 lost: no report for 5 windows (5 s); last report {LAST}; "
            f"agent h3 lost: no report for 5 windows (5 s); last report {LAST} (in DUAL_INSTRUMENT)")


def test_heartbeat_with_mode_updates_applied_mode_only_on_change(toml_file):
    sf, mid, _ = setup(toml_file, CANARY1)
    with sf() as s, s.begin():
        api.report_applied(s, mid, "h1", "RING", now=T0 + 1)
        api.heartbeat(s, mid, "h1", now=T0 + 2, mode="RING")
    with sf() as s:
        h = api.hosts(s, mid)[0]
        assert (h["applied_mode"], h["applied_at"], h["last_heartbeat"]) == ("RING", T0 + 1, T0 + 2)
    with sf() as s, s.begin():
        api.heartbeat(s, mid, "h1", now=T0 + 3, mode="PERF")  # a restarted agent's new program
    with sf() as s:
        h = api.hosts(s, mid)[0]
        assert (h["applied_mode"], h["applied_at"], h["last_heartbeat"]) == ("PERF", T0 + 3, T0 + 3)


def test_agents_config_defaults_and_validation(toml_file):
    cfg = load_config(toml_file('hosts = ["h1"]\nslices = [1]\n'))
    assert (cfg.agents.lost_after_windows, cfg.agents.on_lost) == (5, "pause")
    assert "agents" not in cfg.to_dict()  # default: old plans keep their hash
    cfg = load_config(toml_file('hosts = ["h1"]\nslices = [1]\n[agents]\nlost_after_windows = 1\non_lost = "rollback"\n'))
    assert (cfg.agents.lost_after_windows, cfg.agents.on_lost) == (1, "rollback")
    for body, field in (("lost_after_windows = 0", "agents.lost_after_windows"),
                        ('lost_after_windows = "5"', "agents.lost_after_windows"),
                        ('on_lost = "stop"', "agents.on_lost"), ("other = 1", "agents.other")):
        with pytest.raises(ConfigError) as exc:
            load_config(toml_file(f'hosts = ["h1"]\nslices = [1]\n[agents]\n{body}\n'))
        assert field in str(exc.value)


def test_lab_records_paused_when_an_agent_dies(toml_file):
    from migrator.tools.lab.run import pause_for_dead_agents

    sf, mid, _ = setup(toml_file, CANARY1)
    assert pause_for_dead_agents(sf, mid, ["h1"]) is not None
    with sf() as s:
        last = api.history(s, mid)[-1]
        assert (last["from"], last["to"], last["reason"], last["status"]) == ("CANARY", "PAUSED", "agent h1 died", "confirmed")
    assert pause_for_dead_agents(sf, mid, ["h1"]) is None  # already paused: nothing more to record
