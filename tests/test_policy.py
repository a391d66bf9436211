"""Policy as pure functions: host rules, group verdict, streak under each no-data setting, what-if."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from migrator.config import load_config, parse_config
from migrator.errors import ConfigError
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
    ({"parse_errors": 1}, {}, BREACH, "parse_errors"),                      # default limit 0
    ({"parse_errors": 5}, {"max_parse_errors": 5}, PASS, "ok"),             # 5 is not > 5
    ({"parse_errors": 6}, {"max_parse_errors": 5}, BREACH, "parse_errors"),
    ({"payload_mismatches": 1}, {}, BREACH, "payload_mismatch"),
    ({"payload_mismatches": 3}, {"max_payload_mismatch": 3}, PASS, "ok"),
    ({"payload_mismatches": 4}, {"max_payload_mismatch": 3}, BREACH, "payload_mismatch"),
    ({"lost": 2, "parse_errors": 1, "payload_mismatches": 1, "lag": 300.0}, {}, BREACH,
     "max_loss_rate,parse_errors,payload_mismatch,max_lag_p99_ms"),
])
def test_shadow_host_rules(kw, th, verdict, rule):
    base = Baseline.of([w(2, channel="perf")])
    hv = judge_host("h1", w(1, **kw), base, replace(TH, **th), expected_mode="DUAL", relative=True)
    assert (hv.verdict, hv.rule) == (verdict, rule)


def test_dual_instrument_watches_ring_counters_only():
    hv = judge_host("h1", w(1, lag=10_000.0), None, TH, expected_mode="DUAL", relative=False)
    assert (hv.verdict, hv.values) == (PASS, {"attempts": 1000, "loss_rate": 0.0, "max_loss_rate": 0.001,
                                              "parse_errors": 0, "max_parse_errors": 0,
                                              "payload_mismatches": 0, "max_payload_mismatch": 0})


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
    assert what_if(cfg, [("h1", 1)], rows)["rollback_at"] == {"by": "controller", "phase": "SHADOW", "slice": 0, "index": 2,
                                                              "window_ids": [10, 12, 14]}
    assert what_if(cfg, [("h1", 1)], rows, max_loss_rate=0.01)["would_roll_back"] is False
    assert what_if(cfg, [("h1", 1)], rows, rollback_after=4)["rollback_at"]["index"] == 3


# -- parse errors and payload mismatches ----------------------------------------------------------

@pytest.mark.parametrize("phase,mode,perf", [("DUAL_INSTRUMENT", "DUAL", False), ("SHADOW", "DUAL", True),
                                             ("CANARY", "RING", False)])
def test_a_ring_delivering_only_unparseable_records_breaches_in_every_phase(phase, mode, perf):
    # Nothing lost, nothing late: before max_parse_errors this window passed.
    ring = w(1, mode=mode, attempts=1000, parse_errors=1000)
    by_host = {"h1": {"ring": ring}}
    if perf:
        by_host["h1"]["perf"] = w(2, channel="perf")
    elif phase == "CANARY":
        by_host["h2"] = {"perf": w(3, host="h2", channel="perf", mode="PERF")}
    g = judge_group(phase, 0, ["h1"], by_host, TH)
    assert (g.verdict, g.rule, g.window_id) == (BREACH, "h1: parse_errors", 1)
    assert g.hosts[0].values["parse_errors"] == 1000 and g.hosts[0].values["max_parse_errors"] == 0
    assert judge_group(phase, 0, ["h1"], by_host, replace(TH, max_parse_errors=1000)).verdict == PASS


def test_payload_mismatches_breach_in_shadow_even_when_every_count_matches_perf():
    by_host = {"h1": {"ring": w(1, payload_mismatches=7), "perf": w(2, channel="perf")}}
    g = judge_group("SHADOW", 0, ["h1"], by_host, TH)
    assert (g.verdict, g.rule) == (BREACH, "h1: payload_mismatch")
    assert (g.hosts[0].values["payload_mismatches"], g.hosts[0].values["max_payload_mismatch"]) == (7, 0)


def test_perf_window_parse_errors_do_not_make_the_ring_breach():
    # The judged window is the ring's: what perf (the baseline) could not parse is perf's books.
    by_host = {"h1": {"ring": w(1), "perf": w(2, channel="perf", parse_errors=1000)}}
    assert judge_group("SHADOW", 0, ["h1"], by_host, TH).verdict == PASS


def test_windows_without_the_new_columns_read_as_zero():
    ring = SimpleNamespace(**{k: v for k, v in w(1).__dict__.items() if k not in ("parse_errors", "payload_mismatches")})
    hv = judge_host("h1", ring, None, TH, expected_mode="DUAL", relative=False)
    assert (hv.verdict, hv.values["parse_errors"], hv.values["payload_mismatches"]) == (PASS, 0, 0)


def test_what_if_replays_parse_errors_and_payload_mismatches():
    cfg = parse_config({"hosts": ["h1"], "slices": [1], "rollback_after": 3})
    rows = [SimpleNamespace(id=10 + 2 * i + (ch == "perf"), phase="SHADOW", slice=0,
                            **window("h1", ch, i, parse_errors=4 if ch == "ring" else 0,
                                     payload_mismatches=2 if ch == "ring" and i >= 1 else 0).__dict__)
            for i in range(4) for ch in ("ring", "perf")]
    rep = what_if(cfg, [("h1", 1)], rows)
    assert rep["rollback_at"] == {"by": "controller", "phase": "SHADOW", "slice": 0, "index": 2, "window_ids": [10, 12, 14]}
    assert (rep["thresholds"]["max_parse_errors"], rep["thresholds"]["max_payload_mismatch"]) == (0, 0)
    # parse errors tolerated: the mismatches from index 1 on still roll back, one window later
    rep = what_if(cfg, [("h1", 1)], rows, max_parse_errors=4)
    assert rep["rollback_at"] == {"by": "controller", "phase": "SHADOW", "slice": 0, "index": 3,
                                 "window_ids": [12, 14, 16]}
    rep = what_if(cfg, [("h1", 1)], rows, max_parse_errors=4, max_payload_mismatch=2)
    assert (rep["would_roll_back"], rep["verdicts"]) == (False, {PASS: 4, BREACH: 0, NO_DATA: 0})


@pytest.mark.parametrize("key", ["max_parse_errors", "max_payload_mismatch"])
@pytest.mark.parametrize("value,problem,fix", [
    (-1, "must be >= 0, got -1", "use a value >= 0"),
    (1.5, "must be an integer, got float 1.5", "write e.g. {key} = 0"),
    ("3", "must be an integer, got string '3'", "write e.g. {key} = 0"),
    (True, "must be an integer, got boolean True", "write e.g. {key} = 0"),
])
def test_new_thresholds_are_validated_as_integers_at_least_zero(key, value, problem, fix):
    with pytest.raises(ConfigError) as exc:
        parse_config({"thresholds": {key: value}}, "plan.toml")
    assert str(exc.value) == f"plan.toml: thresholds.{key}: {problem} (fix: {fix.format(key=key)})"


def test_new_thresholds_parse_and_default_to_zero():
    assert (TH.max_parse_errors, TH.max_payload_mismatch) == (0, 0)
    th = parse_config({"thresholds": {"max_parse_errors": 10, "max_payload_mismatch": 0}}).thresholds
    assert (th.max_parse_errors, th.max_payload_mismatch) == (10, 0)
    shipped = load_config(Path(__file__).resolve().parents[1] / "canary.toml").thresholds
    assert (shipped.max_parse_errors, shipped.max_payload_mismatch) == (0, 0)
