"""`migrator bench ...`: side-by-side measurements on the real kernel (loads BPF; needs root)."""
from __future__ import annotations

from enum import Enum

import typer

from migrator.cli import app
from migrator.cli._out import emit_json
from migrator.cli.shadow import usage
from migrator.tools.lab.names import MAX_HOSTS
from migrator.tools.shadow import check_seconds

bench_app = typer.Typer(help="Benchmarks, ratios measured side by side in one run: consumers (ours vs bcc), "
                             "controller (windows/s, query times), rollback (latency on the lab).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

_COLS = ("attempts", "delivered", "dropped", "lost", "wall_s", "consumer_cpu_s", "events_per_cpu_s",
         "process_cpu_s", "events_per_process_cpu_s", "lag_p99_ms")
# Table order: each bcc path next to the library path measured against it.
_ORDER = ("bcc-ring", "batch", "ring", "bcc-perf", "callback", "perf")
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
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object {streams, targets, notes}."),
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

        sudo migrator bench consumers --stream mixed --events 20000 --json | jq .streams.mixed.ratios
    """
    from migrator.tools.bench.consumers import STREAMS, bench_consumers  # loads bcc: only when the command runs

    choice = StreamChoice(stream).value
    streams = STREAMS if choice == "both" else (choice,)
    result = bench_consumers(events, rate, streams=streams, progress=lambda msg: typer.echo(msg, err=True))
    if json_out:
        emit_json(result)
    else:
        typer.echo(render_table(result))


@bench_app.command("rollback")
def rollback_cmd(
    runs: int = typer.Option(3, "--runs", min=1, help="Lab migrations to roll back (one sample each)."),
    hosts: int = typer.Option(2, "--hosts", min=2, max=MAX_HOSTS, help="Lab hosts (the first is the canary slice)."),
    window: float = typer.Option(1.0, "--window", callback=usage(lambda v: check_seconds(v, "--window")),
                                 help="Window seconds."),
    pps: int = typer.Option(2000, "--pps", min=1, help="Packets per second into each host."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Rollback latency: Nth breaching window end -> slice mode maps read PERF -> first perf record.

    Each run is a real lab migration whose canary host's ring consumer is stalled; the timings
    come from the database (window end, transition) and the agents' own switch reports.

    Example: migrator bench rollback --runs 5
    """
    from migrator.tools.bench.rollback import bench_rollback

    res = bench_rollback(runs=runs, hosts=hosts, window=window, pps=pps,
                         progress=lambda m: typer.echo(m, err=True))
    if json_out:
        emit_json(res)
        return
    typer.echo(f"{'RUN':<4} {'DECIDED_MS':>10} {'CONFIRMED_MS':>12} {'MAP_PERF_MS':>11} {'FIRST_PERF_MS':>13}")
    for i, r in enumerate(res["runs"], 1):
        typer.echo(f"{i:<4} {r['decided_ms']:>10} {r['confirmed_ms']:>12} {r['map_perf_ms']:>11} {r['first_perf_ms']!s:>13}")
    s = res["summary"]
    typer.echo(f"median: map PERF {s['map_perf_ms']['median']} ms, first perf record {s['first_perf_ms']['median']} ms "
               f"(max {s['map_perf_ms']['max']} / {s['first_perf_ms']['max']} ms)")
    for name, ok in res["targets"].items():
        typer.echo(f"target {name}: {'met' if ok else 'MISSED'}")
