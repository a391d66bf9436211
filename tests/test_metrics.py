"""Prometheus metrics scraped over real HTTP and parsed with prometheus_client's parser: the
controller's gauges, an agent on the synthetic probe, and a whole lab run; counters equal the
sums of the windows stored in the database."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import lab_plan, record, window
from kernel_util import needs_root
from migrator.cli import app
from migrator.control.metrics import COUNTERS, start_migration_metrics
from migrator.control.phases import DbApplier, transition
from migrator.shared.records import LAG_BUCKETS_LE
from migrator.shared.vocab import Phase
from migrator.store import api
from migrator.store.models import Migration, Transition, Window

FIELDS = {name + "_total": f for name, f, _ in COUNTERS}


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value} of every sample at url."""
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def db_sums(sf, mid, host: str, channel: str, k: int) -> dict[str, int]:
    """Sums of the first k stored windows (by index) of host/channel, and the delivered of the
    window after them (None when there is none yet)."""
    with sf() as s:
        ws = s.scalars(select(Window).where(Window.migration_id == mid, Window.host == host, Window.channel == channel)
                       .order_by(Window.index).limit(k + 1)).all()
    assert len(ws) >= k
    ws, after = ws[:k], ws[k:]
    sums = {f: sum(getattr(w, f) for w in ws) for f in ("attempts", "delivered", "lost", "parse_errors",
                                                         "payload_mismatches", "filled_from_ring", "dropped_full",
                                                         "dropped_other")}
    sums["windows"] = k
    # the gauges: the last of these windows that measured them
    for f in ("producer_ns", "peak_bytes"):
        sums[f] = next((getattr(w, f) for w in reversed(ws) if getattr(w, f) is not None), None)
    lag = [json.loads(w.extra).get("lag_buckets") for w in ws]
    sums["lag_buckets"] = [sum(col) for col in zip(*[b for b in lag if b is not None])]
    sums["lag_sum_s"] = sum(json.loads(w.extra).get("lag_sum_s", 0.0) for w in ws)
    # records of an earlier epoch read in a window: in its histogram, in no window's delivered
    sums["late"] = sum(json.loads(w.extra).get(f, 0) for w in ws for f in ("late", "before_start"))
    sums["next_delivered"] = after[0].delivered if after else None
    return sums


def check_host(m, sf, mid, host: str, channel: str) -> int:
    """The scraped counters of host/channel equal the stored windows' sums; returns its delivered."""
    key = (("channel", channel), ("host", host), ("migration", str(mid)))  # host series name their migration
    k = int(m["migrator_windows_total"][key])
    sums = db_sums(sf, mid, host, channel, k)
    for name, f in FIELDS.items():
        assert m[name][key] == sums[f], (name, host, channel)
    for cause in ("full", "other"):
        assert m["migrator_events_dropped_total"][(("cause", cause), *key)] == sums[f"dropped_{cause}"]
    for f in ("producer_ns", "peak_bytes"):
        assert m.get(f"migrator_{f}", {}).get(key) == sums[f], (f, host, channel)
    buckets = [m["migrator_lag_seconds_bucket"][(("channel", channel), ("host", host), ("le", le),
                                                 ("migration", str(mid)))]
               for le in [repr(x) for x in LAG_BUCKETS_LE[:-1]] + ["+Inf"]]
    assert buckets == sorted(buckets)  # cumulative
    assert buckets == sums["lag_buckets"]  # the stored windows' histograms, added up
    assert m["migrator_lag_seconds_count"][key] == buckets[-1]
    assert m["migrator_lag_seconds_sum"][key] == pytest.approx(sums["lag_sum_s"])
    # Like with like: a window's histogram counts the records READ while it was open; its
    # `delivered` the records of its EPOCH (pipeline.close_window's books). Each record read is in
    # exactly one of: its own window's delivered, a window's `late` (or `before_start`: an earlier
    # epoch's record, in no window's books), or, read during the grace period after the epoch
    # moved on, the NEXT window's delivered. So over the first k windows
    #     histogram count = delivered + late + carried,
    # where `carried` (the records of window k+1's epoch read before window k closed) is at least 0
    # and at most window k+1's delivered. (Once 5,568 read against 5,452 delivered: 116 carried
    # and late, past a 2 % tolerance; there is no tolerance now.)
    carried = buckets[-1] - sums["delivered"] - sums["late"]
    assert carried >= 0, (host, channel, buckets[-1], sums["delivered"], sums["late"])
    if sums["next_delivered"] is not None:
        assert carried <= sums["next_delivered"], (host, channel, buckets[-1], sums["delivered"], sums["late"],
                                                   sums["next_delivered"])
    return sums["delivered"]


def test_bad_metrics_addr_is_a_usage_error():
    r = CliRunner().invoke(app, ["agent", "--host", "h1", "--metrics-addr", "9464"])
    assert r.exit_code == 2
    assert "'9464': expected HOST:PORT, e.g. 127.0.0.1:9464" in " ".join(r.stderr.replace("│", " ").split())


def test_controller_gauges_follow_the_database(config, session_factory):
    sf = session_factory
    with sf() as s, s.begin():
        mid = api.create_migration(s, config, schema_fingerprint="fp").id
    ep = start_migration_metrics("127.0.0.1:0", sf, mid)
    try:
        m = scrape(ep.url)
        mig = (("migration", str(mid)),)
        assert m["migrator_database_up"] == {(): 1.0}
        assert {k: v for k, v in m["migrator_phase"].items() if v} == {(("migration", str(mid)), ("phase", "PLANNED")): 1.0}
        assert len(m["migrator_phase"]) == len(Phase)
        assert (m["migrator_canary_slice"][mig], m["migrator_canary_slices"][mig], m["migrator_breach_streak"][mig],
                m["migrator_rollback_after"][mig], m["migrator_transitions_total"][mig]) == (0, 2, 0, 3, 0)
        transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), actor="manual", reason="go")
        transition(sf, mid, Phase.SHADOW, applier=DbApplier(), actor="manual", reason="go")
        transition(sf, mid, Phase.CANARY, to_slice=1, applier=DbApplier(), actor="manual", reason="go")
        with sf() as s, s.begin():
            s.get(Migration, mid).streak = 2
        m = scrape(ep.url)
        assert m["migrator_phase"][(("migration", str(mid)), ("phase", "CANARY"))] == 1.0
        assert sum(m["migrator_phase"].values()) == 1.0
        assert (m["migrator_canary_slice"][mig], m["migrator_breach_streak"][mig],
                m["migrator_transitions_total"][mig]) == (1, 2, 3)
        assert "migrator_events_attempts_total" not in m  # per host: the agents' (or the lab's)
    finally:
        ep.close()


def test_lab_collector_sums_the_stored_windows(config, session_factory):
    sf = session_factory
    with sf() as s, s.begin():
        mid = api.create_migration(s, config, schema_fingerprint="fp").id
    transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), actor="manual", reason="go")
    with sf() as s, s.begin():
        for i in range(3):
            w = window("h1", "ring", i, attempts=100 + i, lost=i, dropped=2 * i, parse_errors=i)
            w.extra.update(lag_buckets=[0] * 5 + [w.delivered] * 12, lag_sum_s=0.25)
            record(s, mid, w)
        record(s, mid, window("h2", "perf", 0, attempts=7))
    ep = start_migration_metrics("127.0.0.1:0", sf, mid, per_host=True)
    try:
        m = scrape(ep.url)
    finally:
        ep.close()
    assert check_host(m, sf, mid, "h1", "ring") == 100 + 101 + 102 - 3 - 6
    mig = ("migration", str(mid))
    assert m["migrator_lag_seconds_sum"][(("channel", "ring"), ("host", "h1"), mig)] == 0.75
    assert m["migrator_events_attempts_total"][(("channel", "perf"), ("host", "h2"), mig)] == 7
    assert (("channel", "perf"), ("host", "h2"), mig) not in m["migrator_lag_seconds_count"]  # no buckets stored
    assert m["migrator_mode"] == {(("host", h), mig, ("mode", mode)): 1.0 if mode == "DUAL" else 0.0
                                  for h in ("h1", "h2") for mode in ("PERF", "DUAL", "RING")} or \
        m["migrator_mode"] == {(("host", h), mig, ("mode", mode)): 0.0 for h in ("h1", "h2")
                               for mode in ("PERF", "DUAL", "RING")}  # no agent has applied a mode yet
    # every host series names its migration
    assert all(dict(k).get("migration") == str(mid) for name, series in m.items()
               if name.startswith(("migrator_events_", "migrator_lag_seconds", "migrator_mode", "migrator_windows"))
               for k in series)


def test_agent_series_carry_the_migration_they_serve():
    """An agent's host series carry `migration` (its id); a feed without a database has no such label."""
    from migrator.agent.metrics import AgentMetrics

    for mid, mig in ((7, (("migration", "7"),)), (None, ())):
        am = AgentMetrics("127.0.0.1:0", "h1", mid)
        am.mode_source = lambda: "DUAL"
        try:
            am.observe([window("h1", "ring", 0, attempts=10)])
            m = scrape(am.url)
        finally:
            am.close()
        assert m["migrator_events_attempts_total"] == {(("channel", "ring"), ("host", "h1"), *mig): 10}
        assert m["migrator_events_dropped_total"][(("cause", "full"), ("channel", "ring"), ("host", "h1"), *mig)] == 0
        assert m["migrator_mode"][(("host", "h1"), *mig, ("mode", "DUAL"))] == 1.0


@pytest.mark.kernel
@needs_root
def test_agent_metrics_equal_its_stored_windows(started):
    from migrator.agent.loop import Agent

    cfg, sf, mid = started
    agent = Agent(sf, cfg, "h1", mid, metrics_addr="127.0.0.1:0")
    stop = threading.Event()
    t = threading.Thread(target=agent.run, kwargs={"stop": stop, "deadline": time.time() + 30})
    t.start()
    try:
        end = time.monotonic() + 20
        while agent.metrics is None or agent.mode != "DUAL" or len(windows(sf, mid)) < 6:
            assert time.monotonic() < end, "agent did not report windows in time"
            time.sleep(0.05)
        url = agent.metrics.url
        m = scrape(url)
        # the scrape may count windows the link thread has not written yet: wait for them, and for
        # the one after them (check_host bounds what the last one carried by its delivered)
        end = time.monotonic() + 15
        while any(len(windows(sf, mid, ch)) < m["migrator_windows_total"][(("channel", ch), ("host", "h1"),
                                                                            ("migration", str(mid)))] + 1
                  for ch in ("perf", "ring")):
            assert time.monotonic() < end
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(15)
    mig = ("migration", str(mid))  # the agent labels its series with the migration it serves
    assert set(m["migrator_events_attempts_total"]) == {(("channel", ch), ("host", "h1"), mig) for ch in ("perf", "ring")}
    delivered = [check_host(m, sf, mid, "h1", ch) for ch in ("perf", "ring")]
    assert min(delivered) > 0
    assert m["migrator_mode"] == {(("host", "h1"), mig, ("mode", "PERF")): 0.0,
                                  (("host", "h1"), mig, ("mode", "DUAL")): 1.0,
                                  (("host", "h1"), mig, ("mode", "RING")): 0.0}
    with pytest.raises(OSError):  # the endpoint closed with the agent
        scrape(url)


def windows(sf, mid, channel: str | None = None):
    with sf() as s:
        q = select(Window).where(Window.migration_id == mid)
        if channel:
            q = q.where(Window.channel == channel)
        return s.scalars(q).all()


LAB_PLAN = lab_plan(hosts=2, slices='[1, "100%"]', extra='[notify]\nwebhooks = ["{url}"]\n')


@pytest.mark.kernel
@pytest.mark.slow
@needs_root
def test_lab_run_metrics_and_notifications(tmp_path):
    from migrator.config import load_config
    from migrator.store import open_store
    from migrator.tools.lab.run import run_lab_migration
    from test_notify import Hook

    hook = Hook()
    (tmp_path / "base.toml").write_text(LAB_PLAN.format(url=hook.url))
    base = load_config(tmp_path / "base.toml")
    lines: list[str] = []
    scrapes: list[dict] = []
    done = threading.Event()

    def scraper():
        while not done.is_set():
            url = next((ln.split()[-1] for ln in lines if ln.startswith("metrics: ")), None)
            if url:
                try:
                    scrapes.append(scrape(url))
                except OSError:
                    pass
            time.sleep(0.5)

    th = threading.Thread(target=scraper, daemon=True)
    th.start()
    try:
        res = run_lab_migration(base, tmp_path / "run", prefix=f"mtx{os.getpid() % 1000}x", say=lines.append,
                                timeout=90, metrics_addr="127.0.0.1:0")
    finally:
        done.set()
        th.join(5)
        hook.close()
    assert res.phase == "COMPLETE"
    assert len(scrapes) >= 10
    sf = open_store(res.database_url)
    mid, mig = res.migration_id, (("migration", str(res.migration_id)),)
    last = scrapes[-1]
    assert last["migrator_database_up"] == {(): 1.0}
    assert last["migrator_phase"][(*mig, ("phase", "COMPLETE"))] == 1.0
    assert last["migrator_transitions_total"][mig] == len(res.history) == 5
    seen = {(k, s["migrator_canary_slice"][mig]) for s in scrapes for k, v in s["migrator_phase"].items() if v}
    assert ((*mig, ("phase", "CANARY")), 1) in seen
    for h in res.hosts:
        assert last["migrator_mode"][(("host", h), *mig, ("mode", "RING"))] == 1.0
        for ch in ("perf", "ring"):
            assert check_host(last, sf, mid, h, ch) > 0
    # every counter is monotonic across the run's scrapes
    for a, b in zip(scrapes, scrapes[1:]):
        for name in FIELDS:
            assert all(b[name][k] >= v for k, v in a.get(name, {}).items())
    # and every transition was posted once, in order
    with sf() as s:
        ids = s.scalars(select(Transition.id).where(Transition.migration_id == mid).order_by(Transition.id)).all()
    assert [p["body"]["transition_id"] for p in hook.posts] == ids
    assert [p["body"]["to"] for p in hook.posts] == ["DUAL_INSTRUMENT", "SHADOW", "CANARY", "CANARY", "COMPLETE"]
