"""Every window's books balance on their own (one epoch per window), and the verdicts read them.

Sustained load: consecutive windows at about 1 M events/s, each settled with residual 0 on both
channels. A counter bumped by hand through the map, a window with parse errors and an unsettled
window each get their verdict from the policy the controller uses.
"""
from __future__ import annotations

import ctypes as ct
import time
from types import SimpleNamespace

import pytest

from conftest import window
from kernel_util import needs_root
from migrator.config import parse_config
from migrator.control.policy import BREACH, NO_DATA, PASS, judge_group, judge_host
from migrator.dataplane.channel import COUNTERS, N_COUNTERS
from migrator.dataplane.kstats import stats_on
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline

TH = parse_config({}).thresholds
RATE = 1_000_000
WINDOWS = 10


def ns(id_, **kw):
    return SimpleNamespace(id=id_, **window(kw.pop("host", "h1"), kw.pop("channel", "ring"), kw.pop("index", 0),
                                            **kw).__dict__)


@pytest.mark.kernel
@needs_root
def test_ten_windows_at_a_million_events_per_second_each_balance_exactly():
    window_s = 0.5
    with Probe("synthetic") as probe:
        pipe = Pipeline(probe, perf_pages=1024)
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(int(RATE * window_s * (WINDOWS + 4)), rate=RATE)
            probe.set_target(gen.pid)
            gen.start()
            t_end = time.monotonic() + window_s  # one warm-up window, not judged
            while time.monotonic() < t_end:
                pipe.poll(timeout=0.01)
            pipe.close_window()
            ws = pipe.run(window_s * WINDOWS - 1e-3, window_s)
        finally:
            probe.set_target(0)
            gen.kill()
            pipe.close()
    by_index = {}
    for w in ws:
        by_index.setdefault(w.index, {})[w.channel] = w
    assert len(by_index) == WINDOWS
    rates = []
    for i, chans in sorted(by_index.items()):
        perf, ring = chans["perf"], chans["ring"]
        for w in (perf, ring):
            assert w.settled, w
            assert w.residual == 0, w
            assert w.attempts == w.delivered + w.dropped + w.lost + w.in_flight, w
        # DUAL: both channels were offered the same events; the stream never paused at a close
        assert perf.attempts == ring.attempts >= 50_000, (i, perf.attempts)
        rates.append(ring.attempts / (ring.end - ring.start))
    print(f"events/s per window: {[round(r) for r in rates]}")


@pytest.mark.kernel
@needs_root
def test_a_counter_bumped_by_hand_breaks_that_windows_books_and_the_window_breaches():
    with Probe("synthetic") as probe:
        pipe = Pipeline(probe)
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(20_000, rate=200_000)
            probe.set_target(gen.pid)
            gen.start()
            while gen.running():
                pipe.poll(timeout=0.01)
            clean = {w.channel: w for w in pipe.close_window()}
            # one ring attempt nobody made, in the counter set of the epoch now running, on CPU 0
            cnt = probe.bpf[probe.channel.name + "__cnt"]
            key = (probe.channel.epoch & 1) * N_COUNTERS + COUNTERS.index("ring_attempts")
            values = cnt[ct.c_int(key)]
            values[0] += 1
            cnt[ct.c_int(key)] = values
            bumped = {w.channel: w for w in pipe.close_window()}
            after = {w.channel: w for w in pipe.close_window()}
        finally:
            gen.kill()
            pipe.close()
    assert [(clean[c].residual, clean[c].settled) for c in ("perf", "ring")] == [(0, True), (0, True)]
    assert clean["ring"].attempts == 20_000
    assert (bumped["ring"].residual, bumped["perf"].residual, bumped["ring"].settled) == (1, 0, True)
    assert (after["ring"].residual, after["perf"].residual) == (0, 0)  # the next window is clean again
    v = judge_host("h1", SimpleNamespace(id=7, **bumped["ring"].__dict__), None, TH, expected_mode="DUAL",
                   relative=False, perf=bumped["perf"])
    assert (v.verdict, v.rule, v.values["residual"]) == (BREACH, "books", {"ring": 1})


def test_a_settled_window_with_a_residual_breaches_with_rule_books_even_below_min_events():
    v = judge_host("h1", ns(1, residual=-3), None, TH, expected_mode="DUAL", relative=False)
    assert (v.verdict, v.rule, v.values["residual"]) == (BREACH, "books", {"ring": -3})
    v = judge_host("h1", ns(1, attempts=0, residual=2), None, TH, expected_mode="DUAL", relative=False)
    assert (v.verdict, v.rule) == (BREACH, "books")
    # the host's perf books count too, in every phase
    v = judge_host("h1", ns(1), None, TH, expected_mode="DUAL", relative=False, perf=ns(2, channel="perf", residual=5))
    assert (v.verdict, v.rule, v.values["residual"]) == (BREACH, "books", {"perf": 5})
    v = judge_host("h1", ns(1, residual=1, lost=10), None, TH, expected_mode="DUAL", relative=False)
    assert (v.verdict, v.rule) == (BREACH, "books,max_loss_rate")


def test_an_unsettled_window_is_no_data_never_a_pass():
    v = judge_host("h1", ns(1, settled=False), None, TH, expected_mode="DUAL", relative=False)
    assert (v.verdict, v.rule, v.values) == (NO_DATA, "unsettled", {"unsettled": ["ring"]})
    v = judge_host("h1", ns(1), None, TH, expected_mode="DUAL", relative=False,
                   perf=ns(2, channel="perf", settled=False, residual=9))
    assert (v.verdict, v.rule) == (NO_DATA, "unsettled")
    g = judge_group("SHADOW", 0, ["h1"], {"h1": {"ring": ns(1, settled=False), "perf": ns(2, channel="perf")}}, TH)
    assert (g.verdict, g.rule) == (NO_DATA, "h1: unsettled")


def test_parse_errors_breach_as_the_pipeline_issue_says():
    v = judge_host("h1", ns(1, parse_errors=1), None, TH, expected_mode="DUAL", relative=False)
    assert (v.verdict, v.rule) == (BREACH, "parse_errors")
    th = parse_config({"thresholds": {"max_parse_errors": 1}}).thresholds
    assert judge_host("h1", ns(1, parse_errors=1), None, th, expected_mode="DUAL", relative=False).verdict == PASS


def test_the_controller_reads_the_books_columns():
    from migrator.control.controller import _JUDGE_COLS
    assert {"residual", "settled", "parse_errors"} <= {c.key for c in _JUDGE_COLS}


def test_run_time_is_unknown_when_the_kernel_refused_statistics(tmp_path):
    off = tmp_path / "bpf_stats_enabled"
    off.write_text("0\n")
    assert stats_on(None, str(off)) is False
    assert stats_on(None, str(tmp_path / "missing")) is False
    assert stats_on(7, str(off)) is True  # our BPF_ENABLE_STATS fd is enough
    off.write_text("1\n")
    assert stats_on(None, str(off)) is True


@pytest.mark.kernel
@needs_root
def test_a_window_without_run_time_statistics_says_unknown_not_zero():
    with Probe("synthetic") as probe:
        pipe = Pipeline(probe)
        try:
            from migrator.dataplane.kstats import close_stats
            close_stats(pipe._stats_fd)  # as if the kernel had refused BPF_ENABLE_STATS
            pipe._stats_fd = None
            sysctl_on = stats_on(None)
            ws = pipe.close_window()
        finally:
            pipe.close()
    for w in ws:
        if sysctl_on:  # the operator's sysctl keeps them on: then they are known
            assert w.bpf_run_ns is not None
        else:
            assert (w.bpf_run_ns, w.bpf_run_cnt) == (None, None)
            assert "unknown" in w.extra["bpf_stats"]
