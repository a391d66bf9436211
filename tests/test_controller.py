"""Controller: streak semantics, no-data settings, auto advance/gates, late windows, lease, crash recovery."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from sqlalchemy import select

from migrator.config import load_config
from migrator.control.controller import Controller, acquire_lease, run_controller, start_migration
from migrator.errors import LeaseHeld
from migrator.control.phases import DbApplier, Phase, transition
from migrator.store import api, open_store
from migrator.store.models import Host, Migration, Transition, Verdict, Window

from conftest import T0, RecordingApplier, window, record

N = 3
# Every test here runs on SQLite and on PostgreSQL (conftest's backend: MIGRATOR_DATABASE_URL
# points load_config at a throwaway PostgreSQL database).
pytestmark = pytest.mark.usefixtures("backend")


def setup(toml_file, to: list[tuple[Phase, int]], body: str = "", gate: str = "false"):
    cfg = load_config(toml_file(
        f'hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = {N}\n{body}\n'
        f"[phases.dual_instrument]\nmin_clean_windows = 2\nmanual_gate = {gate}\n"
        "[phases.shadow]\nmin_clean_windows = 2\n"
        "[phases.canary]\nmin_clean_windows = 5\n"))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    for tgt, sl in to:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier(), clock=lambda: T0)
    return sf, mid, Controller(sf, mid, applier=RecordingApplier(), clock=lambda: T0)


CANARY1 = [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0), (Phase.CANARY, 1)]


def canary_index(sf, mid, i, verdict):
    """h1 is the slice (RING); h2, h3 the PERF baseline. verdict: B(reach), P(ass), N(o data)."""
    lost = {"B": 50, "P": 0, "N": 0}[verdict]
    attempts = 0 if verdict == "N" else 1000
    with sf() as s, s.begin():
        ring_id = record(s, mid, window("h1", "ring", i, mode="RING", attempts=attempts, lost=lost))
        for h in ("h2", "h3"):
            record(s, mid, window(h, "perf", i, mode="PERF"))
    return ring_id


def step(sf, ctl, now=T0 + 1000):
    with sf() as s, s.begin():
        return ctl.step(s, now)


def feed(sf, mid, ctl, pattern):
    """Record and judge one index per letter; returns (ring window ids, step results)."""
    ids, results = [], []
    for i, v in enumerate(pattern):
        ids.append(canary_index(sf, mid, i, v))
        results.append(step(sf, ctl))
    return ids, results


def test_n_minus_1_breaches_pass_n_minus_1_breaches_then_nth_rolls_back(toml_file):
    sf, mid, ctl = setup(toml_file, CANARY1)
    ids, res = feed(sf, mid, ctl, "BBPBB")
    assert [r.transition_id for r in res] == [None] * 5
    assert [g.verdict for r in res for g in r.judged] == ["breach", "breach", "pass", "breach", "breach"]
    with sf() as s:
        assert s.get(Migration, mid).streak == N - 1
    ids2, res2 = feed_more(sf, mid, ctl, 5, "B")
    assert res2[0].target == "ROLLED_BACK"
    with sf() as s:
        t = s.get(Transition, res2[0].transition_id)
        assert (t.status, t.actor, t.from_phase, t.from_slice) == ("intent", "auto", "CANARY", 1)
        assert json.loads(t.window_ids) == [ids[3], ids[4], ids2[0]]
        assert json.loads(t.modes) == {"h1": "PERF", "h2": "PERF", "h3": "PERF"}
        assert t.reason.startswith("3 consecutive breaching windows in CANARY slice 1/2")
    ctl.finish()
    with sf() as s:
        assert s.get(Migration, mid).phase == "ROLLED_BACK"
        assert [h["to"] for h in api.history(s, mid)][-1] == "ROLLED_BACK"
        verdicts = s.scalars(select(Verdict).where(Verdict.scope == "host", Verdict.window_id == ids[0])).all()
        assert [(v.verdict, v.rule, json.loads(v.values)["loss_rate"]) for v in verdicts] == [("breach", "max_loss_rate", 0.05)]


def feed_more(sf, mid, ctl, start, pattern):
    ids, results = [], []
    for k, v in enumerate(pattern):
        ids.append(canary_index(sf, mid, start + k, v))
        results.append(step(sf, ctl))
    return ids, results


@pytest.mark.parametrize("no_data,pattern,fires_at", [
    ("hold", "BBNB", 3),     # no-data neither counts nor resets: 3rd breach is at index 3
    ("hold", "BBNPB", None),
    ("breach", "BBN", 2),    # no-data counts as the 3rd breach
    ("reset", "BBNBB", None),  # reset after two: only two more breaches
    ("reset", "BBNBBB", 5),
])
def test_no_data_settings(toml_file, no_data, pattern, fires_at):
    sf, mid, ctl = setup(toml_file, CANARY1, f'no_data = "{no_data}"')
    ids, res = feed(sf, mid, ctl, pattern)
    fired = [i for i, r in enumerate(res) if r.target == "ROLLED_BACK"]
    assert fired == ([] if fires_at is None else [fires_at])
    if fires_at is not None:
        with sf() as s:
            t = s.get(Transition, res[fires_at].transition_id)
            want = [ids[i] for i, v in enumerate(pattern[: fires_at + 1])
                    if v == "B" or (v == "N" and no_data == "breach")][-N:]
            assert json.loads(t.window_ids) == want


def test_auto_advance_after_min_clean_windows_and_manual_gate(toml_file):
    sf, mid, ctl = setup(toml_file, [(Phase.DUAL_INSTRUMENT, 0)])
    with sf() as s, s.begin():
        for i in range(2):
            for h in ("h1", "h2", "h3"):
                record(s, mid, window(h, "ring", i))
    res = step(sf, ctl)
    assert [g.verdict for g in res.judged] == ["pass", "pass"] and res.target == "SHADOW"
    ctl.finish()
    with sf() as s:
        t = api.history(s, mid)[-1]
        assert (t["to"], t["actor"], t["reason"]) == ("SHADOW", "auto", "2 clean windows in DUAL_INSTRUMENT (min 2)")
        # the advance names the windows that justified it: every judged host's, index 0 and 1, oldest first
        assert [(s.get(Window, i).index, s.get(Window, i).host) for i in t["window_ids"]] == [
            (i, h) for i in (0, 1) for h in ("h1", "h2", "h3")]

    sf, mid, ctl = setup(toml_file, [(Phase.DUAL_INSTRUMENT, 0)], gate="true")
    with sf() as s, s.begin():
        for i in range(2):
            for h in ("h1", "h2", "h3"):
                record(s, mid, window(h, "ring", i))
    res = step(sf, ctl)
    assert res.target is None
    assert res.blocked == "DUAL_INSTRUMENT: 2 clean windows; manual gate: waiting for `migrator advance`"


def test_schema_fingerprint_change_blocks_advance(toml_file):
    sf, mid, ctl = setup(toml_file, [(Phase.DUAL_INSTRUMENT, 0)])
    with sf() as s, s.begin():
        for i in range(2):
            for h in ("h1", "h2", "h3"):
                record(s, mid, window(h, "ring", i, extra={"schema_fingerprint": "fp2" if h == "h3" else "fp1"}))
    res = step(sf, ctl)
    assert res.target is None
    assert res.blocked == ("cannot go from DUAL_INSTRUMENT to SHADOW: guard 'schema_fingerprint': event schema changed "
                           "since DUAL_INSTRUMENT: frozen 'fp1', now 'fp2'; roll back or abort")


def test_incomplete_index_waits_until_late_then_missing_host_is_no_data(toml_file):
    sf, mid, ctl = setup(toml_file, [(Phase.DUAL_INSTRUMENT, 0)])
    with sf() as s, s.begin():
        for h in ("h1", "h2"):
            record(s, mid, window(h, "ring", 0))
    end = T0 + 11.0
    assert step(sf, ctl, now=end + 1.0).judged == []
    res = step(sf, ctl, now=end + 2.0)
    assert [(g.verdict, g.rule) for g in res.judged] == [("no-data", "h3: no_report")]


def test_windows_are_idempotent_and_stamped_with_their_phase(toml_file):
    sf, mid, _ = setup(toml_file, [(Phase.DUAL_INSTRUMENT, 0)])
    with sf() as s, s.begin():
        a = record(s, mid, window("h1", "ring", 0))
        b = record(s, mid, window("h1", "ring", 0, lost=999))
        c = record(s, mid, window("h1", "perf", 0, start=T0 - 5))  # began before DUAL was confirmed
        assert api.record_windows(s, mid, [window("h1", "ring", 0), window("h2", "ring", 0)]) == 1
    assert a == b
    with sf() as s:
        rows = {(r["host"], r["channel"]): r for r in api.list_windows(s, mid)}
        assert rows[("h1", "ring")]["lost"] == 0 and rows[("h1", "ring")]["phase"] == "DUAL_INSTRUMENT"
        assert rows[("h1", "perf")]["phase"] == "PLANNED" and rows[("h1", "perf")]["id"] == c


def test_agent_reports_and_db_applier_waits_for_them(toml_file):
    sf, mid, _ = setup(toml_file, [])
    with sf() as s, s.begin():
        assert api.heartbeat(s, mid, "h1", now=T0) == "PERF"

    def agents():
        time.sleep(0.1)
        with sf() as s, s.begin():
            for h in ("h1", "h2", "h3"):
                api.report_applied(s, mid, h, api.desired_mode(s, mid, h))

    th = threading.Thread(target=agents)
    th.start()
    start_migration(sf, mid, schema_fingerprint="fp1", applier=DbApplier(confirm_timeout=5))
    th.join()
    with sf() as s:
        assert [(h["desired_mode"], h["applied_mode"]) for h in api.hosts(s, mid)] == [("DUAL", "DUAL")] * 3
        assert s.get(Migration, mid).phase == "DUAL_INSTRUMENT"


def test_second_controller_refuses_and_no_double_transitions(toml_file):
    sf, mid, _ = setup(toml_file, CANARY1)
    stop = threading.Event()
    started = threading.Event()
    out = {}

    def first():
        out["phase"] = run_controller(sf, mid, holder="A", applier=RecordingApplier(), stop=stop,
                                      poll_interval=0.01, on_step=lambda r: started.set())

    th = threading.Thread(target=first)
    th.start()
    assert started.wait(5)
    with pytest.raises(LeaseHeld) as exc:
        run_controller(sf, mid, holder="B", applier=RecordingApplier(), deadline=time.time() + 0.5)
    assert exc.value.holder == "A" and str(exc.value).startswith(f"migration {mid} is driven by controller 'A'")
    for i, v in enumerate("BBB"):
        canary_index(sf, mid, i, v)
    th.join(5)  # A rolls back by itself and exits
    stop.set()
    th.join(5)
    assert out["phase"] == "ROLLED_BACK"
    with sf() as s:
        assert [h["to"] for h in api.history(s, mid)].count("ROLLED_BACK") == 1
        assert api.lease_of(s, mid) is None  # released on exit


def test_expired_lease_is_taken_over(toml_file):
    sf, mid, _ = setup(toml_file, CANARY1)
    with sf() as s, s.begin():
        acquire_lease(s, mid, "dead", T0, 10)
    with pytest.raises(LeaseHeld):
        with sf() as s, s.begin():
            acquire_lease(s, mid, "B", T0 + 5, 10)
    with sf() as s, s.begin():
        acquire_lease(s, mid, "B", T0 + 11, 10)
        assert api.lease_of(s, mid).holder == "B"


CRASH_SCRIPT = textwrap.dedent("""
    import sys, time
    from migrator.control.phases import DbApplier, transition
    from migrator.store import open_store

    def park(point, transition_id):  # the drill: wait to be SIGKILLed between two steps
        if point == sys.argv[3]:
            print(f"fault: {point} transition {transition_id}", file=sys.stderr, flush=True)
            time.sleep(60)

    sf = open_store(sys.argv[1])
    transition(sf, int(sys.argv[2]), "ROLLED_BACK", applier=DbApplier(), reason="operator rollback", step_hook=park)
""")


@pytest.mark.parametrize("point", ["before_apply", "before_confirm"])
def test_sigkill_between_intent_and_confirm_recovers_exactly_once(toml_file, point):
    sf, mid, ctl = setup(toml_file, CANARY1)
    url = sf.engine.url.render_as_string(hide_password=False)
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, url, str(mid), point],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith(f"fault: {point} transition 4")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    with sf() as s:
        m = s.get(Migration, mid)
        assert (m.phase, m.pending_transition_id) == ("CANARY", 4)
        desired = {h.name: h.desired_mode for h in s.scalars(select(Host).where(Host.migration_id == mid))}
        # before_apply: nothing applied yet; before_confirm: the hosts already have the new mode
        assert desired == ({"h1": "PERF", "h2": "PERF", "h3": "PERF"} if point == "before_confirm"
                           else {"h1": "RING", "h2": "PERF", "h3": "PERF"})
    # Restart: the controller finishes the intent instead of starting another.
    assert run_controller(sf, mid, applier=DbApplier(), deadline=time.time() + 5, poll_interval=0.01) == "ROLLED_BACK"
    with sf() as s:
        hist = api.history(s, mid)
        assert [(h["to"], h["status"]) for h in hist].count(("ROLLED_BACK", "confirmed")) == 1
        assert len(hist) == 4
        assert {h["desired_mode"] for h in api.hosts(s, mid)} == {"PERF"}


def test_lease_of_a_dead_local_controller_is_taken_over_at_once(toml_file):
    sf, mid, _ = setup(toml_file, [])
    import socket as _socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"{_socket.gethostname()}:{gone.pid}:deadbeef"
    alive = f"{_socket.gethostname()}:{os.getpid()}:cafe0000"
    with sf() as s, s.begin():
        acquire_lease(s, mid, dead, T0, 60)
    with sf() as s, s.begin():
        acquire_lease(s, mid, alive, T0 + 1, 60)  # no wait for the expiry at T0 + 60
    with sf() as s, s.begin():
        with pytest.raises(LeaseHeld):
            acquire_lease(s, mid, dead, T0 + 2, 60)  # but a live holder keeps it
