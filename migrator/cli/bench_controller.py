"""`migrator bench controller`: evaluate + persist throughput and history query times."""
from __future__ import annotations

import typer

from migrator.cli._options import db_option, json_option
from migrator.cli._out import emit_json
from migrator.cli.bench import bench_app


@bench_app.command("controller")
def controller_cmd(hosts: int = typer.Option(1000, "--hosts", min=1, help="Hosts per window index."),
                   windows: int = typer.Option(100, "--windows", min=1, help="Windows per host."),
                   db_windows: int = typer.Option(1_000_000, "--db-windows", min=100, help="Windows in the history database."),
                   db: str = db_option(None, help="Keep/reuse the history database: an SQLite file path or an "
                                                  "SQLAlchemy URL (PostgreSQL: see the last example)."),
                   as_json: bool = json_option()) -> None:
    """Controller throughput (windows/s evaluated and persisted) and `history`/`windows --last 100` times.

    No BPF, no root: SQLite files in a temporary directory, or --db (a file or a PostgreSQL URL; on
    a server the evaluate part runs as a migration of its own there, deleted afterwards). ANALYZE
    runs after the history's bulk load.

    Examples:

        migrator bench controller

        migrator bench controller --hosts 50 --windows 5 --db-windows 5000 --json

        migrator bench controller \\
            --db 'postgresql+psycopg://migrator@/bench?host=/var/run/postgresql'
    """
    from migrator.tools.bench.controller import bench_controller

    res = bench_controller(hosts=hosts, windows=windows, db_windows=db_windows, db=db)
    if as_json:
        emit_json(res)
        return
    e, q, h = res["evaluate"], res["queries"], res["history_db"]
    typer.echo(f"evaluate+persist: {e['windows']} windows ({e['hosts']} hosts x {e['windows_per_host']} x 2 channels) "
               f"in {e['seconds']} s = {e['windows_per_s']} windows/s (record {e['record_seconds']} s, judge {e['judge_seconds']} s)")
    typer.echo(f"judge: {e['judge_ms_per_round']} ms per round of {e['hosts']} hosts ({e['judge_us_per_host']} us per host, "
               "new windows only: each round reads the indexes after the last judged one)")
    how = "reused" if h["reused"] else f"built in {h['build_seconds']} s, ANALYZE {h['analyze_seconds']} s"
    typer.echo(f"history db ({h['backend']}{', ' + h['database'] if h['database'] else ''}): {h['windows']} windows ({how})")
    typer.echo(f"history {q['history_ms']} ms; windows --last 100 {q['windows_last_100_ms']} ms; "
               f"--host {q['windows_host_last_100_ms']} ms; --phase {q['windows_phase_last_100_ms']} ms")
    for name, ok in res["targets"].items():
        typer.echo(f"  {'ok  ' if ok else 'MISS'} {name}")
