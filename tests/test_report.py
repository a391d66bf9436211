"""`migrator report`: the HTML of a ROLLED_BACK and a COMPLETE migration made by the real controller.

Windows go in through the agents' write path (`record`), the real Controller judges them and
moves the phases (no hand-written transitions), the CLI runs through CliRunner, and one test
opens the file in a real headless Chromium and looks at the pixels of its charts.
"""
from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from browser import colour_count, render
from migrator.cli import app
from migrator.config import load_config
from migrator.errors import MigratorError
from migrator.store import api, open_store
from migrator.store.models import Migration

from conftest import T0, drive_migration, window

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

PLAN = ('hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = 3\n'
        "[thresholds]\nmax_parse_errors = 5\nmax_payload_mismatch = 5\n"
        "[phases.dual_instrument]\nmin_clean_windows = 2\n"
        "[phases.shadow]\nmin_clean_windows = 2\n"
        "[phases.canary]\nmin_clean_windows = 2\n")
NAME = "<b>lab</b> & co"  # text from the database must reach the page escaped


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def drive(sf, mid: int, *, breach_in_canary: bool) -> list[dict]:
    """The real controller through a migration (conftest.drive_migration). Ring lag 400 ms (>
    max_lag_p99_ms 250) on the canary host from CANARY on when breach_in_canary. Returns the
    windows recorded, as (index, host, channel, id)."""
    def make(h, ch, i, mode, on_ring, phase):
        lag = 400.0 if (breach_in_canary and on_ring) else (2.0 if ch == "ring" else 5.0)
        extra = {}
        if phase == "SHADOW" and ch == "ring" and h == "h2":
            extra = {"parse_errors": 2, "payload_mismatches": 1}  # within the limits of 5
        return window(h, ch, i, mode=mode, lag=lag, consumer_cpu_s=1000 * (2e-6 if ch == "ring" else 5e-6), **extra)

    return drive_migration(sf, mid, make)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One database, two migrations: 1 ends ROLLED_BACK in CANARY slice 1, 2 ends COMPLETE."""
    d = tmp_path_factory.mktemp("report")
    (d / "canary.toml").write_text(PLAN)
    cfg = load_config(d / "canary.toml")
    sf = open_store(cfg.database_url)
    runs = {}
    for breach in (True, False):
        with sf() as s, s.begin():
            mid = api.create_migration(s, cfg, name=NAME, schema_fingerprint="fp1", now=T0).id
        runs[mid] = drive(sf, mid, breach_in_canary=breach)
    with sf() as s:
        hist = {mid: api.history(s, mid) for mid in runs}
        phases = {mid: s.get(Migration, mid).phase for mid in runs}
    sf.dispose()
    gc.collect()
    return {"dir": d, "config": d / "canary.toml", "windows": runs, "history": hist, "phases": phases}


def _files(d: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def reports(db, tmp_path_factory):
    """The CLI run once per migration: 1 with -m, 2 as the newest with --json; the database files around it."""
    d = tmp_path_factory.mktemp("html")
    gc.collect()  # earlier in-process connections closed, as when a real CLI process exits
    before = _files(db["dir"])
    rb = run("report", "-c", db["config"], "-m", 1, "-o", d / "rb.html")
    ok = run("report", "-c", db["config"], "-o", d / "ok.html", "--json")
    gc.collect()
    return {"rb": rb, "ok": ok, "rb_path": d / "rb.html", "ok_path": d / "ok.html",
            "db_before": before, "db_after": _files(db["dir"])}


class Tables(HTMLParser):
    """Rows of every <table id=...> as lists of cell texts, and the attributes of each row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict, list[str]]]] = {}
        self._table = None
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "id" in a:
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = (a, [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(text: str) -> dict[str, list[tuple[dict, list[str]]]]:
    p = Tables()
    p.feed(text)
    return p.tables


def ids(db, mid, host, channel, indices):
    by = {(w["host"], w["channel"], w["index"]): w["id"] for w in db["windows"][mid]}
    return [by[(host, channel, i)] for i in indices]


HOSTS = ("h1", "h2", "h3")


def judged(db, mid, hosts, indices):
    """(id, host, index) of every judged host's ring window of those indexes: what a move names."""
    return [(ids(db, mid, h, "ring", [i])[0], h, i) for i in indices for h in hosts]


def test_the_controller_made_one_rollback_and_one_complete(db):
    assert db["phases"] == {1: "ROLLED_BACK", 2: "COMPLETE"}
    assert [(t["to"], t["to_slice"], t["actor"]) for t in db["history"][1]] == [
        ("DUAL_INSTRUMENT", 0, "manual"), ("SHADOW", 0, "auto"), ("CANARY", 1, "auto"), ("ROLLED_BACK", 0, "auto")]
    assert [(t["to"], t["to_slice"]) for t in db["history"][2]] == [
        ("DUAL_INSTRUMENT", 0), ("SHADOW", 0), ("CANARY", 1), ("CANARY", 2), ("COMPLETE", 0)]


def test_rolled_back_report_lists_every_transition_and_highlights_the_rollback(db, reports):
    r, out = reports["rb"], reports["rb_path"]
    assert (r.exit_code, r.stdout, r.stderr) == (0, f"{out}\n", "")
    text = out.read_text()
    rows = tables(text)["transitions"]
    # DUAL_INSTRUMENT and SHADOW judge every host; CANARY slice 1 judges h1 alone
    shadow, canary, rollback = (judged(db, 1, HOSTS, [0, 1]), judged(db, 1, HOSTS, [2, 3]),
                                judged(db, 1, ["h1"], [4, 5, 6]))

    def cell(ws):  # the windows named #n (index + 1 here: the first window is index 0), grouped per host
        by: dict[str, list[str]] = {}
        for _, h, k in ws:
            by.setdefault(h, []).append(f"#{k + 1}")
        return ", ".join(f"{h} {' '.join(names)}" for h, names in by.items())

    assert rows[1:] == [
        ({"id": "t1"}, ["1", "1970-01-12 13:46:40.000", "+0.0", "PLANNED", "DUAL_INSTRUMENT", "manual", "confirmed",
                        "start (schema fingerprint fp1)", "-"]),
        ({"id": "t2"}, ["2", "1970-01-12 13:46:52.000", "+12.0", "DUAL_INSTRUMENT", "SHADOW", "auto", "confirmed",
                        "2 clean windows in DUAL_INSTRUMENT (min 2)", cell(shadow)]),
        ({"id": "t3"}, ["3", "1970-01-12 13:46:54.000", "+14.0", "SHADOW", "CANARY slice 1/2", "auto", "confirmed",
                        "2 clean windows in SHADOW (min 2)", cell(canary)]),
        ({"id": "t4", "class": "rollback"},
         ["4", "1970-01-12 13:46:57.000", "+17.0", "CANARY slice 1/2", "ROLLED_BACK ⚠ ROLLBACK", "auto", "confirmed",
          "3 consecutive breaching windows in CANARY slice 1/2; last: h1: max_lag_p99_ms",
          cell(rollback)]),
    ]
    # The windows behind each move, with their numbers and verdicts; the rollback's rows in red.
    dec = tables(text)["deciding"]
    assert [(a.get("class"), c[:4] + c[8:]) for a, c in dec[1:]] == (
        [(None, ["2", f"#{k + 1}", h, "ring", "pass", "ok"]) for i, h, k in shadow]
        + [(None, ["3", f"#{k + 1}", h, "ring", "pass", "ok"]) for i, h, k in canary]
        + [("rollback", ["4", f"#{k + 1}", h, "ring", "breach", "max_lag_p99_ms"]) for i, h, k in rollback])
    assert [c[7] for _, c in dec[-3:]] == ["400.00"] * 3
    # windows are named #n for people; the row ids are in --json only
    assert not re.search(r"ring w\d", text)
    # The streak reached N: facts say so, and the rollback links to its row.
    assert "<dt>highest breach streak</dt><dd>3/3</dd>" in text
    assert ('<dt>rollback</dt><dd><a href="#t4">transition 4</a> (auto): 3 consecutive breaching windows in '
            "CANARY slice 1/2; last: h1: max_lag_p99_ms</dd>") in text
    assert '<span class="badge ROLLED_BACK">ROLLED_BACK</span>' in text


def test_report_shows_every_window_and_escapes_database_text(db, reports):
    text = reports["rb_path"].read_text()
    assert "&lt;b&gt;lab&lt;/b&gt; &amp; co" in text and NAME not in text
    win = tables(text)["windows"]
    body = [c for _, c in win[2:]]
    # 3 hosts x 7 indices (0..6: DUAL 0-1, SHADOW 2-3, CANARY slice 1 4-6)
    assert [(c[0], c[1], c[2], c[3]) for c in body[:7]] == [
        ("h1", "#1", "DUAL_INSTRUMENT", "DUAL"), ("h1", "#2", "DUAL_INSTRUMENT", "DUAL"), ("h1", "#3", "SHADOW", "DUAL"),
        ("h1", "#4", "SHADOW", "DUAL"), ("h1", "#5", "CANARY slice 1/2", "RING"),
        ("h1", "#6", "CANARY slice 1/2", "RING"), ("h1", "#7", "CANARY slice 1/2", "RING")]
    assert len(body) == 21
    # host, window, phase, mode, ring(attempts, loss, p99, cpu), perf(attempts, loss, p99, cpu), filled from ring,
    # parse, mismatch, verdict, rule
    assert body[2] == ["h1", "#3", "SHADOW", "DUAL", "1000", "0.000", "2.00", "2.000", "1000", "0.000", "5.00", "5.000",
                       "0", "0", "0", "pass", "ok"]
    assert body[7 + 2] == ["h2", "#3", "SHADOW", "DUAL", "1000", "0.000", "2.00", "2.000", "1000", "0.000", "5.00",
                           "5.000", "0", "2", "1", "pass", "ok"]
    assert body[4] == ["h1", "#5", "CANARY slice 1/2", "RING", "1000", "0.000", "400.00", "2.000", "-", "0", "0", "0",
                       "breach", "max_lag_p99_ms"]
    assert body[7 + 4] == ["h2", "#5", "CANARY slice 1/2", "PERF", "-", "1000", "0.000", "5.00", "5.000", "0", "0", "0",
                           "-", "-"]
    # Self-contained: no script, no stylesheet or image fetched, every link inside the page.
    assert "<script" not in text and "<link" not in text and "<img" not in text and "@import" not in text
    assert set(re.findall(r'href="(.)', text)) == {"#"}
    assert not re.search(r"url\((?!#)", text)
    # the only URLs left are the SVG namespace names, which nothing fetches
    assert set(re.findall(r'(\S+)="(https?://[^"]*)"', text)) == {("xmlns", "http://www.w3.org/2000/svg"),
                                                                  ("xmlns:xlink", "http://www.w3.org/1999/xlink")}
    assert text.count("http") == 2 * text.count("<svg")
    assert text.count("<svg") == 3 + 3  # timeline, mode lanes, streak, one per host


def test_complete_report_and_json_summary(db, reports):
    r, out = reports["ok"], reports["ok_path"]  # no -m: the newest, migration 2
    assert r.exit_code == 0, r.output
    summ = json.loads(r.stdout)
    lanes, notes, consumer = summ.pop("lanes"), summ.pop("notes"), summ.pop("consumer")
    # recorded windows carry no consumer's count: the account is empty, and says the sent count is unknown
    assert consumer == {h: {"sent": None, "acted": 0, "by_channel": {"perf": 0, "ring": 0}, "drops": 0, "expected": None,
                            "ok": None, "switches": 0, "sink_total": None, "sink_errors": 0, "verdict": None}
                        for h in HOSTS}
    deciding = {str(t["id"]): t["window_ids"] for t in db["history"][2] if t["window_ids"]}
    assert summ == {"path": str(out), "bytes": out.stat().st_size, "migration_id": 2, "phase": "COMPLETE",
                    "label": "COMPLETE", "hosts": ["h1", "h2", "h3"], "transitions": 5,
                    "windows": len(db["windows"][2]), "charts": 6, "rollback_after": 3, "max_streak": 0,
                    "rollback": None, "deciding": deciding,
                    "streak": {"by": "controller", "transition_id": None, "streak": 0, "rollback_after": 3,
                               "window_ids": [], "windows": [], "reason": None}}
    # transition ids run across migrations: 1-4 are migration 1's, start is 5
    # every judged host's window: all three in DUAL_INSTRUMENT, SHADOW and slice 2/2; h1 in slice 1/2
    assert deciding == {"6": [i for i, _, _ in judged(db, 2, HOSTS, [0, 1])],
                        "7": [i for i, _, _ in judged(db, 2, HOSTS, [2, 3])],
                        "8": ids(db, 2, "h1", "ring", [4, 5]),
                        "9": [i for i, _, _ in judged(db, 2, HOSTS, [6, 7])]}
    text = out.read_text()
    rows = tables(text)["transitions"]
    assert [c[3:6] for _, c in rows[1:]] == [["PLANNED", "DUAL_INSTRUMENT", "manual"],
                                            ["DUAL_INSTRUMENT", "SHADOW", "auto"],
                                            ["SHADOW", "CANARY slice 1/2", "auto"],
                                            ["CANARY slice 1/2", "CANARY slice 2/2", "auto"],
                                            ["CANARY slice 2/2", "COMPLETE", "auto"]]
    assert all("class" not in a for a, _ in rows) and 'class="rollback"' not in text
    assert '<span class="badge COMPLETE">COMPLETE</span>' in text
    # the lanes in --json: h1 on RING from slice 1, h2 and h3 on PERF in slice 1 and RING from slice 2
    assert {h: [(sg["mode"], sg["first"], sg["last"], sg["windows"]) for sg in ln["segments"]]
            for h, ln in lanes.items()} == {
        "h1": [("DUAL", "#1", "#4", 4), ("RING", "#5", "#8", 4)],
        "h2": [("DUAL", "#1", "#4", 4), ("PERF", "#5", "#6", 2), ("RING", "#7", "#8", 2)],
        "h3": [("DUAL", "#1", "#4", 4), ("PERF", "#5", "#6", 2), ("RING", "#7", "#8", 2)]}
    assert all(ln["gaps"] == [] for ln in lanes.values())
    # h2's ring line stops for the PERF slice and resumes on RING; its perf line stops there
    assert notes["h2"]["all"] == [
        "ring line stops at +14.0 s after #4: host on PERF from #5 (transition 7: SHADOW -> CANARY slice 1/2)",
        "ring line resumes at +16.0 s with #7: host on RING (on PERF before)",
        "perf line stops at +16.0 s after #6: host on RING from #7 (transition 8: CANARY slice 1/2 -> "
        "CANARY slice 2/2)"]
    assert "ring line resumes at +16.0 s with #7: host on RING (on PERF before)" in text  # under h2's chart


def test_rolled_back_report_has_a_mode_lane_per_host_and_says_why_lines_stop(db, reports):
    text = reports["rb_path"].read_text()
    assert '<figure class="chart" id="chart-lanes"><svg' in text
    lanes = tables(text)["lanes"]
    assert [a["data-host"] for a, _ in lanes[1:]] == ["h1", "h2", "h3"]
    modes = {a["data-host"]: re.findall(r'data-mode="(\w+)"', row) for a, _ in lanes[1:]
             for row in re.findall(rf'<tr data-host="{a["data-host"]}">.*?</tr>', text)}
    # h1, the canary: DUAL, RING in slice 1, then the PERF the rollback asked (no window after it)
    assert modes == {"h1": ["DUAL", "RING", "PERF"], "h2": ["DUAL", "PERF"], "h3": ["DUAL", "PERF"]}
    h1 = dict((a["data-host"], c) for a, c in lanes[1:])["h1"][1]
    assert h1 == ("DUAL #1..#4 (+10.0 to +14.0 s, 4 windows) → RING #5..#7 (+14.0 to +17.0 s, 3 windows) → "
                  "PERF asked by transition 4 (no agent) at +17.0 s (no window since)")
    # the empty stretches of lines are explained under each host's chart, windows named #n
    assert ('<ul class="notes" id="notes-h1"><li>perf line stops at +14.0 s after #4: host on RING from #5 '
            "(transition 3: SHADOW -&gt; CANARY slice 1/2)</li></ul>") in text
    assert ("<li>ring line stops at +14.0 s after #4: host on PERF from #5 (transition 3: SHADOW -&gt; CANARY "
            "slice 1/2)</li>") in text


def _synthetic(windows: list[dict], hosts=("h1",)):
    from migrator.tools.report.data import ReportData

    th = {"max_loss_rate": 0.001, "max_lag_p99_ms": 250.0, "max_parse_errors": 5, "max_payload_mismatch": 5,
          "min_events": 1}
    mig = {"id": 1, "name": "x", "phase": "DUAL_INSTRUMENT", "slice": 0, "label": "DUAL_INSTRUMENT", "slices": 1,
           "rollback_after": 3, "window_seconds": 1.0, "thresholds": th}
    return ReportData(mig, [{"name": h, "applied_mode": None, "applied_at": None} for h in hosts], [], windows, [],
                      first_index=min(w["index"] for w in windows))


def _w(i: int, ch: str, *, delivered: int, cpu_us: float | None, mode: str = "DUAL", lag: float | None = 2.0) -> dict:
    return {"id": 100 + i * 2 + (ch == "perf"), "host": "h1", "channel": ch, "index": 1000 + i, "start": T0 + i,
            "end": T0 + i + 1, "mode": mode, "phase": "DUAL_INSTRUMENT", "slice": 0, "attempts": delivered,
            "delivered": delivered, "lost": 0, "dropped": 0, "filled_from_ring": 0, "loss_rate": 0.0,
            "lag_p99_ms": lag, "consumer_cpu_s": None, "cpu_per_event_us": cpu_us, "parse_errors": 0,
            "payload_mismatches": 0, "residual": 0, "verdict": None, "rule": None}


def test_cpu_per_event_of_an_idle_channel_does_not_spike_the_chart():
    """A channel gone idle (3 events, the poll loop's CPU unchanged: 3,000 µs/event) has no point,
    and one towering point among ordinary ones is drawn on the top edge with a note."""
    from migrator.tools.report.charts import host_chart
    from migrator.tools.report.lanes import CPU_MIN_EVENTS, clip_top, cpu_points, host_notes

    ws = [_w(i, "ring", delivered=1000, cpu_us=2.0) for i in range(8)]
    ws += [_w(i, "ring", delivered=3, cpu_us=3000.0, lag=None) for i in (8, 9)]  # idle
    ws[3]["cpu_per_event_us"] = 80.0  # one real spike among 2 µs points
    ws += [_w(i, "perf", delivered=1000, cpu_us=5.0) for i in range(10)]
    xs, ys, skipped = cpu_points([w for w in ws if w["channel"] == "ring"], T0, 1)
    assert skipped == 2 and all(y != y for y in ys[8:]) and max(y for y in ys if y == y) == 80.0
    assert CPU_MIN_EVENTS == 100
    top, above, highest = clip_top([y for y in ys if y == y] + [5.0] * 10)
    assert (above, highest) == (1, 80.0) and top < 80.0
    data = _synthetic(ws)
    notes = host_notes(data, "h1", ws, 12.0)
    assert notes["cpu"] == [
        "ring: 2 windows with fewer than 100 events left out (an idle channel's polling CPU over a handful of "
        "events is no per-event cost)",
        f"1 point above {top:.3g} µs/event (5 x the median) drawn on the top edge, up to 80 µs/event"]
    assert notes["lag"] == ["ring: no lag p99 in 2 windows with events delivered (not measured)"]
    svg = host_chart(data, "h1", ws)
    assert svg.startswith("<svg")


def test_a_silent_agent_is_a_gap_in_its_lane():
    from migrator.tools.report.lanes import lane

    ws = [_w(i, "ring", delivered=1000, cpu_us=2.0) for i in (0, 1, 2, 6, 7)]
    ws[-1]["mode"] = ws[-2]["mode"] = "RING"
    segs, gaps = lane(ws, T0, 1.0)
    assert [(s.mode, s.first, s.last, s.windows) for s in segs] == [("DUAL", 1000, 1002, 3), ("RING", 1006, 1007, 2)]
    assert gaps == [(3.0, 6.0)]
    notes = host_notes_of(ws)
    assert "no windows from +3.0 s to +6.0 s: the agent was silent (stopped, restarted or cut off from the database)" \
        in notes["all"]


def test_a_line_that_stops_for_want_of_events_says_why():
    """Both channels are recorded in every mode on a real host: where one delivers nothing its lag and
    CPU lines stop, and the note says whether the mode does not use it or its consumer stalled."""
    ws = []
    for i in range(9):
        mode = "DUAL" if i < 3 else ("RING" if i < 6 else "PERF")
        stalled = i in (4, 5)
        ws.append(_w(i, "ring", delivered=0 if stalled or mode == "PERF" else 1000, cpu_us=None, mode=mode,
                     lag=None if mode == "PERF" else 2.0))
        ws[-1]["attempts"] = 0 if mode == "PERF" else 1000
        ws.append(_w(i, "perf", delivered=0 if mode == "RING" else 1000, cpu_us=None, mode=mode,
                     lag=None if mode == "RING" else 5.0))
        ws[-1]["attempts"] = 0 if mode == "RING" else 1000
    notes = host_notes_of(ws)["all"]
    assert notes == [
        "ring: no event delivered in #5..#6 (host on RING; 2000 attempted, none read: the consumer was stalled or "
        "cut off): its CPU line stops there",  # its lag p99 goes on: of records read late
        "ring: no event delivered in #7..#9 (host on PERF; the host on PERF does not use ring): its lag and CPU "
        "lines stop there",
        "perf: no event delivered in #4..#6 (host on RING; the host on RING does not use perf): its lag and CPU "
        "lines stop there"]


def host_notes_of(ws):
    from migrator.tools.report.lanes import host_notes

    return host_notes(_synthetic(ws), "h1", ws, 9.0)


def test_missing_and_empty_migrations_and_bad_output_are_errors(db, tmp_path):
    out = tmp_path / "x.html"
    r = run("report", "-c", db["config"], "-m", 7, "-o", out)
    assert (r.exit_code, r.stderr) == (1, "Error: no migration 7 in this database (fix: pass -m with one of 1, 2, "
                                          "or leave -m out for the newest)\n")
    # An initialised migration that never ran has nothing to chart.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "canary.toml").write_text(PLAN)
    assert run("init", fresh / "canary.toml").exit_code == 0
    r = run("report", "-c", fresh / "canary.toml", "-o", out)
    assert (r.exit_code, r.stderr) == (1, "Error: migration 1 (PLANNED) has no windows yet, so there is nothing to "
                                          "report (fix: run `migrator start` and one `migrator agent` per host until "
                                          "windows are recorded, or pass -m with a migration that ran)\n")
    r = run("report", "-c", tmp_path / "none.toml", "-o", out)
    assert r.exit_code == 1 and r.stderr.startswith("Error: ")
    r = run("report", "-c", db["config"], "-o", tmp_path / "no" / "such" / "r.html")
    assert (r.exit_code, r.stderr) == (1, f"Error: cannot write the report to {tmp_path}/no/such/r.html: directory "
                                          f"{tmp_path}/no/such does not exist (fix: create it with `mkdir -p "
                                          f"{tmp_path}/no/such` or pass -o with a file in a directory that exists "
                                          "and is writable)\n")
    r = run("report", "-c", db["config"], "-o", tmp_path)
    assert (r.exit_code, r.stderr) == (1, f"Error: cannot write the report to {tmp_path}: it is a directory (fix: "
                                          "pass -o with a file in a directory that exists and is writable, e.g. "
                                          f"-o {tmp_path}/report.html)\n")
    assert not out.exists()
    r = run("report", "-c", db["config"])
    assert r.exit_code == 2 and "--output" in r.stderr


def test_report_is_read_only(db, reports, tmp_path):
    assert (reports["rb"].exit_code, reports["ok"].exit_code) == (0, 0)
    assert sorted(reports["db_before"]) == ["canary.toml", "migrator.db"]
    assert reports["db_after"] == reports["db_before"]
    # and it never creates a database that is not there
    (tmp_path / "canary.toml").write_text(PLAN)
    r = run("report", "-c", tmp_path / "canary.toml", "-o", tmp_path / "r.html")
    assert (r.exit_code, r.stderr) == (1, f"Error: no database at {tmp_path}/migrator.db; run `migrator init` first\n")
    assert not (tmp_path / "migrator.db").exists() and not (tmp_path / "r.html").exists()


def test_a_failed_write_leaves_the_old_report_and_no_temp_file(tmp_path):
    from migrator.tools.report import write_report

    out = tmp_path / "r.html"
    out.write_text("old")
    # A file where the temp file's directory should be: the write fails before anything is renamed.
    with pytest.raises(MigratorError) as exc:
        write_report("new", tmp_path / "r.html" / "inner.html")
    assert str(exc.value) == (f"cannot write the report to {tmp_path}/r.html/inner.html: {tmp_path}/r.html is not a "
                              "directory (fix: pass -o with a file in a directory that exists and is writable)")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    assert write_report("new", out) == 3
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_importing_the_cli_loads_neither_matplotlib_nor_the_report():
    # Another command must not pay for matplotlib: importing the CLI loads neither.
    code = "import sys, migrator.cli; print('matplotlib' in sys.modules, 'migrator.tools.report' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout == "False False\n"


def test_report_renders_in_headless_chromium(reports, tmp_path):
    """The real browser draws the inline SVG charts: the screenshot carries the ring, perf and rollback colours."""
    from migrator.tools.report import BREACH, DUAL, PERF, RING

    out = reports["rb_path"]
    img, dom = render(out, tmp_path)
    shot = tmp_path / (out.stem + ".png")
    assert img.size == (1280, 2600)
    counts = {name: colour_count(img, c) for name, c in (("ring", RING), ("perf", PERF), ("rollback", BREACH),
                                                          ("dual", DUAL))}
    # The legend's swatches alone are 144 pixels of each: the rest is the charts' lines, markers and shading.
    assert counts["ring"] > 1000 and counts["perf"] > 1000 and counts["rollback"] > 1000, counts
    # DUAL is drawn in the mode lanes only: three hosts' bars (DUAL #1..#4 each)
    assert counts["dual"] > 3000, counts
    assert len(img.convert("RGB").getcolors(1 << 20)) > 200  # charts, not a blank or an error page
    # The browser parsed each chart as SVG: 6 <svg> roots and every path of the file in its DOM.
    text = out.read_text()
    assert dom.count("<svg") == 6 and dom.count("<path") == text.count("<path") > 300
    # the mode lanes: a chart and a row per host, as the browser parsed them
    assert '<figure class="chart" id="chart-lanes"><svg' in dom
    assert [m for m in re.findall(r'<tr data-host="(h\d)">', dom)] == ["h1", "h2", "h3"]
    assert dom.count('data-mode="DUAL"') == 3 and dom.count('data-mode="RING"') == 1
    if os.environ.get("MIGRATOR_REPORT_PNG"):  # to look at it: MIGRATOR_REPORT_PNG=/tmp/r.png
        shutil.copy(shot, os.environ["MIGRATOR_REPORT_PNG"])


def test_transition_status_names_the_hosts_it_could_not_reach():
    from migrator.tools.report.page import _status

    t = {"status": "confirmed", "hosts": {"h2": {"status": "lost"}, "h1": {"status": "applied"},
                                          "h3": {"status": "lost"}, "h4": {"status": "no agent"}}}
    assert _status(t) == "confirmed; lost: h2, h3 (not confirmed there)"
    assert _status({"status": "confirmed", "hosts": None}) == "confirmed"
