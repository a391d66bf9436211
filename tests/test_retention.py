"""Retention (issue 17, item 4): `[store] keep_windows` and `migrator prune` on both databases.

A real controller drives migration 1 to ROLLED_BACK (windows through the agents' write path);
migration 2 is left active in DUAL_INSTRUMENT with windows of the same age. Prune must roll up
and delete exactly migration 1's windows except the deciding ones, keep history, report and
what-if answering, leave migration 2 alone, and change nothing with --dry-run.
"""
from __future__ import annotations

import gc
import json
from collections import defaultdict

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from migrator.cli import app
from migrator.config import StoreSection, load_config
from migrator.control.phases import DbApplier, transition
from migrator.errors import ConfigError
from migrator.shared.vocab import Phase, parse_duration
from migrator.store import api, open_store
from migrator.store.models import Migration, Verdict, Window, WindowRollup
from migrator.store.retention import deciding_window_ids, prune, rollups

from conftest import T0, drive_migration, record, window

runner = CliRunner()
HOSTS = 'hosts = ["h1", "h2"]\nslices = [1, 2]\n'

PLAN = ('hosts = ["h1", "h2", "h3"]\nslices = [1, 3]\nrollback_after = 3\n'
        "[phases.dual_instrument]\nmin_clean_windows = 2\n"
        "[phases.shadow]\nmin_clean_windows = 2\n"
        "[phases.canary]\nmin_clean_windows = 2\n"
        '[store]\nkeep_windows = "1h"\n')


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def drive(sf, mid: int) -> None:
    """The real controller through a migration; the canary host's ring lag breaches (400 ms > 250)
    in CANARY, so it ends ROLLED_BACK."""
    def make(h, ch, i, mode, on_ring, phase):
        lag = 400.0 if on_ring else (2.0 if ch == "ring" else 5.0)
        return window(h, ch, i, mode=mode, lag=lag, lost=i % 3, filled_from_ring=i % 2, consumer_cpu_s=0.002)

    drive_migration(sf, mid, make)


def counts(sf) -> dict:
    """Every row count prune could change, per migration."""
    with sf() as s:
        out = {}
        for mid in (1, 2):
            out[mid] = {
                "windows": s.scalar(select(func.count()).select_from(Window).where(Window.migration_id == mid)),
                "host_verdicts": s.scalar(select(func.count()).select_from(Verdict).where(
                    Verdict.migration_id == mid, Verdict.scope == "host")),
                "other_verdicts": s.scalar(select(func.count()).select_from(Verdict).where(
                    Verdict.migration_id == mid, Verdict.scope != "host")),
                "rollups": s.scalar(select(func.count()).select_from(WindowRollup).where(
                    WindowRollup.migration_id == mid)),
            }
        return out


def expected_rollups(sf, mid: int, keep: set[int]) -> dict[tuple, dict]:
    """What the rollups of `mid` must hold, computed here from the window rows before the prune."""
    with sf() as s:
        hv = {wid: v for wid, v in s.execute(select(Verdict.window_id, Verdict.verdict).where(
            Verdict.migration_id == mid, Verdict.scope == "host"))}
        out: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
        for w in s.scalars(select(Window).where(Window.migration_id == mid)):
            if w.id in keep:
                continue
            d = out[(w.host, w.channel, w.phase, w.slice)]
            d["windows"] += 1
            for c in ("attempts", "delivered", "lost", "filled_from_ring"):
                d[c] += getattr(w, c)
            d["dropped"] += w.dropped_full + w.dropped_other
            d["first_index"] = min(d.get("first_index", 10**9), w.index)
            d["last_index"] = max(d.get("last_index", -1), w.index)
            d["lag_p99_max_ms"] = max(d.get("lag_p99_max_ms", 0.0), w.lag_p99_ms)
            v = hv.get(w.id)
            if v is not None:
                d[{"pass": "passes", "breach": "breaches"}.get(v, "no_data")] += 1
        return {k: dict(v) for k, v in out.items()}


def stored_rollups(sf, mid: int) -> dict[tuple, dict]:
    with sf() as s:
        return {(r["host"], r["channel"], r["phase"], r["slice"]): {
            "windows": r["windows"], "attempts": r["attempts"], "delivered": r["delivered"], "lost": r["lost"],
            "filled_from_ring": r["filled_from_ring"], "dropped": r["dropped_full"] + r["dropped_other"],
            "first_index": r["first_index"], "last_index": r["last_index"], "lag_p99_max_ms": r["lag_p99_max_ms"],
            **{c: r[c] for c in ("passes", "breaches", "no_data") if r[c]}}
            for r in rollups(s, mid)}


@pytest.fixture
def db(tmp_path, backend):
    """Migration 1 ROLLED_BACK by the controller; migration 2 active (DUAL_INSTRUMENT) with 2 indexes of windows."""
    (tmp_path / "canary.toml").write_text(PLAN)
    cfg = load_config(tmp_path / "canary.toml")
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        m1 = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    drive(sf, m1)
    with sf() as s, s.begin():
        m2 = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    transition(sf, m2, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0)
    with sf() as s, s.begin():
        for i in range(2):
            for h in ("h1", "h2", "h3"):
                for ch in ("ring", "perf"):
                    record(s, m2, window(h, ch, i))
    assert (m1, m2) == (1, 2)
    yield {"config": tmp_path / "canary.toml", "sf": sf}
    sf.dispose()
    gc.collect()


def test_prune_rolls_up_a_finished_migration_and_keeps_its_story(db):
    sf, c = db["sf"], db["config"]
    with sf() as s:
        assert s.get(Migration, 1).phase == "ROLLED_BACK"
        keep = deciding_window_ids(s, 1)
        hist = api.history(s, 1)
    assert keep, "the rollback names its deciding windows"
    before = counts(sf)
    expected = expected_rollups(sf, 1, keep)
    what_if_before = json.loads(run("what-if", "-c", c, "-m", 1, "--json").stdout)

    # --dry-run: the exact numbers, and not one row changed
    r = run("prune", "-c", c, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    dry = json.loads(r.stdout)
    assert dry["dry_run"] is True and dry["skipped_active"] == [2]
    [m] = dry["migrations"]
    assert m["migration_id"] == 1 and m["phase"] == "ROLLED_BACK"
    assert m["windows"] == before[1]["windows"] - len(keep)
    assert m["kept_deciding"] == len(keep)
    assert m["rollups"] == len(expected)
    n_hv = sum(d.get(k, 0) for d in expected.values() for k in ("passes", "breaches", "no_data"))
    assert m["host_verdicts"] == n_hv
    assert counts(sf) == before

    r = run("prune", "-c", c, "--json")
    assert r.exit_code == 0, r.output
    done = json.loads(r.stdout)
    assert done["dry_run"] is False and done["done"] is True and done["skipped_active"] == [2]
    assert done["windows"] == m["windows"]
    assert {k: v for k, v in done["migrations"][0].items() if k != "done"} == \
        {k: v for k, v in m.items() if k != "done"}
    after = counts(sf)
    assert after[2] == before[2], "the active migration is untouched"
    assert after[1] == {"windows": len(keep), "rollups": len(expected),
                        "host_verdicts": before[1]["host_verdicts"] - n_hv,
                        "other_verdicts": before[1]["other_verdicts"]}
    with sf() as s:
        left = set(s.scalars(select(Window.id).where(Window.migration_id == 1)))
        # slice verdicts stay; those that named a deleted window now name none
        dangling = s.scalar(select(func.count()).select_from(Verdict).where(
            Verdict.migration_id == 1, Verdict.window_id.is_not(None), Verdict.window_id.not_in(left)))
    assert left == keep and dangling == 0
    assert stored_rollups(sf, 1) == expected

    # history: unchanged, and every window id it names still resolves
    h = run("history", "-c", c, "-m", 1, "--json")
    assert h.exit_code == 0 and [{k: v for k, v in t.items() if k != "windows"} for t in json.loads(h.stdout)] == hist
    assert all([w["id"] for w in t["windows"]] == t["window_ids"] for t in json.loads(h.stdout))  # named, resolved
    assert {i for t in hist for i in t["window_ids"]} <= left
    # report: the deciding windows resolve; the rest is there as rollups
    out = db["config"].parent / "r.html"
    rep = run("report", "-c", c, "-m", 1, "-o", out, "--json")
    assert rep.exit_code == 0, rep.output
    summ = json.loads(rep.stdout)
    assert summ["windows"] == len(keep) + len(expected)
    assert summ["rollback"]["window_ids"] == hist[-1]["window_ids"]
    assert "rollup of" in out.read_text()
    from migrator.tools.report.data import collect
    with sf() as s:
        data = collect(s, 1)
    assert set(data.deciding) == keep
    # what-if: the actual rollback as before, and what the controller decided on the rolled-up windows
    wi = json.loads(run("what-if", "-c", c, "-m", 1, "--json").stdout)
    assert wi["actual_rollback"] == what_if_before["actual_rollback"] is not None
    assert what_if_before["rolled_up"] is None
    assert wi["rolled_up"]["windows"] == m["windows"]
    rec = wi["rolled_up"]["recorded_verdicts"]
    assert sum(p["pass"] + p["breach"] + p["no-data"] for p in rec) == n_hv
    assert [p["phase"] for p in rec][-1] == "CANARY" and any(p["breach"] for p in rec)
    text = run("what-if", "-c", c, "-m", 1)
    assert text.exit_code == 0 and "rolled up by `migrator prune`" in text.stdout
    # status of the pruned migration still answers
    assert run("status", "-c", c, "-m", 1).exit_code == 1  # ROLLED_BACK

    # again: nothing left to do
    again = json.loads(run("prune", "-c", c, "--json").stdout)
    assert again["windows"] == 0 and again["migrations"][0]["windows"] == 0
    assert counts(sf) == after


def test_batches_add_up_to_the_same_rollups_and_respect_keep(db):
    """Small batches, one transaction each, merge into the same rows as one pass; windows newer than
    the cutoff stay; an explicit active migration is skipped."""
    sf = db["sf"]
    with sf() as s:
        keep = deciding_window_ids(s, 1)
        ends = sorted(s.scalars(select(Window.end).where(Window.migration_id == 1)))
    cutoff = ends[len(ends) // 2]  # about half the windows are older
    with sf() as s:
        young = set(s.scalars(select(Window.id).where(Window.migration_id == 1, Window.end >= cutoff)))
    expected = expected_rollups(sf, 1, keep | young)
    now, keep_s = cutoff + 100.0, 100.0
    calls = 0
    while True:
        with sf() as s, s.begin():
            rep = prune(s, keep_s, now=now, batch=7, max_batches=1)
        calls += 1
        if rep.done:
            break
    n = sum(d["windows"] for d in expected.values())
    assert calls == -(-n // 7) + (1 if n % 7 == 0 else 0)
    assert stored_rollups(sf, 1) == expected
    with sf() as s:
        left = set(s.scalars(select(Window.id).where(Window.migration_id == 1)))
        rep = prune(s, keep_s, now=now, migration_id=2)
    assert left == young | {i for i in keep}
    assert rep.skipped_active == [2] and rep.migrations == []
    # the rest later, merged into the same rollup rows
    with sf() as s, s.begin():
        prune(s, 1.0, now=ends[-1] + 10.0)
    full = expected_rollups_after(expected, sf)
    assert set(full) >= set(expected)


def expected_rollups_after(partial: dict, sf) -> dict:
    """Rollups after the second prune: at least the rows of the first, each with more windows or as many."""
    now = stored_rollups(sf, 1)
    for k, d in partial.items():
        assert now[k]["windows"] >= d["windows"]
        assert now[k]["first_index"] == d["first_index"]
    return now


def test_store_keep_windows_parses_like_a_duration(toml_file):
    assert parse_duration("30d") == 30 * 86400 and parse_duration("1h30m") == 5400
    assert parse_duration(90) == 90.0 and parse_duration("500ms") == 0.5
    # The one grammar of canary.toml and the options: what --window, --timeout and --keep took is kept.
    assert parse_duration(" 2.5 ") == 2.5 and parse_duration("1 s") == 1.0 and parse_duration("1h 30m") == 5400
    for bad in ("fast", "1x", "-1", "1s2", "", True, float("nan")):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)
    plain = load_config(toml_file(HOSTS))
    assert plain.store == StoreSection(None)
    cfg = load_config(toml_file(HOSTS + '[store]\nkeep_windows = "7d"\n', name="b.toml"))
    assert cfg.store.keep_windows == 7 * 86400
    assert cfg.hash == plain.hash, "retention is not part of the plan"
    for bad in ('"soon"', '"-1h"', "0", "true"):
        with pytest.raises(ConfigError, match="store.keep_windows"):
            load_config(toml_file(HOSTS + f'[store]\nkeep_windows = {bad}\n', name="c.toml"))
    with pytest.raises(ConfigError, match="store.keep_window"):
        load_config(toml_file(HOSTS + '[store]\nkeep_window = "1d"\n', name="d.toml"))


def test_prune_without_keep_windows_says_how(tmp_path):
    (tmp_path / "canary.toml").write_text(HOSTS)
    assert run("init", tmp_path / "canary.toml").exit_code == 0
    r = run("prune", "-c", tmp_path / "canary.toml")
    assert r.exit_code != 0 and "store.keep_windows" in r.output and "--keep" in r.output
    r = run("prune", "-c", tmp_path / "canary.toml", "--keep", "soon")
    assert r.exit_code == 2 and "not a duration" in r.output
    r = run("prune", "-c", tmp_path / "canary.toml", "--keep", "30d")
    assert r.exit_code == 0 and "nothing to prune" in r.output
