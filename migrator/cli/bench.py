"""`migrator bench ...`: side-by-side measurements on the real kernel (loads BPF; needs root)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from migrator.cli import app
from migrator.cli._options import check_perf_pages, config_option, db_option, json_option, window_option
from migrator.cli._out import emit_json
from migrator.errors import OptionError

bench_app = typer.Typer(help="Benchmarks, ratios measured side by side in one run: consumers (ours vs bcc), "
                             "controller (windows/s, query times), rollback (latency on the lab), overhead (CPU "
                             "against a libbpf C consumer).\n\n"
                             "Examples:\n\n"
                             "    sudo migrator bench consumers --events 2000000\n\n"
                             "    migrator bench controller --hosts 50 --json\n\n"
                             "    sudo migrator bench rollback --runs 5",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

_COLS = ("attempts", "delivered", "dropped", "lost", "wall_s", "consumer_cpu_s", "events_per_cpu_s",
         "process_cpu_s", "events_per_process_cpu_s", "lag_p99_ms")
# Table order: each bcc path next to the library path measured against it.
_ORDER = ("bcc-ring", "batch", "ring", "c", "bcc-perf", "callback", "perf")
StreamChoice = Enum("StreamChoice", {k: k for k in ("fixed", "mixed", "both")}, type=str)


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key in ("events_per_cpu_s", "events_per_process_cpu_s"):
        return f"{v / 1e6:.2f} M"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_stream(stream: str, res: dict) -> list[str]:
    """One stream: a row per path, then its ratios and targets."""
    header = ("PATH", *(c.upper() for c in _COLS), "FLAGS")
    notes = res.get("notes", {})
    rows = [(p, *(_fmt(c, res["paths"][p][c]) for c in _COLS), notes.get(p, {}).get("flags", ""))
            for p in _ORDER if p in res["paths"]]
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"stream {stream}"]
    lines += ["  ".join(f"{cell:>{w[i]}}" if 0 < i < len(header) - 1 else f"{cell:<{w[i]}}"
                        for i, cell in enumerate(r)).rstrip() for r in [header, *rows]]
    ratio = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}x'}" for k, v in res["ratios"].items())
    lines.append(f"ratios (events per consumer CPU-s): {ratio}")
    whole = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}x'}" for k, v in res.get("process_ratios", {}).items())
    lines.append(f"ratios (events per whole-process CPU-s, what an operator pays): {whole}")
    for name, ok in res["targets"].items():
        lines.append(f"target {stream}: {name}: {'met' if ok else 'MISSED'}")
    return lines


def render_table(result: dict) -> str:
    """Plain aligned text: per stream one row per path, then ratios and targets."""
    out: list[str] = []
    for stream, res in result["streams"].items():
        if out:
            out.append("")
        out += render_stream(stream, res)
    return "\n".join(out)


@bench_app.command("consumers")
def consumers(
    events: int = typer.Option(2_000_000, "--events", min=1, help="Events per path (getppid() calls of one generator)."),
    rate: float = typer.Option(0, "--rate", min=0, help="Events per second; 0 = as fast as the generator goes."),
    stream: StreamChoice = typer.Option("both", "--stream",
                                        help="fixed (72-byte records), mixed (24..4096 bytes) or both."),
    json_out: bool = json_option("Print one JSON object {streams, targets, notes}."),
) -> None:
    """Compare bcc's callback consumers with the library's (callback and batch) on two streams.

    Streams: fixed (the synthetic demo probe, 72-byte records) and mixed (bpf/mixed.bpf.c,
    24..4096-byte records). Paths, each with a freshly loaded program and the same generator:
    bcc-ring, bcc-perf, callback (Feed, PERF, open_perf_buffer), batch (Feed, RING, on_batch),
    and on the fixed stream the bare Pipeline paths ring and perf. Prints per path attempts,
    delivered, dropped, lost, wall seconds, consumer CPU seconds, events per consumer
    CPU-second and lag p99, then per stream the ratios batch/bcc-ring and callback/bcc-perf and
    whether the targets were met (batch >= 10 M events/CPU-s on fixed, >= 3 M on mixed;
    callback/bcc-perf >= 1). Progress goes to stderr.

    Example:

        sudo migrator bench consumers --events 2000000

        sudo migrator bench consumers --stream mixed --events 20000 --json \\
            | jq .streams.mixed.ratios
    """
    from migrator.tools.bench.consumers import STREAMS, bench_consumers  # loads bcc: only when the command runs

    choice = StreamChoice(stream).value
    streams = STREAMS if choice == "both" else (choice,)
    result = bench_consumers(events, rate, streams=streams, progress=lambda msg: typer.echo(msg, err=True))
    if json_out:
        emit_json(result)
    else:
        typer.echo(render_table(result))


def _lab_hosts(value: int) -> int:
    # The lab (pyroute2) is imported when the command runs, not when `migrator` starts.
    from migrator.tools.lab.names import MAX_HOSTS

    if value > MAX_HOSTS:
        raise typer.BadParameter(f"{value} is more than the lab's {MAX_HOSTS} hosts")
    return value


@bench_app.command("rollback")
def rollback_cmd(
    runs: int = typer.Option(3, "--runs", min=1, help="Lab migrations to roll back (one sample each)."),
    hosts: int = typer.Option(3, "--hosts", min=3, callback=_lab_hosts,
                              help="Lab hosts (the first two are canary slice 1; at most the lab's maximum)."),
    window: float = window_option("1s", "Window length: 1s, 500ms, 2.5."),
    pps: int = typer.Option(2000, "--pps", min=1, help="Packets per second into each host."),
    rollback_after: int = typer.Option(2, "--rollback-after", min=1, help="Breaching windows in a row (N)."),
    prefix: str = typer.Option("mbr", "--prefix", help="Lab prefix (namespaces and host names)."),
    json_out: bool = json_option("Print one JSON object."),
) -> None:
    """Rollback latency, both paths in one run: host-local and through the controller.

    Each run is a real lab migration whose canary slice 1 has two hosts on RING; the first one's
    ring consumer is stalled. That host protects itself: its agent judges its own windows and
    writes PERF into its mode map at once (LOCAL_MS: after the Nth breaching window's books
    closed; LOCAL_END_MS: after that window ended). The controller then rolls back on its
    report and the other canary host switches the way every host did before (DECIDED_MS,
    CONFIRMED_MS, MAP_PERF_MS, FIRST_PERF_MS, all after the same window's end). Timings come from
    the database and the agents' own switch reports.

    Example: migrator bench rollback --runs 5
    """
    from migrator.tools.bench.rollback import bench_rollback

    res = bench_rollback(runs=runs, hosts=hosts, window=window, pps=pps, rollback_after=rollback_after, prefix=prefix,
                         progress=lambda m: typer.echo(m, err=True))
    if json_out:
        emit_json(res)
        return
    cols = ("local_after_close_ms", "local_map_perf_ms", "decided_ms", "confirmed_ms", "map_perf_ms", "first_perf_ms")
    heads = ("LOCAL_MS", "LOCAL_END_MS", "DECIDED_MS", "CONFIRMED_MS", "MAP_PERF_MS", "FIRST_PERF_MS")
    typer.echo(f"{'RUN':<4} " + " ".join(f"{h:>{len(h)}}" for h in heads))
    for i, r in enumerate(res["runs"], 1):
        typer.echo(f"{i:<4} " + " ".join(f"{r[c]!s:>{len(h)}}" for c, h in zip(cols, heads)))
    s = res["summary"]
    typer.echo(f"median: host-local map PERF {s['local_after_close_ms']['median']} ms after the books closed "
               f"({s['local_map_perf_ms']['median']} ms after the window ended); controller path map PERF "
               f"{s['map_perf_ms']['median']} ms, first perf record {s['first_perf_ms']['median']} ms")
    for name, ok in res["targets"].items():
        typer.echo(f"target {name}: {'met' if ok else 'MISSED'}")


def render_overhead(res: dict) -> str:
    """One row per rate: whole-process CPU (% of a core) of ours and of the libbpf C consumer, the ratio."""
    head = (f"{'RATE/S':>10} {'OURS_%CPU':>10} {'C_%CPU':>8} {'OURS/C':>7} {'PER_RECORD':>10} {'EVENTS':>10} "
            f"{'OURS_LOST':>10} {'C_LOST':>10} {'OURS_LAG_P99_MS':>16}  EXACT")
    lines = [head]
    for r in res["rates"]:
        lag = r["ours"]["report"].get("lag_p99_ms_max")
        exact = "yes" if all(r["exact"].values()) else "NO: " + ", ".join(k for k, ok in r["exact"].items() if not ok)
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        per = "-" if r["ratio_per_record"] is None else f"{r['ratio_per_record']:.2f}x"
        # Records the kernel could not write (perf buffer full): consumed by nobody, so not paid for.
        lost = {k: 2 * r[k]["events"] - sum(r[k]["written"].values()) for k in ("ours", "c")}
        lines.append(f"{r['rate']:>10,.0f} {r['ours']['cpu_pct']:>10.3f} {r['c']['cpu_pct']:>8.3f} {ratio:>7} {per:>10} "
                     f"{r['ours']['events']:>10,} {lost['ours']:>10,} {lost['c']:>10,} "
                     f"{'-' if lag is None else f'{lag:.1f}':>16}  {exact}")
    n = res["notes"]
    if n.get("repeat", 1) > 1:
        lines.append(f"each rate ran {n['repeat']} pairs in alternating order; shown: the pair of the median ratio. "
                     "Every pair (ours % / C % = ratio):")
        for r in res["rates"]:
            runs = ", ".join(f"{x['ours_cpu_pct']:.3f}/{x['c_cpu_pct']:.3f}"
                             + ("" if x["ratio"] is None else f" = {x['ratio']:.2f}x") for x in r["runs"])
            lines.append(f"{r['rate']:>10,.0f}  {runs}")
    lines.append(f"max_delay_ms {n['max_delay_ms']:g} (ours), C consumer woken every {n['c_interval_ms']:g} ms; "
                 f"agent poll {n['agent_poll_ms']} ms; {n['probe']}")
    for name, ok in res["targets"].items():
        lines.append(f"target {name}: {'met' if ok else 'MISSED'}")
    return "\n".join(lines)


@bench_app.command("overhead")
def overhead_cmd(
    rates: list[float] = typer.Option(None, "--rate", min=0,
                                      help="Events per second (repeat the option; 0 = idle). Default: 0, 10k, 100k, 1M."),
    seconds: float = typer.Option(5.0, "--seconds", min=0.1, help="Seconds of events per rate and consumer."),
    config: Path = config_option("Take [buffers] (sizes, wakeup, max_delay_ms) from this canary.toml."),
    max_delay_ms: float = typer.Option(None, "--max-delay-ms", min=0.1, help="Our batch clock (default: [buffers] max_delay_ms)."),
    c_interval_ms: float = typer.Option(None, "--c-interval-ms", min=1, help="The C consumer's timer (default: max delay)."),
    repeat: int = typer.Option(1, "--repeat", min=1,
                               help="Pairs of runs per rate, in alternating order; the median ratio's pair is shown."),
    json_out: bool = json_option("Print one JSON object {rates, targets, notes}."),
) -> None:
    """What the agent costs: whole-process CPU of our consumer against a libbpf C consumer of the same maps.

    Per rate, the synthetic probe runs in DUAL (perf and ring written for every event) on a
    rate-limited generator, consumed (a) by our agent loop (a Feed in DUAL, in a child process)
    and (b) by the libbpf reference consumer (ring_buffer__consume and perf_buffer__consume on a
    timer; built by scripts/setup.sh). CPU is each consumer process's own (user + system, every
    thread), the generator excluded. Each consumer must account for every record the kernel
    wrote (EXACT). Progress goes to stderr.

    Example:

        sudo migrator bench overhead --rate 0 --rate 100000 --seconds 5

        sudo migrator bench overhead --rate 100000 --repeat 3
    """
    from migrator.config import load_config
    from migrator.tools.bench.overhead import DEFAULT_RATES, bench_overhead

    buffers = load_config(config).buffers if config else None
    res = bench_overhead(tuple(rates) if rates else DEFAULT_RATES, seconds, max_delay_ms=max_delay_ms,
                         c_interval_ms=c_interval_ms, buffers=buffers, repeat=repeat,
                         progress=lambda m: typer.echo(m, err=True))
    if json_out:
        emit_json(res)
    else:
        typer.echo(render_overhead(res))


@bench_app.command("parity")
def parity_cmd(
    rounds: int = typer.Option(3, "--rounds", min=1, help="Rounds; each runs every variant once, alternating."),
    count: int = typer.Option(50_000, "--count", min=1, help="getpid() calls the tool's child makes per run."),
    pages: int = typer.Option(64, "--pages", min=1, help="The tool's open_perf_buffer page_cnt (a power of two)."),
    json_out: bool = json_option("Print one JSON object {runs, variants}."),
) -> None:
    """Never worse than the original: a bursty bcc tool run plainly and under `migrator wrap` in PERF, DUAL and RING.

    The tool (migrator/tools/bench/bursty_tool.py, unmodified bcc) bursts COUNT events into a PAGES-page perf buffer. Each round runs it plainly and wrapped in every mode, alternating; per variant it prints what the tool's callback got in each round, the median against plain's, what its lost_cb heard, wrap's books (perf lost, records filled from the ring copy, ring dropped) and the whole process's CPU. Progress goes to stderr.

    Example:

        sudo migrator bench parity --rounds 3 --count 50000 --pages 64
    """
    from migrator.tools.bench.parity import render, run_parity

    check_perf_pages(pages, "--pages")
    res = run_parity(rounds, count, pages, progress=lambda m: typer.echo(f"parity: {m}", err=True))
    if json_out:
        emit_json(res.to_dict())
    else:
        typer.echo(render(res))


@bench_app.command("producer")
def producer_cmd(
    rates: list[float] = typer.Option(None, "--rate", min=0,
                                      help="Events per second (repeat the option; 0 = idle). Default: 0, 2k, 20k, 200k."),
    seconds: float = typer.Option(3.0, "--seconds", min=1.0, help="Seconds per policy and rate."),
    max_delay_ms: float = typer.Option(10.0, "--max-delay-ms", min=0.1, help="The consumer's batch clock."),
    cpus: int = typer.Option(1, "--cpus", min=1, max=64,
                             help="Also measure the ring's emit with this many CPUs emitting at once (its one lock)."),
    json_out: bool = json_option("Print one JSON object {cells, sampling, contention, targets}."),
) -> None:
    """What each ring wakeup policy costs the traced code: adaptive, no_wakeup, force_wakeup and batched side by side.

    Per policy and rate the synthetic probe runs in DUAL, consumed in this process as an agent consumes it. Per cell: each channel's emit cost per event in the traced context (producer_ns, one emit in 16 timed inside migrator.h), the BPF program's run time per event, this process's whole CPU (the generator is another process) and the ring's lag p99. Then the program's run time with the emit timing compiled out and in: what the sampling costs. Progress goes to stderr.

    Example:

        sudo migrator bench producer --rate 0 --rate 2000 --seconds 3
    """
    from migrator.tools.bench.producer import DEFAULT_RATES, bench_producer, render

    res = bench_producer(tuple(rates) if rates else DEFAULT_RATES, seconds, max_delay_ms=max_delay_ms, cpus=cpus,
                         progress=lambda m: typer.echo(f"producer: {m}", err=True))
    if json_out:
        emit_json(res)
    else:
        typer.echo(render(res))


@bench_app.command("fleet")
def fleet_cmd(
    hosts: int = typer.Option(..., "--hosts", min=2, help="Simulated hosts (slice 1, the canary: a tenth of them)."),
    db: str = db_option(..., help="The database: an SQLAlchemy URL (a PostgreSQL database of its own) or an "
                                  "SQLite file path. The bench adds a migration to it."),
    window_seconds: float = typer.Option(1.0, "--window-seconds", min=0.2, help="Window length."),
    processes: int = typer.Option(4, "--processes", min=1, help="Processes the simulated hosts are spread over."),
    json_out: bool = json_option("Print one JSON object."),
) -> None:
    """N simulated hosts (the real database link and write path, synthetic windows, no BPF) through a real migration.

    A plan of N hosts in two slices, the real controller in a process of its own, and a breach injected
    in CANARY (one canary host's ring windows lose 5 %): the run ends ROLLED_BACK. Prints the controller's
    round time p50/p99, windows persisted per second, the database's commits per second and its server's
    CPU (PostgreSQL on this machine), the rollback latency from the end of the deciding window to each
    canary host's PERF (p50/p99/max), and CPU per simulated host. No root needed.

    Example:

        export DB='postgresql+psycopg://migrator@/fleet?host=/run/postgresql'

        migrator bench fleet --hosts 1000 --db "$DB"
    """
    from migrator.tools.bench.controller import database_url
    from migrator.tools.bench.fleet import render, run_fleet

    res = run_fleet(database_url(db), hosts, window_seconds=window_seconds, processes=processes)
    if json_out:
        emit_json(res)
    else:
        typer.echo(render(res))
    if not res["targets"]["phases completed (ROLLED_BACK)"]:
        raise typer.Exit(1)


@bench_app.command("idle")
def idle_cmd(
    db: str = db_option(..., help="A PostgreSQL server URL whose role may create databases: the bench makes a "
                                  "throwaway database there and drops it after."),
    seconds: float = typer.Option(10.0, "--seconds", min=1.0, help="The quiet span measured."),
    link_only: bool = typer.Option(False, "--link-only", help="The database link alone, no BPF program (no root needed)."),
    json_out: bool = json_option("Print one JSON object."),
) -> None:
    """What one idle host process costs: its database transactions per second and its CPU.

    One PLANNED migration of one host; a child process serves it with migrator.attach on the synthetic
    demo probe (root and bcc) and sits idle. Over --seconds: the transactions it ends, the database's
    commits, the whole process's CPU (and its link thread's), and its PostgreSQL backends' CPU.
    Targets (issue 17): <= 2 transactions/s and <= 0.5 % of a core for the process.

    Example:

        export DB='postgresql+psycopg://migrator@/postgres?host=/run/postgresql'

        sudo migrator bench idle --db "$DB"
    """
    from migrator.tools.bench.idle_host import measure

    if not db.startswith("postgresql"):
        raise OptionError("--db", db, "is not a PostgreSQL server URL (the bench measures what a host asks of a "
                          "server: on SQLite there is none)", "give e.g. postgresql+psycopg://user:pw@host/postgres")
    res = measure(db, seconds, link_only=link_only)
    res["targets"] = {"transactions/s <= 2": res["transactions_per_s"] <= 2,
                      "process CPU <= 0.5 % of a core": res["process_cpu_pct"] <= 0.5}
    if json_out:
        emit_json(res)
        return
    typer.echo(f"idle host ({res['mode']}) over {res['seconds']} s: {res['transactions_per_s']} transactions/s "
               f"({res['statements_per_s']} statements/s; database commits {res['database_commits_per_s']}/s), "
               f"process CPU {res['process_cpu_pct']} % of a core (link thread {res['link_thread_cpu_pct']} %; "
               f"a bare poll(100) loop beside it, this machine's floor: {res['floor_cpu_pct']} %), "
               f"PostgreSQL backends {res['backend_cpu_pct']} % ({res['backends']})")
    for what, ok in res["targets"].items():
        typer.echo(f"  {'ok  ' if ok else 'MISS'} {what}")
