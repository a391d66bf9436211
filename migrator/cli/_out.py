"""The one JSON emitter every command with --json uses: one line, stable key order."""
from __future__ import annotations

import json

import typer


def emit_json(obj, *, err: bool = False) -> None:
    """Print `obj` as one line of JSON (sorted keys; dates and paths as strings); on stderr with err=True."""
    typer.echo(json.dumps(obj, sort_keys=True, default=str), err=err)
