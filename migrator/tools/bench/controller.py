"""Controller benchmark: evaluate + persist windows for many hosts, and query times on a big history.

Part 1 runs the real path (record_windows bulk insert, Controller.step judging every index,
verdict rows written) for `hosts` x `windows` SHADOW windows (ring + perf per host and index) on a
fresh SQLite file, or, when the history database is a server URL (PostgreSQL), in that database as
a migration of its own that is deleted afterwards. Part 2 builds (or reuses) a migration holding
`db_windows` windows, runs ANALYZE after the bulk load (PostgreSQL plans `windows --last 100` with
a sequential scan until its statistics know the table: 129 ms before, 3.5 ms after, measured), and
times the queries behind `history` and `windows --last 100` through a read-only session.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import delete, func, select

from migrator.config import parse_config
from migrator.control.controller import Controller
from migrator.control.phases import Phase, transition
from migrator.errors import BenchError
from migrator.shared.passwords import hide_password
from migrator.store import api, database_errors, open_store, sqlite_path
from migrator.store.models import Migration, Window
from migrator.shared.records import ChannelWindow

T0 = 1_700_000_000.0
HISTORY_NAME = "bench controller: history"  # the migration part 2 builds and reuses
EVALUATE_NAME = "bench controller: evaluate"  # part 1's migration on a server database, deleted after


class _NoopApplier:
    def apply(self, session_factory, migration_id, modes) -> None:  # the bench has no agents
        return None


def _config(hosts: int, database: str):
    """The bench's plan on `database` (an SQLAlchemy URL)."""
    names = [f"h{i:05d}" for i in range(hosts)]
    return parse_config({
        "database": database, "hosts": names, "slices": [1, "100%"] if hosts > 1 else [1],
        "rollback_after": 3,
        # Stay in SHADOW for the whole run: the bench measures judging, not advancing.
        "phases": {"shadow": {"min_clean_windows": 10**9, "manual_gate": True}},
    }, "<bench>", Path.cwd())


def _time(fn, repeat: int = 5) -> float:
    """Median wall time of `fn` in milliseconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def evaluate_and_persist(url: str, hosts: int, windows: int, *, drop_after: bool = False) -> dict:
    """Record hosts x windows x {ring, perf} windows and judge each index as it completes.

    drop_after: delete the migration (and its windows and verdicts) at the end, to leave a shared
    database as it was."""
    cfg = _config(hosts, url)
    sf = open_store(url)
    db = hide_password(url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, name=EVALUATE_NAME, schema_fingerprint="bench", now=T0).id
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
    if drop_after:
        _delete_migration(sf, mid)
    sf.dispose()
    return {"hosts": hosts, "windows_per_host": windows, "windows": n, "host_verdicts": hosts * windows,
            "groups_judged": judged, "group_breaches": breaches, "seconds": round(elapsed, 3),
            "record_seconds": round(t_record, 3), "judge_seconds": round(t_step, 3),
            "windows_per_s": round(n / elapsed),
            # one controller round judges one index of every host: its cost against host count
            "judge_ms_per_round": round(1000 * t_step / windows, 2),
            "judge_us_per_host": round(1e6 * t_step / (windows * hosts), 1)}


def _delete_migration(sf, mid: int) -> None:
    # Children first: SQLite enforces ON DELETE CASCADE only with foreign_keys on, and says nothing if not.
    from migrator.store.models import Host, Lease, Migration as M, Slice, Transition, Verdict

    with sf() as s, s.begin():
        for model in (Verdict, Window, Transition, Host, Slice, Lease):
            s.execute(delete(model).where(model.migration_id == mid))
        s.execute(delete(M).where(M.id == mid))


def _history_migration(sf) -> tuple[int | None, int]:
    """The bench's history migration in this database (newest one) and its window count."""
    with sf() as s:
        mid = s.scalar(select(func.max(Migration.id)).where(Migration.name == HISTORY_NAME))
        have = s.scalar(select(func.count()).select_from(Window).where(Window.migration_id == mid)) if mid else 0
    return mid, have


def analyze(sf) -> float:
    """Refresh the planner's statistics (ANALYZE, on SQLite and PostgreSQL alike); returns its seconds."""
    t = time.perf_counter()
    with sf() as s, s.begin():
        s.connection().exec_driver_sql("ANALYZE")
    return time.perf_counter() - t


def build_history_db(url: str, db_windows: int, hosts: int = 1000, chunk: int = 50_000) -> dict:
    """A migration holding `db_windows` windows (written as agents write them), then ANALYZE; reused if big enough."""
    cfg = _config(hosts, url)
    sf = open_store(url)
    mid, have = _history_migration(sf)
    if have >= db_windows:
        sf.dispose()
        return {"reused": True, "windows": have, "build_seconds": 0.0, "analyze_seconds": 0.0}
    if mid is not None:  # too small for this run: built again
        _delete_migration(sf, mid)
    t = time.perf_counter()
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, name=HISTORY_NAME, schema_fingerprint="bench", now=T0).id
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
    build = time.perf_counter() - t
    took = analyze(sf)
    sf.dispose()
    return {"reused": False, "windows": written, "build_seconds": round(build, 3), "analyze_seconds": round(took, 3)}


def time_queries(url: str) -> dict:
    """Median ms of the queries behind `history`, `windows --last 100` (and by host / phase)."""
    sf = open_store(url, readonly=True)
    db = hide_password(url)
    with sf() as s:
        mid = s.scalar(select(func.max(Migration.id)).where(Migration.name == HISTORY_NAME))
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
    sf.dispose()
    return {k: round(v, 3) for k, v in out.items()}


def database_url(db: str | Path) -> str:
    """--db as an SQLAlchemy URL: a URL as is, a path as an SQLite file."""
    db = str(db)
    return db if "://" in db else f"sqlite:///{Path(db).resolve()}"


def bench_controller(*, hosts: int = 1000, windows: int = 100, db_windows: int = 1_000_000,
                     db: str | Path | None = None, workdir: Path | None = None) -> dict:
    """Run both parts; `db` (an SQLite path or any SQLAlchemy URL) keeps and reuses the big history."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        url = database_url(db if db is not None else Path(tmp) / "history.db")
        on_file = sqlite_path(url) is not None
        # Part 1 on a fresh database: a new SQLite file beside a file history; in the server's database otherwise.
        eval_url = database_url(Path(tmp) / "eval.db") if on_file else url
        with database_errors(eval_url):  # a driver error: one line naming the database
            part1 = evaluate_and_persist(eval_url, hosts, windows, drop_after=not on_file)
        with database_errors(url):
            build = build_history_db(url, db_windows)
            queries = time_queries(url)
    return {"evaluate": part1, "history_db": {"database": hide_password(str(db)) if db is not None else None,
                                              "backend": url.split(":", 1)[0].split("+")[0], **build},
            "queries": queries,
            "targets": {"windows_per_s >= 20000": part1["windows_per_s"] >= 20000,
                        "history < 10 ms": queries["history_ms"] < 10,
                        "windows --last 100 < 10 ms": queries["windows_last_100_ms"] < 10}}
