"""PAUSED is not clean: windows that overlap a pause never count toward min_clean_windows (judged
while paused or late, after the resume), the move's evidence names none of them, and `status` shows
when the pause began and why. Real SQLite (and PostgreSQL) through the store."""
from __future__ import annotations

import json

import pytest

from migrator.config import load_config
from migrator.control.controller import Controller
from migrator.control.moves import status_report
from migrator.control.phases import DbApplier, Phase, transition
from migrator.cli.views import header_lines
from migrator.store import api, open_store
from migrator.store.models import Migration, Transition

from conftest import T0, RecordingApplier, record, window

pytestmark = pytest.mark.usefixtures("backend")
MIN_CLEAN = 5


def canary(toml_file):
    """A migration in CANARY slice 1/2 since T0: h1 on RING, h2 and h3 the PERF baseline."""
    cfg = load_config(toml_file(
        'hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = 3\n'
        "[phases.dual_instrument]\nmin_clean_windows = 0\n[phases.shadow]\nmin_clean_windows = 0\n"
        f"[phases.canary]\nmin_clean_windows = {MIN_CLEAN}\n"))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    for tgt, sl in [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0), (Phase.CANARY, 1)]:
        transition(sf, mid, tgt, to_slice=sl, applier=DbApplier(), clock=lambda: T0)
    return sf, mid, Controller(sf, mid, applier=RecordingApplier(), clock=lambda: T0)


def clean_index(sf, mid, i) -> int:
    """Index i (window [T0 + 10 + i, T0 + 11 + i]), clean on every host; returns h1's ring window id."""
    with sf() as s, s.begin():
        wid = record(s, mid, window("h1", "ring", i, mode="RING"))
        for h in ("h2", "h3"):
            record(s, mid, window(h, "perf", i, mode="PERF"))
    return wid


def step(sf, ctl, now=T0 + 1000):
    with sf() as s, s.begin():
        return ctl.step(s, now)


def move(sf, mid, target, at, reason):
    transition(sf, mid, target, to_slice=1 if target == Phase.CANARY else 0, applier=DbApplier(),
               clock=lambda: at, reason=reason)


def clean_windows(sf, mid) -> int:
    with sf() as s:
        return s.get(Migration, mid).clean_windows


@pytest.mark.parametrize("judged_while_paused", [True, False], ids=["judged-while-paused", "judged-after-resume"])
def test_windows_of_a_pause_never_count_as_clean(toml_file, judged_while_paused):
    sf, mid, ctl = canary(toml_file)
    before = [clean_index(sf, mid, i) for i in range(3)]  # [T0+10, T0+13]: before the pause
    assert step(sf, ctl).target is None and clean_windows(sf, mid) == 3
    move(sf, mid, Phase.PAUSED, T0 + 13, "freeze")
    for i in range(3, 10):  # windows T0+13 .. T0+20: the pause, 7 clean windows (more than MIN_CLEAN)
        clean_index(sf, mid, i)
        if judged_while_paused:
            res = step(sf, ctl)
            assert (res.phase, res.target) == ("PAUSED", None)
    assert clean_windows(sf, mid) == 3
    move(sf, mid, Phase.CANARY, T0 + 20, "thaw")
    res = step(sf, ctl)  # the paused windows (judged now when not before): still no advance
    assert (res.target, res.blocked, clean_windows(sf, mid)) == (None, None, 3)
    with sf() as s:
        assert s.get(Migration, mid).judged_index == 9
    after = [clean_index(sf, mid, 10)]
    assert step(sf, ctl).target is None and clean_windows(sf, mid) == 4
    after.append(clean_index(sf, mid, 11))
    res = step(sf, ctl)
    assert (res.target, clean_windows(sf, mid)) == ("CANARY", MIN_CLEAN)  # the move to slice 2 is written
    with sf() as s:
        t = s.get(Transition, res.transition_id)
        assert (t.from_slice, t.to_slice) == (1, 2)
        assert t.reason == f"5 clean windows in CANARY slice 1/2 (min {MIN_CLEAN})"
        assert json.loads(t.window_ids) == before + after  # no window of the pause is evidence


def test_a_window_straddling_the_pause_is_not_clean(toml_file):
    sf, mid, ctl = canary(toml_file)
    clean_index(sf, mid, 0)                    # [T0+10, T0+11]
    move(sf, mid, Phase.PAUSED, T0 + 11.5, "x")  # pause inside index 1
    clean_index(sf, mid, 1)                    # [T0+11, T0+12]: overlaps
    move(sf, mid, Phase.CANARY, T0 + 12.5, "y")  # resume inside index 2
    clean_index(sf, mid, 2)                    # [T0+12, T0+13]: overlaps
    clean_index(sf, mid, 3)                    # [T0+13, T0+14]: after
    step(sf, ctl)
    assert clean_windows(sf, mid) == 2


def test_a_breach_while_paused_still_counts(toml_file):
    """Pausing stops advancing, never protecting: the breach streak runs through a pause."""
    sf, mid, ctl = canary(toml_file)
    move(sf, mid, Phase.PAUSED, T0 + 5, "freeze")
    for i in range(3):
        with sf() as s, s.begin():
            record(s, mid, window("h1", "ring", i, mode="RING", lost=50))
            for h in ("h2", "h3"):
                record(s, mid, window(h, "perf", i, mode="PERF"))
    res = step(sf, ctl)
    assert res.target == "ROLLED_BACK"


def test_status_shows_when_the_pause_began_and_why(toml_file):
    sf, mid, ctl = canary(toml_file)
    move(sf, mid, Phase.PAUSED, T0 + 42, "change freeze")
    with sf() as s:
        rep = status_report(s, mid)
    assert rep["phase_since"] == T0  # the paused phase's own start is kept
    assert rep["pause"] == {"transition_id": 4, "at": T0 + 42, "actor": "manual", "reason": "change freeze"}
    lines = header_lines({**rep, "ended": None})
    assert lines[0].startswith("migration 1: PAUSED (paused in CANARY)   since ")
    from migrator.cli.views import _ts
    assert lines[0].endswith(_ts(T0 + 42)) and lines[1] == "paused by manual: change freeze"
    move(sf, mid, Phase.CANARY, T0 + 50, "go")
    with sf() as s:
        assert status_report(s, mid)["pause"] is None
