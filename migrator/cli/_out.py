"""JSON output for the control-plane commands (one line, stable key order)."""
from __future__ import annotations

import json

import typer


def emit_json(obj) -> None:
    typer.echo(json.dumps(obj, sort_keys=True, default=str))
