"""`migrator advise` (issue 16, item 4): ring size from a recorded burst, the drops the configured size
caused, the wakeup policy within the lag budget, go / no-go per host, the CLI, the report section and
`plan`'s warning. Real SQLite (and PostgreSQL with the `backend` fixture) through the store."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.config import WAKEUPS, load_config
from migrator.control.advise import advise, ring_size_for, wakeup_advice, _windows
from migrator.control.phases import DbApplier, Phase, transition
from migrator.store import api, open_store

from conftest import T0, record, window

runner = CliRunner()
MiB = 1 << 20
BURST = int(3.1 * MiB)  # 3,250,585 bytes: the recorded burst
PLAN = ('hosts = ["h1", "h2"]\nslices = [1, 2]\n'
        "[buffers]\nring_bytes = 1048576\nperf_pages = 64\nwakeup = \"adaptive\"\nmax_delay_ms = 10.0\n")
# Where the recorded burst was seen: the index of h1's ring windows -> (peak_bytes, dropped_full).
H1_RING = {0: (200_000, 5), 1: (200_000, 0), 2: (BURST, 40), 3: (3_000_000, 60)}


def recorded(toml_file, body: str = PLAN):
    """A migration in DUAL_INSTRUMENT with 4 windows per host and channel: h1's ring holds the burst
    (peaks 3.1 MiB and 3.0 MiB against a 1 MiB ring, 40 + 60 refused) plus 5 refusals that did not
    fill it; h2's ring is clean and shows no ordering inversion where perf showed 2."""
    cfg = load_config(toml_file(body))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp", now=T0).id
    transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0)
    with sf() as s, s.begin():
        for i in range(4):
            peak, dropped = H1_RING[i]
            record(s, mid, window("h1", "ring", i, dropped=dropped, peak_bytes=peak, producer_ns=1500.0,
                                  consumer_cpu_s=0.001, extra={"cpus": 4} if i == 0 else {}))
            record(s, mid, window("h1", "perf", i, peak_bytes=60_000, producer_ns=750.0, consumer_cpu_s=0.001))
            record(s, mid, window("h2", "ring", i, peak_bytes=100_000, producer_ns=1500.0, consumer_cpu_s=0.001))
            record(s, mid, window("h2", "perf", i, peak_bytes=30_000, producer_ns=750.0, consumer_cpu_s=0.001,
                                  inversions=1 if i < 2 else 0))
    return cfg, sf, mid


def window_id(sf, mid, host, channel, index):
    from sqlalchemy import select

    from migrator.store.models import Window

    with sf() as s:
        return s.scalar(select(Window.id).where(Window.migration_id == mid, Window.host == host,
                                                Window.channel == channel, Window.index == index))


def test_ring_size_is_the_smallest_power_of_two_that_holds_twice_the_peak():
    assert ring_size_for(BURST) == 8 * MiB
    assert ring_size_for(4 * MiB) == 8 * MiB  # exactly twice fits
    assert ring_size_for(4 * MiB + 1) == 16 * MiB
    assert ring_size_for(0) == ring_size_for(100) == 4096  # a page at least


@pytest.mark.usefixtures("backend")
def test_a_recorded_burst_gives_the_size_that_holds_it_and_the_drops_the_configured_size_caused(toml_file):
    cfg, sf, mid = recorded(toml_file)
    with sf() as s:
        a = advise(s, mid)
    r = a.ring
    assert (r.configured_bytes, r.worst_peak_bytes, r.recommended_bytes) == (MiB, BURST, 8 * MiB)
    assert r.recommended_bytes >= BURST * 2
    assert r.evidence == [{"id": window_id(sf, mid, "h1", "ring", 2), "host": "h1", "index": 2,
                           "phase": "DUAL_INSTRUMENT", "peak_bytes": BURST, "name": "#3"}]  # windows from index 0
    assert r.saturated and not r.capped
    # The two windows that filled the 1 MiB ring refused 40 + 60; the 5 of window 0 did not fill it.
    assert (r.drops_caused, r.drops_avoided, r.drops_not_size) == (100, 100, 5)
    assert [(w["host"], w["index"], w["peak_bytes"], w["dropped_full"]) for w in r.drop_windows] == [
        ("h1", 2, BURST, 40), ("h1", 3, 3_000_000, 60)]
    # h1's first window says 4 CPUs: perf pins (64 + 1) pages x 4 CPUs x 4 KiB.
    assert (r.cpus, r.cpus_from) == (4, "windows")
    assert r.memory == {"configured_ring": MiB, "recommended_ring": 8 * MiB, "perf": 65 * 4 * 4096}
    assert r.ring_windows == 8


@pytest.mark.usefixtures("backend")
def test_wakeup_advice_minimises_producer_cost_within_the_lag_budget(toml_file):
    cfg, sf, mid = recorded(toml_file)
    with sf() as s:
        k = advise(s, mid).wakeup
        ws = _windows(s, mid)
    # adaptive measured 1,500 ns per event; no_wakeup and batched cost 65/1500 of it, force 7000/1500;
    # both clocked policies may hold a record one max_delay_ms (10 ms) longer than the 1 ms seen.
    batched = "batched" in WAKEUPS
    assert (k.configured, k.observed_ns, k.observed_lag_p99_ms, k.perf_ns, k.budget_ms) == (
        "adaptive", 1500.0, 1.0, 750.0, 260.0)
    assert k.recommended == ("batched" if batched else "no_wakeup")  # batched: same cost, idle reader sleeps
    assert k.saving_ns == 1435.0
    by = {p["policy"]: (p["predicted_ns"], p["predicted_lag_p99_ms"], p["fits"]) for p in k.policies}
    expected = {"adaptive": (1500.0, 1.0, True), "no_wakeup": (65.0, 11.0, True), "force_wakeup": (7000.0, 1.0, True)}
    if batched:
        expected["batched"] = (65.0, 11.0, True)
    assert by == expected
    assert k.evidence_windows == 8 and len(k.evidence) == 5
    assert all(w["producer_ns"] == 1500.0 for w in k.evidence)
    # A budget of 10.5 ms (max_delay_ms 10 + max_lag_p99_ms 0.5) leaves no room for a batch clock.
    tight = replace(cfg, thresholds=replace(cfg.thresholds, max_lag_p99_ms=0.5))
    t = wakeup_advice(tight, ws)
    assert (t.recommended, t.budget_ms, t.saving_ns) == ("adaptive", 10.5, 0.0)
    assert {p["policy"]: p["fits"] for p in t.policies}["no_wakeup"] is False


@pytest.mark.usefixtures("backend")
def test_go_no_go_per_host_on_the_same_events(toml_file):
    cfg, sf, mid = recorded(toml_file)
    with sf() as s:
        a = advise(s, mid)
    h1, h2 = a.hosts
    assert (h1.host, h1.verdict, h1.windows) == ("h1", "no-go", 4)
    assert h1.reasons == ["loss: ring 2.625% (105) > perf 0.000% (0)",
                          "no clear upside: producer cost, consumer CPU per event and memory not 10 % better, "
                          "no fewer ordering inversions"]
    assert h1.upsides == []
    assert (h2.host, h2.verdict, h2.reasons, h2.upsides) == ("h2", "go", [], ["ordering: ring 0 inversions vs perf 2"])
    assert h2.window_ids == sorted(window_id(sf, mid, "h2", c, i) for c in ("ring", "perf") for i in range(4))
    assert h2.ring == {"attempts": 4000, "delivered": 4000, "lost": 0, "loss_rate": 0.0, "lag_p99_ms": 1.0,
                       "inversions": 0, "cpu_us_per_event": 1.0, "producer_ns": 1500.0, "memory_bytes": MiB}
    assert h2.perf["memory_bytes"] == 65 * 4 * 4096 and h2.perf["inversions"] == 2
    assert a.go == "no-go"
    assert a.summary.startswith("no-go: keep perf (h1: loss: ring 2.625% (105) > perf 0.000% (0);")


@pytest.mark.usefixtures("backend")
def test_a_clean_run_is_a_go_and_the_size_is_not_raised(toml_file):
    cfg = load_config(toml_file(PLAN.replace("1048576", "16777216")))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp", now=T0).id
    transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0)
    with sf() as s, s.begin():
        for h in ("h1", "h2"):
            record(s, mid, window(h, "ring", 0, peak_bytes=50_000, producer_ns=65.0, consumer_cpu_s=0.001))
            record(s, mid, window(h, "perf", 0, peak_bytes=20_000, producer_ns=700.0, consumer_cpu_s=0.001))
    with sf() as s:
        a = advise(s, mid, cpus=2)
    assert (a.ring.recommended_bytes, a.ring.drops_caused, a.ring.drops_avoided, a.ring.cpus_from) == (
        131072, 0, 0, "given")
    assert a.go == "go" and [h.verdict for h in a.hosts] == ["go", "go"]
    assert a.hosts[0].upsides == ["producer cost: ring 65 ns vs perf 700 ns per event"]


@pytest.mark.usefixtures("backend")
def test_cli_json_text_and_exit_codes(toml_file):
    cfg, sf, mid = recorded(toml_file)
    r = runner.invoke(app, ["advise", "-c", cfg.path, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) == {"migration_id", "phase", "config_path", "source_hash", "ring", "wakeup", "hosts", "go",
                        "summary", "notes"}
    assert set(doc["ring"]) >= {"recommended_bytes", "configured_bytes", "worst_peak_bytes", "evidence",
                                "drops_caused", "drops_avoided", "drop_windows", "memory", "cpus", "cpus_from"}
    assert set(doc["wakeup"]) >= {"configured", "recommended", "budget_ms", "policies", "evidence"}
    assert set(doc["hosts"][0]) == {"host", "verdict", "reasons", "upsides", "windows", "window_ids", "ring", "perf"}
    assert (doc["migration_id"], doc["ring"]["recommended_bytes"], doc["ring"]["drops_caused"], doc["go"]) == (
        mid, 8 * MiB, 100, "no-go")
    r = runner.invoke(app, ["advise", "-c", cfg.path, "-m", str(mid), "--cpus", "2"])
    assert r.exit_code == 0, r.output
    assert "ring size: recommend 8 MiB (8388608 bytes; configured 1 MiB)" in r.stdout
    assert "the recommended size avoids 100" in r.stdout
    assert "perf 520 KiB (64 pages + 1 x 2 CPUs x 4 KiB; CPUs from given)" in r.stdout
    assert "go / no-go: no-go: keep perf" in r.stdout
    r = runner.invoke(app, ["advise", "-c", cfg.path, "-m", "999"])
    assert (r.exit_code, r.stderr) == (1, "Error: no migration 999 in this database\n")


def test_plan_warns_when_the_ring_is_below_the_last_advice(toml_file, tmp_path, monkeypatch):
    cfg, sf, mid = recorded(toml_file)
    sf.dispose()
    warning = (f"warning: buffers.ring_bytes = 1048576 is below the 8388608 bytes `migrator advise` "
               f"recommends from migration {mid} (worst ring burst seen x 2); see `migrator advise -m {mid}`\n")
    r = runner.invoke(app, ["plan", "-c", cfg.path])
    assert r.exit_code == 0, r.output
    assert r.stderr == warning
    monkeypatch.chdir(tmp_path)  # the same file by a relative path
    r = runner.invoke(app, ["plan", "-c", "canary.toml", "--json"])
    assert (r.exit_code, r.stderr) == (0, warning)
    json.loads(r.stdout)  # stdout stays one JSON document
    toml_file(PLAN.replace("1048576", "8388608"))  # the same file, now sized as advised: silent
    r = runner.invoke(app, ["plan", "-c", cfg.path])
    assert (r.exit_code, r.stderr) == (0, "")
    other = tmp_path / "sub"
    other.mkdir()
    (other / "canary.toml").write_text(PLAN)  # another plan, its own (missing) database: silent, none created
    r = runner.invoke(app, ["plan", "-c", str(other / "canary.toml")])
    assert (r.exit_code, r.stderr) == (0, "")
    assert not (other / "migrator.db").exists()


def test_the_report_has_an_advice_section_from_the_same_core(toml_file):
    from migrator.tools.report import build_report, collect

    cfg, sf, mid = recorded(toml_file)
    with sf() as s:
        data = collect(s, mid)
        page = build_report(s, mid)
        assert data.advice == advise(s, mid).to_dict()
    section = page[page.index('<h2 id="advice">'):page.index('<h2 id="hosts">')]
    assert "recommend <b>8 MiB</b> (configured 1 MiB); worst burst 3250585 bytes x 2 in h1 #3" in section
    assert "the recommended size avoids 100" in section
    assert f"recommend <b>{'batched' if 'batched' in WAKEUPS else 'no_wakeup'}</b> (configured adaptive" in section
    assert section.count("<tr><td>h") == 2 and "<td>h1</td><td>no-go</td>" in section
    assert "<td>h2</td><td>go</td>" in section


def test_advise_help_loads_no_store():
    from test_startup import loaded_after

    assert loaded_after("advise", "--help") == (0, set())


def test_a_migration_without_windows_says_so(toml_file):
    cfg = load_config(toml_file(PLAN))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, now=T0).id
    with sf() as s:
        a = advise(s, mid, cpus=2)
    assert (a.ring.recommended_bytes, a.ring.evidence, a.ring.drops_caused, a.go) == (None, [], 0, "no-data")
    assert a.wakeup.observed_ns is None and a.wakeup.evidence == []
    assert a.notes == ["no DUAL_INSTRUMENT, SHADOW or CANARY window recorded yet"]
    r = runner.invoke(app, ["advise", "-c", cfg.path])
    assert r.exit_code == 0, r.output
    assert "ring size: configured 1 MiB; no ring window measured its peak" in r.stdout
