"""`bench fleet`: N simulated hosts against one database, through a real migration with a breach in CANARY.

What is real: the plan (a migration of N hosts in two slices, created as `init` does), the controller
(`Controller.run` in a process of its own, DbApplier, NOTIFY on PostgreSQL), and each host's
database link (`agent.link.DbLink`: its write path, one transaction per round trip carrying the
windows, the heartbeat and the mode reports, its push-or-poll reading of the desired mode). What is
simulated: the data path. Each host closes a perf and a ring window every `window_seconds` (the
same aligned index on every host, as real feeds close on the wall clock) with synthetic counts, and
follows its desired mode as `Feed._duties`/`set_mode` do: a changed desired mode is put in force at
once and reported through `link.report(mode, t0)`; the heartbeat reads the mode in force
(`link.mode_source`); with the link down it holds PERF unless RING was confirmed. One host of the
canary slice loses 5 % of its ring records while it runs RING: the controller rolls the migration
back after `rollback_after` breaching windows.

Many hosts share a process (threads: one link thread per host, one data-path thread per process),
a few processes share the fleet. On PostgreSQL every link of a process reads its desired mode
through one small pool and hears NOTIFY on one LISTEN connection of the process (a real host holds
one LISTEN connection of its own; a fleet of N costs the server N backends, more than the test
cluster's max_connections): a notification marks every link of the process, and each reads its row
as a real link does when notified. On SQLite each link watches `PRAGMA data_version` as it does on a
host (poll 250 ms instead of 10: with every host committing, data_version always moved, so each
poll is a read). Links count as down after max(10 s, 3 windows) without a round trip (a host's is 3 s):
a machine running the whole fleet is slower than one host.

Measured: controller rounds (the step's wall time, windows judged), windows persisted per second,
the database's commits per second (pg_stat_database) and its server's CPU (the postmaster's
utime+stime+cutime+cstime plus its live children's utime+stime, from /proc), the rollback latency
from the end of the deciding window to each canary host's PERF (its set_mode time, the `at` of its
report), and the simulated hosts' CPU (their processes' rusage) per host.
"""
from __future__ import annotations

import json
import math
import os
import resource
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from migrator.shared.records import ChannelWindow

BREACH_LOSS = 0.05  # the breaching host's ring loss rate (max_loss_rate defaults to 0.001)
ATTEMPTS = 10_000  # events per window and channel
NAME = "bench fleet"


def host_names(n: int) -> list[str]:
    return [f"h{i:05d}" for i in range(n)]


def plan(url: str, hosts: int, window_seconds: float, canary: int, rollback_after: int, min_clean: int):
    """The bench's plan: N hosts, a canary slice of `canary` hosts then all, short phases."""
    from migrator.config import parse_config

    return parse_config({
        "database": url, "hosts": host_names(hosts), "slices": [canary, "100%"],
        "window_seconds": window_seconds, "rollback_after": rollback_after,
        "phases": {k: {"min_clean_windows": min_clean} for k in ("dual_instrument", "shadow", "canary")},
        # Generous: a host late by a loaded machine must not be taken for lost (that is not what we measure).
        "agents": {"lost_after_windows": max(5, math.ceil(30 / window_seconds))},
    }, "<bench fleet>", Path.cwd())


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


# -- the simulated hosts (a worker process) ------------------------------------------------------

class _SharedPush:
    """One LISTEN connection and one small read pool for every link of a process (PostgreSQL)."""

    def __init__(self, url: str, migration_id: int, pool: int) -> None:
        from migrator.store import make_session_factory
        from migrator.store.push import channel

        # Reads only (a link's one prepared statement); `pool` connections for the whole process.
        self.reader = make_session_factory(create_engine(url, pool_size=pool, max_overflow=0, pool_timeout=60))
        self.links: list = []
        self.url, self.channel = url, channel(migration_id)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fleet-listen", daemon=True)

    def _run(self) -> None:
        engine = create_engine(self.reader.engine.url, poolclass=NullPool)
        while not self.stop.is_set():
            try:
                with engine.connect() as c:
                    c = c.execution_options(isolation_level="AUTOCOMMIT")
                    c.exec_driver_sql(f"LISTEN {self.channel}")
                    self._tell(["modes"])  # anything announced before the LISTEN: every link reads again
                    raw = c.connection.driver_connection
                    while not self.stop.is_set():
                        got = list(raw.notifies(timeout=0.5, stop_after=1))
                        if got:
                            got += list(raw.notifies(timeout=0))
                            self._tell([n.payload for n in got])
            except Exception:  # noqa: BLE001 -- the server went away: LISTEN again
                self._tell(["modes"])
                self.stop.wait(0.2)
        engine.dispose()

    def _tell(self, payloads: list[str]) -> None:
        for link in self.links:
            link.heard(payloads)  # what DbLink's own LISTEN connection hears
            link._nudge()  # noqa: SLF001


def _fleet_link(shared: _SharedPush | None):
    from migrator.agent.link import DbLink, Desired

    class FleetLink(DbLink):
        """DbLink whose desired-mode read and LISTEN are the process's (PostgreSQL); all else is DbLink's."""

        def read_desired(self) -> Desired:
            if shared is None:
                return super().read_desired()
            self._notified = False
            with shared.reader.engine.connect() as c:
                row = c.execute(self._desired_stmt).one()
                c.rollback()
            self.reads += 1
            self._safety_due = time.monotonic() + self.safety_read
            return Desired(row[0], row[1] is None, *tuple(row)[2:])  # the columns DbLink reads, in its order

        def _drain(self) -> bool:
            if shared is None:
                return super()._drain()
            return self._notified

    return FleetLink


class _Host:
    """A host's data path: its mode, the windows it closes, the switches it made (as a Feed does)."""

    def __init__(self, name: str, link, breaches: bool) -> None:
        self.name, self.link, self.breaches = name, link, breaches
        self.mode = "PERF"  # a program starts in PERF
        self.ring_confirmed = False
        self.switches: list[tuple[str, float]] = []
        link.mode_source = lambda: self.mode

    def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        t0 = time.time()
        self.mode = mode
        self.switches.append((mode, t0))
        self.link.report(mode, t0)

    def duties(self) -> None:
        """Feed._duties without self-protection: follow the desired mode, PERF without the database."""
        link = self.link
        if link.up and link.desired is not None:
            d = link.desired
            self.set_mode(d.mode)
            self.ring_confirmed = d.mode == "RING" and d.settled
        elif not link.up and self.mode != "PERF" and not self.ring_confirmed:
            self.set_mode("PERF")

    def close(self, index: int, start: float, end: float) -> None:
        lost = int(ATTEMPTS * BREACH_LOSS) if self.breaches and self.mode == "RING" else 0
        ws = [ChannelWindow(host=self.name, channel=ch, index=index, start=start, end=end, mode=self.mode,
                            attempts=ATTEMPTS, delivered=ATTEMPTS - (lost if ch == "ring" else 0),
                            lost=lost if ch == "ring" else 0, lag_p50_ms=0.4, lag_p99_ms=1.5, lag_max_ms=3.0,
                            consumer_cpu_s=0.001)
              for ch in ("perf", "ring")]
        self.link.send(ws)


def worker(spec: dict) -> dict:
    """Serve spec["hosts"] until stdin closes; returns their switches, the process's CPU and link counts."""
    from migrator.store import open_store

    url, mid, ws, base = spec["url"], spec["migration_id"], spec["window_seconds"], spec["base"]
    sf = open_store(url)
    engine = sf.engine
    pg = engine.dialect.name == "postgresql"
    shared = _SharedPush(url, mid, spec.get("read_pool", 4)) if pg else None
    Link = _fleet_link(shared)
    hosts = []
    for name in spec["hosts"]:
        # SQLite: every commit of any host moves data_version, so each link reads its row at every
        # poll; 200 links at the host's 10 ms would be 20,000 reads a second on 2 cores.
        link = Link(sf, mid, name, poll=0.01 if pg else spec.get("sqlite_poll", 0.25), lost_after=max(10.0, 3 * ws))
        hosts.append(_Host(name, link, name == spec.get("breacher")))
    if shared is not None:
        shared.links = [h.link for h in hosts]
        shared.thread.start()
    for h in hosts:
        h.link.start()
    sel = selectors.DefaultSelector()
    for h in hosts:
        sel.register(h.link.wake_fd, selectors.EVENT_READ, h)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    cpu0 = _rusage()
    print(json.dumps({"ready": True}), flush=True)
    index = max(0, math.floor((time.time() - base) / ws))
    next_close = base + (index + 1) * ws
    while not done.is_set():
        timeout = max(0.0, min(next_close - time.time(), 0.25))
        for key, _ in sel.select(timeout):
            try:
                os.eventfd_read(key.fd)
            except OSError:
                pass
        for h in hosts:
            h.duties()
        now = time.time()
        if now >= next_close:
            start = base + index * ws
            for h in hosts:
                h.close(index, start, start + ws)
            index += 1
            next_close = base + (index + 1) * ws
            if now > next_close:  # fell behind: skip ahead, never fake windows
                index = math.floor((now - base) / ws)
                next_close = base + (index + 1) * ws
    cpu1 = _rusage()
    for h in hosts:
        h.link.stop(flush_timeout=2.0)
    if shared is not None:
        shared.stop.set()
    return {"cpu_s": cpu1 - cpu0, "hosts": {h.name: {"switches": h.switches, "sent": h.link.sent,
                                                    "reads": h.link.reads} for h in hosts}}


def _rusage() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the controller (a process of its own) -------------------------------------------------------

def controller_proc(spec: dict) -> dict:
    """Run the real controller loop until the migration is final; returns each round's step time."""
    from migrator.control.controller import Controller
    from migrator.store import open_store

    sf = open_store(spec["url"])
    rounds: list[tuple[float, int, int]] = []  # (seconds, host verdicts written, indexes judged)

    class Timed(Controller):
        def step(self, session, now):  # noqa: ANN001
            t = time.perf_counter()
            res = super().step(session, now)
            rounds.append((time.perf_counter() - t, sum(len(g.hosts) for g in res.judged), len(res.judged)))
            return res

    ctl = Timed(sf, spec["migration_id"])
    phase = ctl.run(deadline=time.time() + spec["timeout"])
    sf.dispose()
    return {"phase": phase, "rounds": rounds}


def _child(role: str, spec: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "migrator.tools.bench.fleet", role, json.dumps(spec)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    role, spec = argv[0], json.loads(argv[1])
    out = worker(spec) if role == "worker" else controller_proc(spec)
    print(json.dumps(out), flush=True)


# -- the server's side ---------------------------------------------------------------------------

class _Server:
    """pg_stat_database commits of the bench's database and the server's CPU (PostgreSQL on this machine)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, poolclass=NullPool)
        with self.engine.connect() as c:
            self.db = c.scalar(text("SELECT current_database()"))
            try:
                ddir = c.scalar(text("SHOW data_directory"))
                self.postmaster = int(Path(ddir, "postmaster.pid").read_text().split()[0])
            except Exception:  # noqa: BLE001 -- not a superuser, or the server is elsewhere
                self.postmaster = None

    def commits(self) -> int:
        with self.engine.connect() as c:
            return int(c.scalar(text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d"), {"d": self.db}))

    def cpu_s(self) -> float | None:
        if self.postmaster is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        try:
            f = Path(f"/proc/{self.postmaster}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime (reaped backends)
        except OSError:
            return None
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                f = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(f[1]) == self.postmaster:
                total += int(f[11]) + int(f[12])
        return total / tick


# -- the run -------------------------------------------------------------------------------------

def run_fleet(url: str, hosts: int, *, window_seconds: float = 1.0, processes: int = 4, canary: int | None = None,
              rollback_after: int = 3, min_clean: int = 2, timeout: float | None = None) -> dict:
    """Drive N simulated hosts through a real migration with a breach in CANARY; returns the numbers."""
    from migrator.control.controller import start_migration
    from migrator.control.phases import DbApplier
    from migrator.store import api, open_store
    from migrator.store.models import Host, Transition, Window

    canary = canary or max(1, hosts // 10)
    cfg = plan(url, hosts, window_seconds, canary, rollback_after, min_clean)
    sf = open_store(url)
    pg = sf.dialect == "postgresql"
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, name=NAME, schema_fingerprint="bench").id
    names = host_names(hosts)
    breacher = names[0]  # slice 1's first host
    timeout = timeout or (window_seconds * (3 * (min_clean + 3) + rollback_after + 10) + 60)
    processes = max(1, min(processes, hosts))
    per = math.ceil(hosts / processes)
    base = math.ceil(time.time()) + 0.0
    workers = []
    for i in range(processes):
        chunk = names[i * per:(i + 1) * per]
        if chunk:
            workers.append(_child("worker", {"url": url, "migration_id": mid, "window_seconds": window_seconds,
                                             "base": base, "hosts": chunk, "breacher": breacher,
                                             "read_pool": 4}))
    ctl = None
    try:
        for w in workers:
            line = w.stdout.readline()
            if not line or not json.loads(line).get("ready"):
                raise RuntimeError(f"a simulated-host process did not start (exit {w.poll()})")
        server = _Server(url) if pg else None
        c0, s0 = (server.commits(), server.cpu_s()) if server else (None, None)
        t0 = time.time()
        start_migration(sf, mid, schema_fingerprint="bench", applier=DbApplier())
        ctl = _child("controller", {"url": url, "migration_id": mid, "timeout": timeout})
        # The controller ends at the final phase; then every host must report that phase's mode.
        try:
            out, _ = ctl.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            ctl.kill()
            out, _ = ctl.communicate()
        cres = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"phase": None, "rounds": []}
        settle = time.monotonic() + max(10.0, 5 * window_seconds)
        while time.monotonic() < settle:
            with sf() as s:
                rows = s.execute(select(Host.desired_mode, Host.applied_mode).where(Host.migration_id == mid)).all()
            if all(d == a for d, a in rows):
                break
            time.sleep(0.1)
        t1 = time.time()
        c1, s1 = (server.commits(), server.cpu_s()) if server else (None, None)
        if server:
            server.engine.dispose()
    finally:
        for w in workers:
            try:
                w.stdin.close()
            except OSError:
                pass
    results = []
    for w in workers:
        out = w.stdout.read()
        w.wait(60)
        results.append(json.loads(out.strip().splitlines()[-1]))
    span = t1 - t0
    with sf() as s:
        m = api.get_migration(s, mid)
        rows = s.execute(select(Host.name, Host.slice, Host.desired_mode, Host.applied_mode)
                         .where(Host.migration_id == mid)).all()
        nwin = s.scalar(select(func.count()).select_from(Window).where(Window.migration_id == mid))
        rec0, rec1 = s.execute(select(func.min(Window.recorded_at), func.max(Window.recorded_at))
                               .where(Window.migration_id == mid)).one()
        trans = s.execute(select(Transition).where(Transition.migration_id == mid).order_by(Transition.id)).scalars().all()
        back = next((t for t in trans if t.to_phase == "ROLLED_BACK"), None)
        deciding_end = None
        breach_verdicts = None
        if back is not None:
            ids = json.loads(back.window_ids)
            deciding_end = s.scalar(select(func.max(Window.end)).where(Window.id.in_(ids))) if ids else None
            from migrator.store.models import Verdict

            breach_verdicts = s.scalar(select(func.count()).select_from(Verdict).where(
                Verdict.migration_id == mid, Verdict.scope == "slice", Verdict.phase == "CANARY",
                Verdict.verdict == "breach"))
        path = [f"{t.to_phase}{'/' + str(t.to_slice) if t.to_phase == 'CANARY' else ''}" for t in trans]
    switched = {}  # canary hosts' time of PERF after the rollback
    for r in results:
        for name, h in r["hosts"].items():
            if back is not None:
                at = [t for mode, t in h["switches"] if mode == "PERF" and t >= back.created_at - 1e-3]
                if at:
                    switched[name] = at[0]
    lat = [t - deciding_end for t in switched.values()] if deciding_end is not None else []
    steps = [r[0] for r in cres["rounds"]]
    judging = [r[0] for r in cres["rounds"] if r[2]]
    host_cpu = sum(r["cpu_s"] for r in results)
    sf.dispose()
    res = {
        "database": sf.dialect, "hosts": hosts, "processes": len(workers),
        "window_seconds": window_seconds, "canary_hosts": canary, "rollback_after": rollback_after,
        "migration_id": mid, "phase": m.phase, "path": path, "seconds": round(span, 1),
        "breach_verdicts": breach_verdicts,
        "rollback_window_ids": len(json.loads(back.window_ids)) if back is not None else 0,
        "hosts_final": {"desired_PERF": sum(r[2] == "PERF" for r in rows),
                        "applied_PERF": sum(r[3] == "PERF" for r in rows)},
        "controller_rounds": len(steps), "round_p50_ms": _ms(_pct(steps, 50)), "round_p99_ms": _ms(_pct(steps, 99)),
        "judging_round_p50_ms": _ms(_pct(judging, 50)), "judging_round_p99_ms": _ms(_pct(judging, 99)),
        "windows": nwin,
        "windows_per_s": round(nwin / (rec1 - rec0), 1) if nwin and rec1 > rec0 else None,
        "db_commits_per_s": round((c1 - c0) / span, 1) if c0 is not None else None,
        "server_cpu_pct": round(100 * (s1 - s0) / span, 1) if s0 is not None and s1 is not None else None,
        "rollback_hosts": len(switched),
        "rollback_p50_ms": _ms(_pct(lat, 50)), "rollback_p99_ms": _ms(_pct(lat, 99)),
        "rollback_max_ms": _ms(max(lat) if lat else None),
        # where it went: the deciding window's end to the controller's intent, then to the hosts' PERF
        "decided_after_ms": _ms(back.created_at - deciding_end) if lat else None,
        "applied_after_decision_p99_ms": _ms(_pct([t - back.created_at for t in switched.values()], 99)) if lat else None,
        "host_cpu_pct_each": round(100 * host_cpu / span / hosts, 3),
        "hosts_cpu_pct_total": round(100 * host_cpu / span, 1),
    }
    res["targets"] = {"phases completed (ROLLED_BACK)": res["phase"] == "ROLLED_BACK",
                      "rollback p99 <= 500 ms": res["rollback_p99_ms"] is not None and res["rollback_p99_ms"] <= 500}
    return res



def render(res: dict) -> str:
    """The run as a few lines of text."""
    def v(x) -> str:  # noqa: ANN001
        return "-" if x is None else str(x)

    lines = [
        f"fleet: {res['hosts']} hosts in {res['processes']} processes on {res['database']}, windows of "
        f"{res['window_seconds']:g} s, canary {res['canary_hosts']} hosts: {' -> '.join(res['path'])} in {res['seconds']} s",
        f"controller rounds: {res['controller_rounds']}, step p50 {v(res['round_p50_ms'])} ms, p99 "
        f"{v(res['round_p99_ms'])} ms (rounds that judged: p50 {v(res['judging_round_p50_ms'])} ms, "
        f"p99 {v(res['judging_round_p99_ms'])} ms)",
        f"windows persisted: {res['windows']} ({v(res['windows_per_s'])}/s); database commits "
        f"{v(res['db_commits_per_s'])}/s, server CPU {v(res['server_cpu_pct'])} % of a core",
        f"rollback ({res['breach_verdicts']} breaching windows, rollback_after {res['rollback_after']}): "
        f"{res['rollback_hosts']} canary hosts on PERF after the deciding window's end: p50 "
        f"{v(res['rollback_p50_ms'])} ms, p99 {v(res['rollback_p99_ms'])} ms, max {v(res['rollback_max_ms'])} ms "
        f"(decided {v(res['decided_after_ms'])} ms after the window's end, PERF p99 "
        f"{v(res['applied_after_decision_p99_ms'])} ms after the decision)",
        f"hosts at the end: {res['hosts_final']['applied_PERF']} applied PERF, {res['hosts_final']['desired_PERF']} "
        f"desired PERF; simulated hosts' CPU {res['host_cpu_pct_each']} % of a core each "
        f"({res['hosts_cpu_pct_total']} % in all)",
    ]
    lines += [f"  {'ok  ' if ok else 'MISS'} {name}" for name, ok in res["targets"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
