"""`migrator shadow`: both channels side by side on the same events, one line per window."""
from __future__ import annotations

import dataclasses
from enum import Enum

import typer

from migrator.cli import app
from migrator.cli._log import LogFormat, log_format_option, log_level_option, setup_logging
from migrator.cli._options import (check_perf_pages, check_rate, check_ring_bytes, check_seconds, json_option, usage,
                                   window_option)
from migrator.cli._out import emit_json
from migrator.shared.records import WINDOW_HEADER, window_line
from migrator.shared.vocab import RING_SUBMITS, RING_WAKEUPS, SHADOW_PROBES

# The choices are shared/vocab.py's: the data plane (numpy, bcc) is imported only when `shadow` runs.
# Choices are Enums so that typer rejects anything else at parse time (exit 2) and lists them in --help.
ProbeName = Enum("ProbeName", {p: p for p in SHADOW_PROBES}, type=str)
RingSubmit = Enum("RingSubmit", {k: k for k in RING_SUBMITS}, type=str)
Wakeup = Enum("Wakeup", {k: k for k in RING_WAKEUPS}, type=str)


@app.command()
def shadow(
    seconds: float = typer.Option(10.0, "--seconds", "-s", callback=usage(check_seconds), help="How long to run."),
    window: float = window_option("1s", "Window length: 1s, 500ms, 2.5."),
    probe: ProbeName = typer.Option("synthetic", "--probe",
                                    help="synthetic (getppid of a generator) or proc (fork/exec/exit)."),
    rate: float = typer.Option(100_000, "--rate", callback=usage(check_rate),
                               help="Synthetic events per second (0: as fast as possible)."),
    ring_bytes: int = typer.Option(16 << 20, "--ring-bytes", callback=usage(check_ring_bytes),
                                   help="Ring size, a power of two in bytes."),
    perf_pages: int = typer.Option(64, "--perf-pages", callback=usage(check_perf_pages),
                                   help="Perf buffer pages per CPU, a power of two."),
    ring_submit: RingSubmit = typer.Option("reserve", "--ring-submit", help="reserve (reserve/submit) or output."),
    wakeup: Wakeup = typer.Option("adaptive", "--wakeup", help="adaptive, no_wakeup or force_wakeup."),
    print_c: bool = typer.Option(False, "--print-c", help="Print the generated BPF C before loading it."),
    json_out: bool = json_option("One JSON object per window and channel, then the summary."),
    log_format: LogFormat = log_format_option(),
    log_level: str = log_level_option(),
) -> None:
    """Load a probe in DUAL mode and compare perf and ring on the same events, window by window.

    Example: migrator shadow --seconds 10 --window 1s --rate 1000000

    The residual column is the window's books: attempts - delivered - dropped - lost - in flight of
    the events emitted in that window, 0 when every one is accounted for (also under load); ~ marks a
    window whose close could not wait for the BPF programs to finish (then a best effort).
    """
    setup_logging(log_format, log_level)
    from migrator.dataplane.channel import check_bpf_privileges
    from migrator.tools.shadow import run_shadow

    win, probe = window, ProbeName(probe).value
    if not print_c:  # before the header: a user who cannot load BPF gets the one Error: line only
        check_bpf_privileges(f"probe {probe}")
    if not json_out:
        typer.echo(f"shadow: probe={probe} mode=DUAL window={win}s seconds={seconds} rate={rate:g}/s", err=True)
        typer.echo(WINDOW_HEADER)

    def on_window(ws):
        for w in ws:
            if json_out:
                emit_json({"type": "window", **w.to_dict()})
            else:
                typer.echo(window_line(w))

    _, summary = run_shadow(seconds, win, probe=probe, rate=rate, ring_bytes=ring_bytes, perf_pages=perf_pages,
                            ring_submit=RingSubmit(ring_submit).value, wakeup=Wakeup(wakeup).value,
                            print_c=print_c, on_window=on_window)
    if json_out:
        emit_json({"type": "summary", **dataclasses.asdict(summary)})
        return
    typer.echo("")
    typer.echo(f"summary over {summary.seconds:.1f}s, {summary.windows} windows:")
    for ch, t in summary.channels.items():
        p99 = "-" if t["lag_p99_ms_max"] is None else f"{t['lag_p99_ms_max']:.2f}"
        typer.echo(
            f"  {ch:<4} attempts={t['attempts']} delivered={t['delivered']} dropped_full={t['dropped_full']} "
            f"dropped_other={t['dropped_other']} lost={t['lost']} loss={100 * t['loss_rate']:.3f}% "
            f"worst_p99={p99}ms inversions={t['inversions']} cpu={t['consumer_cpu_s']:.3f}s "
            f"parse_errors={t['parse_errors']} residual={t['residual']} "
            f"unbalanced_windows={t['unbalanced_windows']}"
        )
