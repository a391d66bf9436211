"""`migrator shadow`: both channels side by side on the same events, one line per window."""
from __future__ import annotations

import dataclasses

import typer

from migrator.cli import app
from migrator.cli._out import emit_json
from migrator.cli.render import WINDOW_HEADER, window_line
from migrator.tools.shadow import parse_duration, run_shadow


@app.command()
def shadow(
    seconds: float = typer.Option(10.0, "--seconds", "-s", help="How long to run."),
    window: str = typer.Option("1s", "--window", "-w", help="Window length: 1s, 500ms, 2.5."),
    probe: str = typer.Option("synthetic", "--probe", help="synthetic (getppid of a generator) or proc (fork/exec/exit)."),
    rate: float = typer.Option(100_000, "--rate", help="Synthetic events per second (0: as fast as possible)."),
    ring_bytes: int = typer.Option(16 << 20, "--ring-bytes", help="Ring size, a power of two in bytes."),
    perf_pages: int = typer.Option(64, "--perf-pages", help="Perf buffer pages per CPU, a power of two."),
    ring_submit: str = typer.Option("reserve", "--ring-submit", help="reserve (reserve/submit) or output."),
    wakeup: str = typer.Option("adaptive", "--wakeup", help="adaptive, no_wakeup or force_wakeup."),
    print_c: bool = typer.Option(False, "--print-c", help="Print the generated BPF C before loading it."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per window and channel, then the summary."),
) -> None:
    """Load a probe in DUAL mode and compare perf and ring on the same events, window by window.

    Example: migrator shadow --seconds 10 --window 1s --rate 1000000

    The residual column is attempts - delivered - dropped - lost - in flight since the start; it
    is exact when the window closed on a quiet instant and marked ~ when events kept arriving.
    """
    win = parse_duration(window)
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
                            ring_submit=ring_submit, wakeup=wakeup, print_c=print_c, on_window=on_window)
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
            f"parse_errors={t['parse_errors']} residual={t['final_residual']}"
        )
