"""A host that protects itself (agent/selfprotect.py): the agent applies the rollback rule to its own
ring windows, puts its mode map on PERF within 5 ms of the deciding window's close with or
without the database, and the controller turns the host's report into ONE rollback transition."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from conftest import T0, window
from kernel_util import needs_root
from migrator.agent.selfprotect import SelfProtect
from migrator.config import load_config
from migrator.control.controller import Controller, run_controller
from migrator.control.phases import DbApplier, Phase, transition
from migrator.control.policy import BREACH, PASS, judge_host
from migrator.store import api, open_store
from migrator.store.models import Transition, Window

N = 3
PLAN = f"""
hosts = ["h1"]
slices = [1]
window_seconds = 0.5
rollback_after = {N}
[probe]
name = "synthetic"
rate = 4000
"""


def ring(index: int, *, lag: float, mode: str = "RING", attempts: int = 1000) -> object:
    return window("h1", "ring", index, mode=mode, lag=lag, attempts=attempts)


# -- the rule, on window records -------------------------------------------------------------------

def test_fires_on_the_nth_breach_in_a_row_and_not_before(config):
    g = SelfProtect.from_config("h1", config)  # rollback_after 3, max_lag_p99_ms 250
    assert [g.observe(ring(i, lag=900.0), "CANARY") for i in range(2)] == [None, None]
    assert g.observe(ring(2, lag=1.0), "CANARY") is None  # N-1 breaches, then a pass: nothing
    assert [g.observe(ring(i, lag=900.0), "CANARY") is None for i in (3, 4)] == [True, True]
    p = g.observe(ring(5, lag=900.0), "CANARY")
    assert (p.indexes, p.rules, p.rollback_after) == ([3, 4, 5], ["max_lag_p99_ms"] * 3, 3)
    # the host knows no first index here: its reason names no window (a raw index names none for people)
    assert p.reason == ("h1 protected itself: 3 consecutive breaching ring windows (rollback_after 3); "
                        "last: h1: max_lag_p99_ms")
    assert g.held is p and g.observe(ring(6, lag=900.0), "CANARY") is None  # held: fires once


def test_the_reason_names_windows_as_every_view_does(config):
    """With the migration's first window index (the link's Desired), the host names its windows `#n`."""
    desired = SimpleNamespace(phase="CANARY", phase_since=None, first_index=1796418100)
    g = SelfProtect.from_config("h1", config, position=lambda: desired)
    base = 1796418100
    p = [g.observe(ring(base + i, lag=900.0), "CANARY") for i in (13, 14, 16)][-1]
    assert p.names == ["#14", "#15", "#17"]
    assert p.reason == ("h1 protected itself: 3 consecutive breaching ring windows (#14 #15 #17, rollback_after 3); "
                        "last: h1: max_lag_p99_ms")
    assert str(base) not in p.reason and p.as_dict()["names"] == p.names


def test_only_ring_windows_count_and_no_data_follows_the_plan(config):
    g = SelfProtect.from_config("h1", config)
    g.observe(ring(0, lag=900.0), "CANARY")
    g.observe(ring(1, lag=900.0, mode="DUAL"), "CANARY")  # not acting on ring: the streak restarts
    g.observe(ring(2, lag=900.0), "CANARY")
    assert g.observe(ring(3, lag=900.0, attempts=0), "CANARY") is None  # no-data, no_data = "hold"
    assert g.state.streak == 1
    assert g.observe(ring(4, lag=900.0), "CANARY") is None
    assert g.observe(ring(5, lag=900.0), "CANARY").indexes == [2, 4, 5]  # hold: no-data skipped, not counted
    g2 = SelfProtect.from_config("h1", config)
    assert [g2.observe(ring(i, lag=900.0), "COMPLETE") for i in range(4)] == [None] * 4  # final: disarmed


def test_the_hold_lasts_until_the_migration_moves_on(config):
    g = SelfProtect.from_config("h1", config)
    p = [g.observe(ring(i, lag=900.0), "CANARY") for i in range(3)][-1]
    assert g.holding("CANARY", p.at - 5) and g.holding(None, None)  # same transition; database unknown
    assert not g.holding("PAUSED", p.at + 1) and g.held is None  # an operator's move since: released
    g.held = p
    assert not g.holding("ROLLED_BACK", None)


# -- the controller, on real rows ------------------------------------------------------------------

def in_canary(sf, cfg):
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp", now=T0).id
    for tgt, sl in [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0), (Phase.CANARY, 1)]:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier(), clock=lambda: T0)
    return mid


def host_report(cfg, sf, mid, indexes, lag=900.0, baseline=True):
    """What h1's link writes when it protected itself: its ring windows, then its reason, one transaction."""
    g = SelfProtect.from_config("h1", cfg)
    ws = [window("h1", "ring", i, mode="RING", lag=lag) for i in indexes]
    p = [g.observe(w, "CANARY") for w in ws][-1]
    with sf() as s, s.begin():
        api.record_windows(s, mid, ws + [window("h2", "perf", i, mode="PERF") for i in indexes if baseline])
        api.report_self_protect(s, mid, "h1", p.as_dict())
    return p


@pytest.fixture
def canary(config, session_factory):
    """Hosts h1 (slice 1, RING) and h2 (PERF baseline) in CANARY slice 1/2: (config, session factory, id)."""
    return config, session_factory, in_canary(session_factory, config)


def rolled_back(sf, mid):
    with sf() as s:
        return [api.transition_dict(t) for t in s.scalars(
            select(Transition).where(Transition.migration_id == mid, Transition.to_phase == "ROLLED_BACK"))]


def ring_ids(sf, mid, host, indexes):
    with sf() as s:
        return [s.scalar(select(Window.id).where(Window.migration_id == mid, Window.host == host,
                                                 Window.channel == "ring", Window.index == i)) for i in indexes]


def test_one_rollback_with_the_hosts_reason_even_when_the_streak_fires_too(canary):
    cfg, sf, mid = canary
    p = host_report(cfg, sf, mid, [0, 1, 2])  # the controller's own rule fires on the same three windows
    ctl = Controller(sf, mid, grace_windows=0)
    with sf() as s, s.begin():
        res = ctl.step(s, T0 + 100)
    assert res.target == "ROLLED_BACK" and [g.verdict for g in res.judged] == [BREACH] * 3
    ctl.finish()
    with sf() as s, s.begin():  # the next round has nothing left to do: final
        assert ctl.step(s, T0 + 101).transition_id is None
    (t,) = rolled_back(sf, mid)
    assert (t["actor"], t["status"], t["window_ids"]) == ("host h1", "confirmed", ring_ids(sf, mid, "h1", [0, 1, 2]))
    assert t["reason"] == p.reason + " (in CANARY slice 1/2)"
    with sf() as s:
        assert api.hosts(s, mid)[0]["desired_mode"] == "PERF"


def test_a_report_alone_rolls_back_and_an_operators_move_retires_it(canary):
    cfg, sf, mid = canary
    # h2's perf windows are not in yet: the controller's own rule cannot judge these indexes.
    host_report(cfg, sf, mid, [0, 1, 2], baseline=False)
    ctl = Controller(sf, mid)
    transition(sf, mid, Phase.PAUSED, applier=DbApplier(), reason="operator looks first")
    transition(sf, mid, Phase.CANARY, to_slice=1, applier=DbApplier(), reason="operator resumes")
    with sf() as s, s.begin():
        res = ctl.step(s, T0 + 12)
    assert (res.transition_id, res.judged) == (None, [])  # the report predates the resume: retired
    host_report(cfg, sf, mid, [3, 4, 5], baseline=False)  # a new one, after it: rolls back
    with sf() as s, s.begin():
        res = ctl.step(s, T0 + 12)
    assert (res.target, res.judged) == ("ROLLED_BACK", [])
    ctl.finish()
    (t,) = rolled_back(sf, mid)
    assert (t["actor"], t["window_ids"]) == ("host h1", ring_ids(sf, mid, "h1", [3, 4, 5]))


# -- real agents on the synthetic probe --------------------------------------------------------------

@pytest.fixture
def on_ring(tmp_path):
    """h1 in CANARY slice 1 (RING) of a migration with rollback_after N: (config, session factory, id)."""
    (tmp_path / "canary.toml").write_text(PLAN)
    cfg = load_config(tmp_path / "canary.toml")
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp").id
    for tgt, sl in [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0), (Phase.CANARY, 1)]:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier())
    return cfg, sf, mid


def start_agent(cfg, sf, mid, seconds=40):
    from migrator.agent.loop import Agent

    agent = Agent(sf, cfg, "h1", mid)
    stop = threading.Event()
    t = threading.Thread(target=agent.run, kwargs={"stop": stop, "deadline": time.time() + seconds})
    t.start()
    return agent, stop, t


def wait_for(cond, timeout=15.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def stall_from_next_close(agent, seconds: float) -> int:
    """Stall h1's ring consumer from just after its next window close for `seconds`; returns the
    index of the first window the stall falls in."""
    feed = agent.feed
    close = feed._next_close
    wait_for(lambda: time.time() >= close + 0.03, timeout=5)
    feed.pipe.stall_ring_until = time.monotonic() + seconds
    return int(round(close / feed.window_seconds))


def verdicts(cfg, ring_windows):
    return {w.index: judge_host("h1", w, None, cfg.thresholds, expected_mode="RING", relative=True).verdict
            for w in ring_windows if w.mode == "RING"}


@pytest.mark.kernel
@needs_root
def test_link_cut_flips_after_exactly_n_windows_within_5_ms(on_ring):
    cfg, sf, mid = on_ring
    agent, stop, t = start_agent(cfg, sf, mid)
    try:
        wait_for(lambda: agent.mode == "RING" and agent.feed.ring_confirmed)
        time.sleep(2 * cfg.window_seconds)  # a clean RING window or two
        agent.link.stop()  # the database link is cut: nothing reaches or comes from the database
        wait_for(lambda: not agent.link.up, timeout=5)
        assert agent.mode == "RING"  # RING was confirmed: safe mode keeps it
        first = stall_from_next_close(agent, 6.0)
        wait_for(lambda: agent.guard.protections, timeout=10)
        time.sleep(2 * cfg.window_seconds)
        assert agent.feed.channel.mode == "PERF"  # read back from the kernel's mode map
        (p,) = agent.guard.protections
        queued = agent.link.queued()
    finally:
        stop.set()
        t.join(20)
    assert p.indexes == [first, first + 1, first + 2]  # exactly N windows: the Nth decided
    ring_ws = {w.index: w for w in queued if w.channel == "ring"}
    v = verdicts(cfg, ring_ws.values())
    assert [v[first - 1], v[first], v[first + 1], v[first + 2]] == [PASS, BREACH, BREACH, BREACH]
    assert ring_ws[first + 3].mode == "PERF"  # the next window is already on perf
    assert json.loads(json.dumps(ring_ws[first + 2].extra["self_protect"]))["indexes"] == p.indexes
    assert p.window_end < p.closed_at <= p.read_back <= p.closed_at + 0.005  # mode map PERF within 5 ms of the close
    sw = [s for s in agent.switches if s.get("reason") == "self-protect"]
    assert len(sw) == 1 and (sw[0]["from"], sw[0]["to"]) == ("RING", "PERF")
    assert agent.link.pending_protections() == 1  # kept for the database


@pytest.mark.kernel
@needs_root
def test_n_minus_one_breaches_then_a_pass_do_not_flip(on_ring):
    cfg, sf, mid = on_ring
    agent, stop, t = start_agent(cfg, sf, mid)
    try:
        wait_for(lambda: agent.mode == "RING" and agent.feed.ring_confirmed)
        time.sleep(2 * cfg.window_seconds)
        first = stall_from_next_close(agent, (N - 1) * cfg.window_seconds - 0.12)
        time.sleep((N + 1) * cfg.window_seconds)
        wait_for(lambda: agent.link.pending() == 0)
        assert agent.feed.channel.mode == "RING" and agent.guard.protections == []
    finally:
        stop.set()
        t.join(20)
    with sf() as s:
        ring_ws = s.scalars(select(Window).where(Window.migration_id == mid, Window.channel == "ring")).all()
    v = verdicts(cfg, ring_ws)
    assert [v[first - 1], v[first], v[first + 1], v[first + 2]] == [PASS, BREACH, BREACH, PASS]
    assert all(s.get("reason") != "self-protect" for s in agent.switches)


@pytest.mark.kernel
@pytest.mark.slow
@needs_root
def test_with_the_database_the_controller_records_one_rollback_with_the_hosts_reason(on_ring):
    cfg, sf, mid = on_ring
    agent, stop, t = start_agent(cfg, sf, mid)
    cstop, out = threading.Event(), {}
    ct = threading.Thread(target=lambda: out.update(phase=run_controller(sf, mid, stop=cstop, poll_interval=0.02)))
    try:
        wait_for(lambda: agent.mode == "RING" and agent.feed.ring_confirmed)
        ct.start()
        time.sleep(2 * cfg.window_seconds)
        first = stall_from_next_close(agent, 6.0)
        ct.join(15)
        assert out == {"phase": "ROLLED_BACK"}
        wait_for(lambda: agent.link.pending() == 0)
        time.sleep(cfg.window_seconds)
        assert agent.feed.channel.mode == "PERF" and agent.guard.held is None  # final: the hold is over
    finally:
        cstop.set()
        stop.set()
        t.join(20)
    (p,) = agent.guard.protections
    assert p.indexes == [first, first + 1, first + 2]
    (rb,) = rolled_back(sf, mid)
    assert (rb["actor"], rb["status"], rb["window_ids"]) == ("host h1", "confirmed",
                                                              ring_ids(sf, mid, "h1", p.indexes))
    assert rb["reason"] == p.reason + " (in CANARY slice 1/1)"
    with sf() as s:  # the host named its windows `#n` from the first index its link read
        first_stored = s.scalar(select(func.min(Window.index)).where(Window.migration_id == mid))
    assert p.first_index == first_stored and p.names == [f"#{i - first_stored + 1}" for i in p.indexes]
    assert f"({' '.join(p.names)}, rollback_after {N})" in rb["reason"] and str(first) not in rb["reason"]
    with sf() as s:
        (rep,) = api.self_protect_reports(s, mid)
        assert (rep["host"], rep["index"], rep["window_ids"]) == ("h1", first + 2, rb["window_ids"])
        assert api.hosts(s, mid)[0]["applied_mode"] == "PERF"
    assert [s["to"] for s in agent.switches if s["from"] == "RING"] == ["PERF"]  # one switch, by the host
