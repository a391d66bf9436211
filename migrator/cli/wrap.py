"""`migrator wrap`: run an unmodified bcc Python tool with its perf outputs migrated, in this process."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from enum import Enum
from pathlib import Path

import typer

from migrator.cli import app
from migrator.cli._log import LogFormat, log_format_option, log_level_option, setup_logging
from migrator.cli._options import check_ring_bytes, config_option, json_option, usage, window_option
from migrator.cli._out import emit_json
from migrator.shared.records import WINDOW_HEADER, window_line
from migrator.shared.vocab import DEFAULT_RING_BYTES, MODES

Mode = Enum("Mode", {m: m for m in MODES}, type=str)


@app.command("wrap", context_settings={"allow_interspersed_args": False})
def wrap_cmd(
    command: list[str] = typer.Argument(..., metavar="COMMAND",
                                        help="The bcc tool and its arguments, after --: a name on PATH, a script, or python3 SCRIPT."),
    config: Path = config_option("canary.toml: serve --host in its migration (the database decides the mode)."),
    host: str = typer.Option(None, "--host", help="This host's name in canary.toml (needed with -c)."),
    mode: Mode = typer.Option(None, "--mode", help="Standalone mode: DUAL (default), PERF or RING."),
    ring_bytes: int = typer.Option(DEFAULT_RING_BYTES, "--ring-bytes", callback=usage(check_ring_bytes),
                                   help="Ring size of every channel, a power of two in bytes."),
    window: float = window_option(None, "Window length: 1s, 500ms, 2.5 (default 1s, or the config's)."),
    json_out: bool = json_option("The closing report as one JSON object on stderr."),
    log_format: LogFormat = log_format_option(),
    log_level: str = log_level_option(),
) -> None:
    """Run a bcc Python tool unmodified, its perf buffer outputs moved onto migrator channels.

    The tool's stdout is its own. When it ends (its own end, exit(), Ctrl-C or SIGTERM) the
    perf-vs-ring report goes to stderr, and migrator exits as the tool did.

    Examples:

        migrator wrap -- tcpstates-bpfcc -4

        migrator wrap --mode RING -- python3 ./mytool.py --pid 42

        migrator wrap -c canary.toml --host web-7 -- tcplife-bpfcc
    """
    setup_logging(log_format, log_level)
    from migrator.agent.wrap import run_wrapped

    out = run_wrapped(command, config=config, host=host, mode=Mode(mode).value if mode else None,
                      ring_bytes=ring_bytes, window_seconds=window)
    if json_out:
        emit_json(out.report.to_dict(), err=True)
    else:
        for line in render_report(out.report):
            typer.echo(line, err=True)
    if out.error is not None:
        raise out.error
    if out.signal is not None:
        # End as the tool would have: killed by the same signal (the shell sees 128 + signal).
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(out.signal, signal.SIG_DFL)
        os.kill(os.getpid(), out.signal)
    raise typer.Exit(out.exit_code)


def render_report(rep) -> list[str]:
    """The closing report: per channel, perf and ring side by side per window, then the summary."""
    name = Path(rep.script).name
    where = (f"host {rep.host} in the migration of {rep.config} (windows to its database)" if rep.config
             else f"mode {rep.mode}")
    lines = ["", f"wrap: {name}: {where}, {len(rep.channels)} channel{'s' * (len(rep.channels) != 1)}"
             + (f" ({', '.join(c.name for c in rep.channels)})" if rep.channels else "")
             + f", windows of {rep.window_seconds:g} s, ended by {rep.ended_by} (exit {rep.exit_code})"]
    if not rep.channels:
        why = "; ".join(rep.not_wrapped) if rep.not_wrapped else "it made no BPF program"
        lines.append(f"wrap: nothing was migrated: {why}")
        return lines
    for c in rep.channels:
        label = c.name if c.object_no == 0 else f"{c.name} (BPF object {c.object_no})"
        opened = "" if c.opened else ", never opened by the tool"
        if not any(w.attempts or w.delivered for w in c.windows):
            lines.append(f"channel {label}: no events in {len({w.index for w in c.windows})} windows{opened}")
            continue
        mem = c.memory
        lines.append(f"channel {label}{opened}: perf {c.perf_pages} pages x {c.cpus} CPUs = {_kib(mem['perf_bytes'])} "
                     f"(the tool's page_cnt), ring {_kib(mem['ring_bytes'])} (one buffer for every CPU)")
        lines.append(WINDOW_HEADER)
        first = min(w.index for w in c.windows)
        for w in c.windows:
            lines.append(window_line(dataclasses.replace(w, index=w.index - first)))
    s = rep.summary
    seen = ("yes" if s["every_acted_event_on_ring"] else
            f"no: {s['not_on_ring']} never reached the ring ({s['emitted_in_perf_mode']} emitted in PERF mode, "
            f"{s['not_on_ring'] - s['emitted_in_perf_mode']} missing)")
    lines.append(f"what this tool would see on the ring buffer: {s['acted']} events acted on, "
                 f"ring delivered {s['ring_delivered']} dropped {s['ring_dropped']}, perf lost {s['perf_lost']}"
                 + (f" ({s['filled_from_ring']} of them delivered from their ring copy)" if s["filled_from_ring"] else "")
                 + "; "
                 f"every acted event also seen on ring: {seen}")
    notes = []
    if s["ring_not_acted"]:
        notes.append(f"{s['ring_not_acted']} ring events the tool never acted on")
    if s["unread"]:
        notes.append(f"{s['unread']} events read while the tool had no callback open")
    if rep.windows_sent is not None:
        notes.append(f"schema fingerprint {rep.schema_fingerprint}")
        notes.append(f"{rep.windows_sent} windows sent to the database")
    if notes:
        lines.append("wrap: " + "; ".join(notes))
    return lines


def _kib(n: int) -> str:
    return f"{n // 1024} KiB" if n < 1 << 20 else f"{n / (1 << 20):g} MiB"
