"""Policy as pure functions: host rules, group verdict, streak under each no-data setting, what-if."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from migrator.config import parse_config
from migrator.control.policy import BREACH, NO_DATA, PASS, Baseline, StreakState, judge_group, judge_host, next_streak, what_if

from conftest import window

TH = parse_config({}).thresholds


def w(id_, **kw):
    return SimpleNamespace(id=id_, **window(kw.pop("host", "h1"), kw.pop("channel", "ring"), kw.pop("index", 0), **kw).__dict__)


@pytest.mark.parametrize("kw,th,verdict,rule", [
    ({}, {}, PASS, "ok"),
    ({"lost": 2}, {}, BREACH, "max_loss_rate"),            # 0.002 > 0.001
    ({"lost": 1}, {}, PASS, "ok"),                         # 0.001 is not > 0.001
    ({"lag": 300.0}, {}, BREACH, "max_lag_p99_ms"),
    ({"lost": 5, "lag": 300.0}, {}, BREACH, "max_loss_rate,max_lag_p99_ms"),
    ({"attempts": 0}, {}, NO_DATA, "min_events"),
    ({"mode": "PERF"}, {}, NO_DATA, "mode"),
    ({"lag": 5.0}, {"max_lag_ratio": 2.0}, BREACH, "max_lag_ratio"),  # perf baseline lag 1.0
    ({"lost": 1}, {"max_loss_delta": 0.0005}, BREACH, "max_loss_delta"),
    ({"inversions": 3}, {"max_inversions": 0}, BREACH, "max_inversions"),
])
def test_shadow_host_rules(kw, th, verdict, rule):
    base = Baseline.of([w(2, channel="perf")])
    hv = judge_host("h1", w(1, **kw), base, replace(TH, **th), expected_mode="DUAL", relative=True)
    assert (hv.verdict, hv.rule) == (verdict, rule)


def test_dual_instrument_watches_ring_counters_only():
    hv = judge_host("h1", w(1, lag=10_000.0), None, TH, expected_mode="DUAL", relative=False)
    assert (hv.verdict, hv.values) == (PASS, {"attempts": 1000, "loss_rate": 0.0, "max_loss_rate": 0.001})


def test_canary_group_any_host_breach_and_baseline():
    by_host = {"h1": {"ring": w(1, mode="RING")}, "h2": {"ring": w(2, host="h2", mode="RING", lost=9)},
               "h3": {"perf": w(3, host="h3", channel="perf", mode="PERF")}}
    g = judge_group("CANARY", 0, ["h1", "h2"], by_host, TH)
    assert (g.verdict, g.rule, g.window_id, g.values["breaching"]) == (BREACH, "h2: max_loss_rate", 2, ["h2"])
    assert g.hosts[0].values["baseline"]["hosts"] == 1
    del by_host["h2"]
    g = judge_group("CANARY", 0, ["h1", "h2"], by_host, TH)
    assert (g.verdict, g.rule) == (NO_DATA, "h2: no_report")


@pytest.mark.parametrize("no_data,seq,streaks", [
    ("hold", "BBNB", [1, 2, 2, 3]),
    ("breach", "BBNB", [1, 2, 3, 4]),
    ("reset", "BBNB", [1, 2, 0, 1]),
])
def test_streak(no_data, seq, streaks):
    st, out = StreakState(), []
    for i, v in enumerate(seq):
        st = next_streak(st, {"B": BREACH, "N": NO_DATA, "P": PASS}[v], i, no_data)
        out.append(st.streak)
    assert out == streaks
    assert next_streak(st, PASS, 9, no_data) == StreakState(0, (), 1)


def test_what_if_replays_under_other_thresholds():
    cfg = parse_config({"hosts": ["h1"], "slices": [1], "rollback_after": 3})
    rows = [SimpleNamespace(id=10 + 2 * i + (ch == "perf"), phase="SHADOW", slice=0, **window("h1", ch, i, lost=2 if ch == "ring" else 0).__dict__)
            for i in range(4) for ch in ("ring", "perf")]
    assert what_if(cfg, [("h1", 1)], rows)["rollback_at"] == {"phase": "SHADOW", "slice": 0, "index": 2,
                                                              "window_ids": [10, 12, 14]}
    assert what_if(cfg, [("h1", 1)], rows, max_loss_rate=0.01)["would_roll_back"] is False
    assert what_if(cfg, [("h1", 1)], rows, rollback_after=4)["rollback_at"]["index"] == 3
