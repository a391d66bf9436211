"""`migrator cflags`: what an operator adds to bcc's cflags to build a program with migrator.h."""
from __future__ import annotations

import typer

from migrator.cli import app
from migrator.cli._options import json_option
from migrator.cli._out import emit_json
from migrator.dataplane import rewrite
from migrator.errors import OptionError


@app.command("cflags")
def cflags_cmd(max_payload: int = typer.Option(None, "--max-payload", help="Largest payload in bytes (a power of two; default 4096)."),
               ring_wakeup: str = typer.Option(None, "--ring-wakeup", help="adaptive, no_wakeup or force_wakeup (default adaptive)."),
               as_json: bool = json_option("Print a JSON list.")) -> None:
    """Print the cflags that let bcc find migrator.h (and set its build knobs).

    The program's text must still go through migrator.load() (or rewrite.prepare()): bcc only
    rewrites map calls written in the main text, so each MIGRATOR_CHANNEL's code is pasted there.

    Examples:

        migrator cflags

        python3 -c "import migrator; migrator.load(src_file='mytool.bpf.c')"
    """
    try:
        flags = rewrite.cflags(max_payload=max_payload, ring_wakeup=ring_wakeup)
    except OptionError as exc:  # a usage error: exit 2 like any bad option
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        emit_json(flags)
    else:
        typer.echo(" ".join(flags))
