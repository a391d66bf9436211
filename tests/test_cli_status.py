"""`migrator status` exit codes, --watch and --timeout, the per-host table, and `migrator list`.

Migrations are driven by the real controller and policy from recorded windows (as in
test_controller.py); the CLI runs through CliRunner or, for --watch, as a real process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.cli.views import _ts, render_status, status_document
from migrator.config import load_config
from migrator.control.controller import Controller
from migrator.control.phases import DbApplier, Phase, transition
from migrator.store import api, open_store

from conftest import T0, record, window

N = 3
PLAN = ('hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = 3\n'
        "[phases.dual_instrument]\nmin_clean_windows = 1\n"
        "[phases.shadow]\nmin_clean_windows = 1\n"
        "[phases.canary]\nmin_clean_windows = 2\n")
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("backend")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


class Drive:
    """A migration on a real store, moved only by the controller judging recorded windows."""

    def __init__(self, toml_file, to=()):
        self.path = toml_file(PLAN)
        self.cfg = load_config(self.path)
        self.sf = open_store(self.cfg.database_url)
        with self.sf() as s, s.begin():
            self.mid = api.create_migration(s, self.cfg, schema_fingerprint="fp1", now=T0).id
        for tgt, sl in to:
            transition(self.sf, self.mid, tgt, to_slice=sl, applier=DbApplier(), clock=lambda: T0)
        self.ctl = Controller(self.sf, self.mid, applier=DbApplier(), clock=lambda: T0)
        self.index = 0

    def windows(self, phase: str, verdict: str = "P", agents=("h1", "h2", "h3")) -> None:
        """Record one window index for the phase (P: clean, B: ring loses 5%), judge it, apply any move."""
        i, self.index = self.index, self.index + 1
        lost = 50 if verdict == "B" else 0
        with self.sf() as s, s.begin():
            for h in ("h1", "h2", "h3"):
                if phase == "DUAL_INSTRUMENT":
                    record(s, self.mid, window(h, "ring", i, lost=lost))
                elif phase == "SHADOW":
                    record(s, self.mid, window(h, "ring", i, lost=lost))
                    record(s, self.mid, window(h, "perf", i))
                elif phase == "CANARY1":  # h1 is the slice (RING), h2 and h3 the PERF baseline
                    if h == "h1":
                        record(s, self.mid, window(h, "ring", i, mode="RING", lost=lost, lag=2.5))
                    else:
                        record(s, self.mid, window(h, "perf", i, mode="PERF", lag=1.25))
                else:  # CANARY2: every host on RING
                    record(s, self.mid, window(h, "ring", i, mode="RING", lost=lost))
        with self.sf() as s, s.begin():
            res = self.ctl.step(s, T0 + 1000)
        if res.target:
            self.ctl.finish()
        self.agents_apply(agents)

    def agents_apply(self, hosts=("h1", "h2", "h3")) -> None:
        """The hosts' agents write their desired mode into the kernel and report it, as agents do."""
        with self.sf() as s, s.begin():
            for h in api.hosts(s, self.mid):
                if h["name"] in hosts:
                    api.report_applied(s, self.mid, h["name"], h["desired_mode"], now=T0 + 1000)

    def phase(self) -> str:
        with self.sf() as s:
            return api.get_migration(s, self.mid).phase

    def close(self) -> None:
        self.sf.dispose()


@pytest.fixture
def drive(toml_file):
    made = []

    def make(to=()):
        made.append(Drive(toml_file, to))
        return made[-1]
    yield make
    for d in made:
        d.close()


def complete(d: Drive) -> None:
    transition(d.sf, d.mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0)
    for phase in ("DUAL_INSTRUMENT", "SHADOW", "CANARY1", "CANARY1", "CANARY2", "CANARY2"):
        d.windows(phase)
    assert d.phase() == "COMPLETE"


CANARY1 = [(Phase.DUAL_INSTRUMENT, 0), (Phase.SHADOW, 0), (Phase.CANARY, 1)]


def test_exit_codes_of_each_final_phase_and_of_a_migration_on_its_way(drive):
    d = drive()
    r = run("status", "-c", d.path)
    assert (r.exit_code, r.stdout.splitlines()[0].split("   ")[0]) == (0, "migration 1: PLANNED")
    complete(d)
    for args in ([], ["--watch"], ["--timeout", "5m"], ["--json"]):
        r = run("status", "-c", d.path, *args)
        assert r.exit_code == 0, (args, r.output)
    assert json.loads(r.stdout)["phase"] == "COMPLETE"
    assert r.stderr == ""

    rb = drive(CANARY1)  # the same database: migration 2
    for v in "BB":
        rb.windows("CANARY1", v)
    r = run("status", "-c", rb.path)  # two breaches of three: still on its way, healthy enough
    assert (r.exit_code, r.stdout.splitlines()[1]) == (0, "window #2   breach streak 2/3, clean 0/2   no-data: hold")
    rb.windows("CANARY1", "B")
    assert rb.phase() == "ROLLED_BACK"
    for args in ([], ["--watch"], ["--json"], ["--watch", "--json", "--timeout", "1"]):
        r = run("status", "-c", rb.path, *args)
        assert r.exit_code == 1, (args, r.output)
    assert [json.loads(line)["phase"] for line in r.stdout.splitlines()] == ["ROLLED_BACK"]  # one document, then out
    lines = run("status", "-c", rb.path).stdout.splitlines()
    assert lines[0] == "migration 2: ROLLED_BACK   since " + _ts(T0)
    assert lines[1:3] == ["window #3   breach streak 3/3   no-data: hold",  # the rollback's streak, windows named
                          "streak windows (controller): h1 #1 #2 #3"]
    assert lines[5] == (f"ended: CANARY slice 1/2 -> ROLLED_BACK by auto at {_ts(T0)}: 3 consecutive breaching windows in "
                        "CANARY slice 1/2; last: h1: max_loss_rate")
    assert lines[6:8] == ["HOST  SLICE  MODE       VERDICT                 STREAK",
                          "h1    1      PERF/PERF  breach (max_loss_rate)  3/3"]
    assert lines[10:12] == ["HOST  RING loss  p99     emit ns  PERF loss  p99     emit ns  AGE",
                            "h1    5.000%     2.50ms  -        -          -       -        " + lines[11].split()[-1]]
    assert run("status", "-c", rb.path, "-m", "1").exit_code == 0  # the COMPLETE one, by id

    ab = drive(CANARY1)  # migration 3
    r = run("abort", "-c", ab.path, "--reason", "wrong hosts")
    assert r.exit_code == 0, r.output
    r = run("status", "-c", ab.path, "--watch")
    assert (r.exit_code, r.stdout.splitlines()[0].split("   ")[0]) == (1, "migration 3: ABORTED")


def test_timeout_ends_the_watch_with_exit_2(drive):
    d = drive(CANARY1)
    d.windows("CANARY1", "P")
    t0 = time.monotonic()
    # A refresh every 0.1 s for 1 s: at least the first and one more, unless a refresh took over 0.9 s.
    r = run("status", "-c", d.path, "--timeout", "1s", "--interval", "0.1", "--json")
    took = time.monotonic() - t0
    assert (r.exit_code, r.stderr) == (2, "Error: --timeout 1s expired: migration 1 is still CANARY slice 1/2\n")
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(docs) >= 2 and {doc["phase"] for doc in docs} == {"CANARY"}  # one document per refresh
    assert took >= 1.0
    r = run("status", "-c", d.path, "--timeout", "1000ms", "--interval", "0.1")  # plain text, --watch implied
    assert (r.exit_code, r.stderr) == (2, "Error: --timeout 1000ms expired: migration 1 is still CANARY slice 1/2\n")
    assert r.stdout.count("migration 1: CANARY slice 1/2") >= 2
    r = run("status", "-c", d.path, "--timeout", "5x")
    assert r.exit_code == 2 and "'5x' is not a duration" in r.stderr and "'--timeout'" in r.stderr


def test_watch_returns_when_the_migration_ends(drive):
    """A real `migrator status --watch` process: it refreshes while the controller works, and exits
    with ROLLED_BACK's code by itself once the third breach rolls the migration back."""
    d = drive(CANARY1)
    d.windows("CANARY1", "B")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "migrator", "status", "-c", str(d.path), "--watch", "--json",
                          "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(p.stdout.readline())
        assert (first["phase"], first["streak"]) == ("CANARY", 1)
        d.windows("CANARY1", "B")
        d.windows("CANARY1", "B")
        assert d.phase() == "ROLLED_BACK"
        t0 = time.monotonic()
        out, err = p.communicate(timeout=20)
        assert time.monotonic() - t0 < 5
    finally:
        p.kill()
        p.wait()
    docs = [first] + [json.loads(line) for line in out.splitlines()]
    assert (p.returncode, err) == (1, "")
    assert docs[-1]["phase"] == "ROLLED_BACK" and [doc["phase"] for doc in docs[:-1]] == ["CANARY"] * (len(docs) - 1)
    assert docs[-1]["ended"]["to"] == "ROLLED_BACK" and docs[-1]["ended"]["actor"] == "auto"


def test_host_table(drive):
    d = drive(CANARY1)
    for v in "PBB":
        d.windows("CANARY1", v, agents=("h1", "h2"))  # h3's agent has never reported a mode
    with d.sf() as s:
        rep = status_document(s, None)
    assert rep["hosts"][0]["ring"]["producer_ns"] is None  # these windows timed no emit
    rep["hosts"][0]["ring"]["producer_ns"], rep["hosts"][1]["perf"]["producer_ns"] = 412.4, 1380.0
    now = T0 + 10 + 2 + 1 + 4.5  # 4.5 s after index 2's windows ended
    text = render_status(rep, now=now)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.splitlines() == [
        "migration 1: CANARY slice 1/2   since " + _ts(T0),
        "window #3   breach streak 2/3, clean 0/2   no-data: hold",  # windows named #n (control/story.py)
        "streak windows (controller): h1 #2 #3",
        "last verdict: window #3 breach (h1: max_loss_rate)",
        "controller: not running",
        "HOST  SLICE  MODE       VERDICT                 STREAK",
        "h1    1      RING/RING  breach (max_loss_rate)  2/3",
        "h2    2      PERF/PERF  -                       0/3",
        "h3    2      PERF/-     -                       0/3",
        "HOST  RING loss  p99     emit ns  PERF loss  p99     emit ns  AGE",  # emit ns: per event, traced context
        "h1    5.000%     2.50ms  412      -          -       -        4.5s",
        "h2    -          -       -        0.000%     1.25ms  1380     4.5s",
        "h3    -          -       -        0.000%     1.25ms  -        4.5s",
    ]
    h1, h2, _ = rep["hosts"]
    assert (h1["desired_mode"], h1["streak"], h1["verdict"]["verdict"], h1["verdict"]["rule"], h1["ring"]["index"],
            h1["ring"]["loss_rate"], h1["ring"]["lag_p99_ms"], h1["perf"]) == (
        "RING", 2, "breach", "max_loss_rate", 2, 0.05, 2.5, None)
    assert (h2["desired_mode"], h2["streak"], h2["verdict"], h2["ring"], h2["perf"]["index"], h2["perf"]["lag_p99_ms"]) == (
        "PERF", 0, None, None, 2, 1.25)
    assert rep["streak"] == 2


def test_list_every_migration(drive, toml_file):
    d = drive(CANARY1)
    for v in "BBB":
        d.windows("CANARY1", v)
    with d.sf() as s, s.begin():
        api.create_migration(s, d.cfg, name="second try", now=T0 + 500)
    r = run("list", "-c", d.path, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(m["id"], m["name"], m["label"], m["hosts"], m["windows"], m["created_at"]) for m in rows] == [
        (1, f"migration from {d.path}", "ROLLED_BACK", 3, 9, T0), (2, "second try", "PLANNED", 3, 0, T0 + 500)]
    last = rows[0]["last_transition"]
    assert (last["from"], last["to"], last["actor"], last["status"]) == ("CANARY", "ROLLED_BACK", "auto", "confirmed")
    assert rows[1]["last_transition"] is None
    t0, t1 = _ts(T0), _ts(T0 + 500)
    assert run("list", "-c", d.path).stdout.splitlines() == [
        "ID  PHASE        CREATED              HOSTS  WINDOWS  LAST TRANSITION                                 NAME",
        f" 1  ROLLED_BACK  {t0}  3      9        {t0} CANARY -> ROLLED_BACK auto  migration from {d.path}",
        f" 2  PLANNED      {t1}  3      0        -                                               second try",
    ]
