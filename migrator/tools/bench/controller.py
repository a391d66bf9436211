"""Controller benchmark: evaluate + persist windows for many hosts, and query times on a big history.

Part 1 runs the real path (record_windows bulk insert, Controller.step judging every index,
verdict rows written) for `hosts` x `windows` SHADOW windows (ring + perf per host and index) on a
fresh SQLite file. Part 2 builds (or reuses) a database holding `db_windows` windows and times
the queries behind `history` and `windows --last 100` through a read-only session.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from migrator.config import parse_config
from migrator.control.controller import Controller
from migrator.control.phases import Phase, transition
from migrator.errors import BenchError
from migrator.store import api, database_errors, open_store
from migrator.store.models import Migration, Window
from migrator.shared.records import ChannelWindow

T0 = 1_700_000_000.0


class _NoopApplier:
    def apply(self, session_factory, migration_id, modes) -> None:  # the bench has no agents
        return None


def _config(hosts: int, db: Path):
    names = [f"h{i:05d}" for i in range(hosts)]
    return parse_config({
        "database": str(db), "hosts": names, "slices": [1, "100%"] if hosts > 1 else [1],
        "rollback_after": 3,
        # Stay in SHADOW for the whole run: the bench measures judging, not advancing.
        "phases": {"shadow": {"min_clean_windows": 10**9, "manual_gate": True}},
    }, "<bench>", db.parent)


def _time(fn, repeat: int = 5) -> float:
    """Median wall time of `fn` in milliseconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def evaluate_and_persist(db: Path, hosts: int, windows: int) -> dict:
    """Record hosts x windows x {ring, perf} windows and judge each index as it completes."""
    cfg = _config(hosts, db)
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="bench", now=T0).id
    for tgt in (Phase.DUAL_INSTRUMENT, Phase.SHADOW):
        transition(sf, mid, tgt, applier=_NoopApplier(), clock=lambda: T0)
    ctl = Controller(sf, mid, applier=_NoopApplier(), clock=lambda: T0)
    names = cfg.host_names
    judged = breaches = 0
    t_record = t_step = 0.0
    start = time.perf_counter()
    for i in range(windows):
        ws = []
        for k, h in enumerate(names):
            # One host breaches every 10th window: exercises breach paths, never N in a row.
            lost = 20 if (i % 10 == 5 and k == i % hosts) else 0
            for ch in ("ring", "perf"):
                ws.append(ChannelWindow(host=h, channel=ch, index=i, start=T0 + 1 + i, end=T0 + 2 + i, mode="DUAL",
                                       attempts=2000, delivered=2000 - lost, lost=lost if ch == "ring" else 0,
                                       lag_p50_ms=0.4, lag_p99_ms=1.5, lag_max_ms=3.0, consumer_cpu_s=0.01))
        t = time.perf_counter()
        with sf() as s, s.begin():
            api.record_windows(s, mid, ws, now=T0 + 2 + i)
        t_record += time.perf_counter() - t
        t = time.perf_counter()
        with sf() as s, s.begin():
            res = ctl.step(s, T0 + 2 + i)
        t_step += time.perf_counter() - t
        judged += len(res.judged)
        breaches += sum(g.verdict == "breach" for g in res.judged)
        if res.transition_id is not None:
            raise BenchError("controller", f"window {i} triggered transition {res.transition_id} in {db}; the "
                                           "bench must stay in SHADOW to measure judging alone",
                             "report this as a bug: the controller judged the bench's clean data as a reason to move")
    elapsed = time.perf_counter() - start
    n = hosts * windows * 2
    sf.kw["bind"].dispose()
    return {"hosts": hosts, "windows_per_host": windows, "windows": n, "host_verdicts": hosts * windows,
            "groups_judged": judged, "group_breaches": breaches, "seconds": round(elapsed, 3),
            "record_seconds": round(t_record, 3), "judge_seconds": round(t_step, 3),
            "windows_per_s": round(n / elapsed)}


def build_history_db(db: Path, db_windows: int, hosts: int = 1000, chunk: int = 50_000) -> dict:
    """A database with one migration holding `db_windows` windows (written as agents write them); reused if big enough."""
    cfg = _config(hosts, db)
    sf = open_store(cfg.database_url)
    with sf() as s:
        have = s.scalar(select(func.count()).select_from(Window))
    if have >= db_windows:
        sf.kw["bind"].dispose()
        return {"reused": True, "windows": have, "build_seconds": 0.0}
    t = time.perf_counter()
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="bench", now=T0).id
    for tgt in (Phase.DUAL_INSTRUMENT, Phase.SHADOW):
        transition(sf, mid, tgt, applier=_NoopApplier(), clock=lambda: T0)
    names = cfg.host_names
    rows: list[ChannelWindow] = []
    written = 0

    def flush() -> None:
        # The one window write path agents use, in big batches.
        with database_errors(sf), sf() as s, s.begin():
            api.record_windows(s, mid, rows, now=T0)
        rows.clear()

    i = 0
    while written < db_windows:
        for h in names:
            for ch in ("ring", "perf"):
                if written >= db_windows:
                    break
                rows.append(ChannelWindow(host=h, channel=ch, index=i, start=T0 + i, end=T0 + i + 1, mode="DUAL",
                                          attempts=2000, delivered=2000, lag_p50_ms=0.4, lag_p99_ms=1.5,
                                          lag_max_ms=3.0, consumer_cpu_s=0.01))
                written += 1
                if len(rows) >= chunk:
                    flush()
        i += 1
    if rows:
        flush()
    sf.kw["bind"].dispose()
    return {"reused": False, "windows": written, "build_seconds": round(time.perf_counter() - t, 3)}


def time_queries(db: Path) -> dict:
    """Median ms of the queries behind `history`, `windows --last 100` (and by host / phase)."""
    sf = open_store(f"sqlite:///{db}", readonly=True)
    with sf() as s:
        mid = s.scalar(select(func.max(Migration.id)))
        host = s.scalar(select(Window.host).where(Window.migration_id == mid).limit(1))
        out = {
            "history_ms": _time(lambda: api.history(s, mid)),
            "windows_last_100_ms": _time(lambda: api.list_windows(s, mid, last=100)),
            "windows_host_last_100_ms": _time(lambda: api.list_windows(s, mid, host=host, last=100)),
            "windows_phase_last_100_ms": _time(lambda: api.list_windows(s, mid, phase="SHADOW", last=100)),
        }
        got = len(api.list_windows(s, mid, last=100))
        if got != 100:
            raise BenchError("controller", f"`windows --last 100` on {db} returned {got} windows, not 100",
                             "delete that history database (or pass another --db) so the bench builds a fresh one")
    sf.kw["bind"].dispose()
    return {k: round(v, 3) for k, v in out.items()}


def bench_controller(*, hosts: int = 1000, windows: int = 100, db_windows: int = 1_000_000,
                     db_path: Path | None = None, workdir: Path | None = None) -> dict:
    """Run both parts; `db_path` keeps (and reuses) the big history database."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        eval_db = Path(tmp) / "eval.db"
        with database_errors(f"sqlite:///{eval_db}"):  # a driver error: one line naming the file
            part1 = evaluate_and_persist(eval_db, hosts, windows)
        big = Path(db_path) if db_path else Path(tmp) / "history.db"
        with database_errors(f"sqlite:///{big.resolve()}"):
            build = build_history_db(big, db_windows)
            queries = time_queries(big)
    return {"evaluate": part1, "history_db": {"path": str(db_path) if db_path else None, **build}, "queries": queries,
            "targets": {"windows_per_s >= 20000": part1["windows_per_s"] >= 20000,
                        "history < 100 ms": queries["history_ms"] < 100,
                        "windows --last 100 < 100 ms": queries["windows_last_100_ms"] < 100}}
