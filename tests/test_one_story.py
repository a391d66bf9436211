"""One rule, one count, one name (issue 19, item 1): the host's own breaker (agent/selfprotect.py)
and the controller count the same windows of one phase position; `what-if` replays the host's
breaker and reproduces its rollback; `history`, `status` and `report` show the same streak with
the same windows, named #n. Real SQLite through the store and the CLI through CliRunner."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import T0, window
from migrator.agent.selfprotect import SelfProtect
from migrator.cli import app
from migrator.control.controller import Controller
from migrator.control.phases import DbApplier, Phase, transition
from migrator.store import api
from migrator.store.models import Window

pytestmark = pytest.mark.sqlite_only

runner = CliRunner()
CONFIRMED = T0 + 12.5  # CANARY slice 1 is confirmed half-way through window 2


def cli(config, *args):
    r = runner.invoke(app, [*args, "-c", str(config.path)])
    assert r.exit_code in (0, 1), r.output
    return r


def ring_id(sf, mid, host, index):
    with sf() as s:
        return s.scalar(select(Window.id).where(Window.migration_id == mid, Window.host == host,
                                                Window.channel == "ring", Window.index == index))


@pytest.fixture
def stalled(config, session_factory):
    """h1 stalls on the ring right after CANARY slice 1/2 is confirmed and protects itself, recorded
    as its agent records it (windows, then its report, one transaction); the controller then rolls
    back. Window 2 started before the confirmation with h1 already on RING (the transition was being
    applied): it is recorded under SHADOW and counted by nobody."""
    sf = session_factory
    with sf() as s, s.begin():
        mid = api.create_migration(s, config, schema_fingerprint="fp", now=T0).id
    for tgt, sl in [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0)]:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier(), clock=lambda: T0)
    ws = [window(h, c, i, mode="DUAL") for i in (0, 1) for h in ("h1", "h2") for c in ("ring", "perf")]
    with sf() as s, s.begin():
        api.record_windows(s, mid, ws)
    transition(sf, mid, Phase.CANARY, to_slice=1, applier=DbApplier(), clock=lambda: CONFIRMED)
    desired = SimpleNamespace(phase="CANARY", phase_since=CONFIRMED, first_index=0)  # as the link reads it
    guard = SelfProtect.from_config("h1", config, position=lambda: desired)
    rings = [window("h1", "ring", i, mode="RING", lag=900.0) for i in (2, 3, 4, 5)]
    fired = [guard.observe(w, "CANARY") for w in rings]
    assert fired[:3] == [None] * 3 and fired[3] is not None  # window 2 never counted
    p = fired[3]
    with sf() as s, s.begin():
        api.record_windows(s, mid, rings + [window("h2", "perf", i, mode="PERF") for i in (2, 3, 4, 5)])
        api.report_self_protect(s, mid, "h1", p.as_dict())
    ctl = Controller(sf, mid, grace_windows=0)
    with sf() as s, s.begin():
        res = ctl.step(s, T0 + 100)
    assert res.target == "ROLLED_BACK"
    ctl.finish()
    return config, sf, mid, p


def test_the_hosts_breaker_counts_only_windows_of_the_confirmed_position(config):
    desired = SimpleNamespace(phase="CANARY", phase_since=CONFIRMED)
    g = SelfProtect.from_config("h1", config, position=lambda: desired)
    assert g.observe(window("h1", "ring", 2, mode="RING", lag=900.0), "CANARY") is None
    assert g.state.streak == 0  # started before the confirmation: not this position's window
    for i in (3, 4):
        g.observe(window("h1", "ring", i, mode="RING", lag=900.0), "CANARY")
    assert g.state.streak == 2
    desired = SimpleNamespace(phase="CANARY", phase_since=T0 + 14.5)  # the next slice: a new streak
    g.position = lambda: desired
    assert g.observe(window("h1", "ring", 5, mode="RING", lag=900.0), "CANARY") is None
    assert g.state.streak == 1


def test_every_view_tells_the_same_streak_of_a_self_protection_rollback(stalled, tmp_path):
    config, sf, mid, p = stalled
    assert p.indexes == [3, 4, 5]
    ids = [ring_id(sf, mid, "h1", i) for i in (3, 4, 5)]
    with sf() as s:
        first = s.scalar(select(Window.index).where(Window.migration_id == mid).order_by(Window.index).limit(1))
    names = [f"#{i - first + 1}" for i in (3, 4, 5)]

    hist = json.loads(cli(config, "history", "--json").stdout)
    (rb,) = [t for t in hist if t["to"] == "ROLLED_BACK"]
    assert (rb["actor"], rb["window_ids"]) == ("host h1", ids)
    assert [w["name"] for w in rb["windows"]] == names and {w["phase"] for w in rb["windows"]} == {"CANARY"}

    wi = json.loads(cli(config, "what-if", "--json").stdout)
    assert wi["would_roll_back"] is True
    assert wi["actual_rollback"]["transition_id"] == rb["id"] and wi["actual_rollback"]["window_ids"] == ids
    assert (wi["rollback_at"]["by"], wi["rollback_at"]["window_ids"]) == ("host h1", ids)

    st = json.loads(cli(config, "status", "--json").stdout)
    assert (st["phase"], st["streak"], st["streak_by"], st["streak_window_ids"]) == ("ROLLED_BACK", 3, "host h1", ids)
    assert [w["name"] for w in st["streak_windows"]] == names
    assert {h["name"]: h["streak"] for h in st["hosts"]} == {"h1": 3, "h2": 0}

    rep = json.loads(cli(config, "report", "--json", "-o", str(tmp_path / "r.html")).stdout)
    assert (rep["streak"]["streak"], rep["streak"]["window_ids"], rep["max_streak"]) == (3, ids, 3)
    assert rep["rollback"]["window_ids"] == ids

    text = cli(config, "status").stdout
    assert "breach streak 3/3" in text and f"h1 {' '.join(names)}" in text
    text = cli(config, "history").stdout
    assert "SHADOW -> CANARY slice 1/2" in text and f"(windows h1 {' '.join(names)})" in text
    assert str(ids[0]) not in text.split("ROLLED_BACK")[-1].split("(windows")[-1]  # ids only in --json
    # the host's own reason names the same windows the same way (it knew the first index)
    assert f"3 consecutive breaching ring windows ({' '.join(names)}, rollback_after 3)" in text
    text = cli(config, "what-if").stdout
    assert f"by host h1 (windows h1 {' '.join(names)})" in text and "actually: rolled back by host h1" in text


def test_a_controller_rollback_lists_every_judged_hosts_window(config, session_factory):
    """Both hosts judged (SHADOW) and both breaching: the deciding windows are both hosts' ring
    windows of each index, and what-if with unchanged thresholds names the same ones."""
    sf = session_factory
    with sf() as s, s.begin():
        mid = api.create_migration(s, config, schema_fingerprint="fp", now=T0).id
    for tgt in (Phase.DUAL_INSTRUMENT, Phase.SHADOW):
        transition(sf, mid, tgt, applier=DbApplier(), clock=lambda: T0)
    with sf() as s, s.begin():
        api.record_windows(s, mid, [window(h, c, i, lag=900.0 if c == "ring" else 1.0)
                                    for i in (0, 1, 2) for h in ("h1", "h2") for c in ("ring", "perf")])
    ctl = Controller(sf, mid, grace_windows=0)
    with sf() as s, s.begin():
        assert ctl.step(s, T0 + 100).target == "ROLLED_BACK"
    ctl.finish()
    ids = [ring_id(sf, mid, h, i) for i in (0, 1, 2) for h in ("h1", "h2")]
    hist = json.loads(cli(config, "history", "--json").stdout)
    (rb,) = [t for t in hist if t["to"] == "ROLLED_BACK"]
    assert (rb["actor"], rb["window_ids"]) == ("auto", ids)
    wi = json.loads(cli(config, "what-if", "--json").stdout)
    assert wi["would_roll_back"] and wi["rollback_at"]["by"] == "controller"
    assert wi["rollback_at"]["window_ids"] == wi["actual_rollback"]["window_ids"] == ids
    st = json.loads(cli(config, "status", "--json").stdout)
    assert (st["streak"], st["streak_window_ids"]) == (3, ids)


def test_window_names_survive_a_prune(config, session_factory):
    """`migrator prune` deletes a finished migration's windows but the deciding ones: the first window
    index, and with it every #n, comes from the rollups then."""
    from migrator.control.story import first_index
    from migrator.store.models import WindowRollup

    sf = session_factory
    with sf() as s, s.begin():
        mid = api.create_migration(s, config, schema_fingerprint="fp", now=T0).id
        api.record_windows(s, mid, [window("h1", "ring", i) for i in (5, 6)])
    with sf() as s:
        assert first_index(s, mid) == 5
    with sf() as s, s.begin():  # what prune leaves of windows 2..4
        s.add(WindowRollup(migration_id=mid, host="h1", channel="ring", phase="DUAL_INSTRUMENT", slice=0,
                           first_index=2, last_index=4, first_start=T0, last_end=T0 + 3, pruned_at=T0 + 100))
    with sf() as s:
        assert first_index(s, mid) == 2
