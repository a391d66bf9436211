"""`migrator doctor`: can this host run the migration? Read-only: it changes nothing."""
from __future__ import annotations

import typer

from migrator.cli import app
from migrator.cli._options import json_option
from migrator.cli._out import emit_json

_COLOURS = {"OK": "green", "FAIL": "red", "WARN": "yellow"}


def render_table(checks: list) -> str:
    """Plain aligned text, one row per check; colour only where the terminal takes it."""
    header = ("CHECK", "STATUS", "VALUE", "FIX")
    rows = [(c.name, c.status, c.value, c.fix) for c in checks]
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"{header[0]:<{w[0]}}  {header[1]:<{w[1]}}  {header[2]:<{w[2]}}  {header[3]}".rstrip()]
    for name, status, value, fix in rows:
        # Pad before styling so escape codes do not upset the alignment.
        st = typer.style(f"{status:<{w[1]}}", fg=_COLOURS[status], bold=status != "OK")
        lines.append(f"{name:<{w[0]}}  {st}  {value:<{w[2]}}  {fix}".rstrip())
    return "\n".join(lines)


@app.command()
def doctor(json_out: bool = json_option("Print {\"ok\": bool, \"checks\": [...]} instead of the table.")) -> None:
    """Check every host requirement (privileges, kernel, BTF, ringbuf and perf maps, tracefs,
    bpffs, headers, bcc, lockdown, memlock) and print the fix for each failure.

    Changes nothing (the map probes are created and closed at once). Exits 0 if every
    required check passes, 1 otherwise; WARN rows do not fail. Most fixes are done by
    `bash scripts/setup.sh`.

    Example:

        sudo migrator doctor

        sudo migrator doctor --json | jq '.checks[] | select(.ok | not)'
    """
    from migrator.tools import doctor as core  # ctypes and the kernel probes: only when doctor runs

    checks = core.run_checks()
    ok = core.all_ok(checks)
    if json_out:
        emit_json({"ok": ok, "checks": [c.to_dict() for c in checks]})
    else:
        typer.echo(render_table(checks))
        failed = [c.name for c in checks if c.blocking]
        warned = [c.name for c in checks if c.status == "WARN"]
        typer.echo("")
        if failed:
            typer.echo(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}. "
                       f"Apply the fixes above (most are done by `{core.SETUP}`), then rerun `migrator doctor`.")
        else:
            typer.echo(f"All required checks pass{' (warnings: ' + ', '.join(warned) + ')' if warned else ''}.")
    raise typer.Exit(0 if ok else 1)
