"""`migrator report`: one self-contained HTML file for one migration (read-only)."""
from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli import app
from migrator.cli._out import emit_json
from migrator.cli._options import config_option, json_option, migration_option, resolve_config


@app.command("report")
def report_cmd(config: Path = config_option(),
               migration: int = migration_option(),
               output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write.", show_default=False),
               as_json: bool = json_option("Print a JSON summary.")) -> None:
    """Read-only: one self-contained HTML report (inline SVG charts, no network needed to open it).

    Phase timeline with every transition, breach streak against N, the windows that decided each
    move, and per host and window: loss, lag p99, CPU per event, parse errors, payload mismatches.

    Example: migrator report -c runs/<run>/canary.toml -o report.html
    """
    # Imported here: matplotlib and the report code load only for this command.
    from migrator.store import database_errors, open_store
    from migrator.tools import report as rp

    cfg = resolve_config(config)
    sf = open_store(cfg.database_url, readonly=True)
    with database_errors(sf), sf() as s:
        data = rp.collect(s, migration)
    size = rp.write_report(rp.render_html(data), output)
    if as_json:
        emit_json(rp.summary(data, str(output), size))
        return
    typer.echo(f"{output}")
