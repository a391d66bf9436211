"""`migrator prune`: roll up and delete the old windows of finished migrations (store/retention.py)."""
from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli import app
from migrator.cli._options import config_option, duration, json_option, migration_option, resolve_config
from migrator.cli.control import writer
from migrator.cli._out import emit_json


def _keep_option():
    return typer.Option(None, "--keep", metavar="DURATION", parser=duration("--keep", examples="30d, 12h, 90m or 3600"),
                        help="Keep windows this long (30d, 12h, 90m; seconds if bare) instead of "
                             "[store] keep_windows.")


@app.command("prune")
def prune_cmd(config: Path = config_option(), keep: float = _keep_option(),
              migration: int = migration_option("every finished one", what="Only this migration"),
              dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; write nothing."),
              as_json: bool = json_option()) -> None:
    """Roll up and delete the windows of finished migrations older than [store] keep_windows.

    Only migrations that ended (COMPLETE, ROLLED_BACK, ABORTED) are pruned; an active one is
    never touched. Each deleted window is counted into a per host, channel and phase summary
    (window_rollups) that history, report and what-if read; the windows a transition names (the
    ones that decided a move) are kept. Deletes go in batches, one transaction each.

    Examples:

        migrator prune --dry-run

        migrator prune --keep 30d --json
    """
    from migrator.errors import ConfigError
    from migrator.store import database_errors
    from migrator.store.retention import prune

    if dry_run:
        from migrator.cli.views import reader

        cfg, sf = resolve_config(config), reader(config)
    else:
        cfg, sf = writer(config)
    keep_s = keep
    if keep is None:
        if cfg.store.keep_windows is None:
            raise ConfigError(cfg.path, "store.keep_windows", "is not set, so there is nothing to prune",
                              'add [store] keep_windows = "30d" to canary.toml, or pass --keep 30d')
        keep_s = cfg.store.keep_windows
    total = None
    with database_errors(sf):
        while True:  # one transaction per batch: a long prune holds no lock for long
            with sf() as s, s.begin():
                rep = prune(s, keep_s, migration_id=migration, dry_run=dry_run, max_batches=None if dry_run else 1)
            if total is None:
                total = rep
            else:
                by_id = {m.migration_id: m for m in total.migrations}
                for m in rep.migrations:
                    t = by_id[m.migration_id]
                    t.windows += m.windows
                    t.host_verdicts += m.host_verdicts
                    t.rollups, t.done = m.rollups, m.done
            if dry_run or rep.done:
                break
    if as_json:
        emit_json(total.to_dict())
        return
    verb = "would roll up" if dry_run else "rolled up"
    if not total.migrations:
        typer.echo(f"nothing to prune: no finished migration has windows older than {keep_s:g} s")
    for m in total.migrations:
        typer.echo(f"migration {m.migration_id} ({m.phase}): {verb} {m.windows} windows into {m.rollups} rollups, "
                   f"{m.host_verdicts} host verdicts counted; kept {m.kept_deciding} deciding windows")
    if total.skipped_active:
        typer.echo(f"not pruned (still active): migration {', '.join(str(i) for i in total.skipped_active)}")
