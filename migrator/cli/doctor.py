"""`migrator doctor`: can this host run the migration?"""
from __future__ import annotations

import typer

from migrator.cli import app


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
    """Check every host requirement and print the fix for each failure (placeholder)."""
    raise typer.Exit(0)
