"""Read-only commands: status, history, windows, what-if. They never write to the database."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import typer

from migrator.control import moves as ops
from migrator.cli import app
from migrator.cli.control import config_option, resolve_config
from migrator.cli._out import emit_json
from migrator.store import api, database_errors, open_store



def reader(path: Path | None):
    """Open the config's database read-only for the view commands (never creates or upgrades it)."""
    cfg = resolve_config(path)
    return open_store(cfg.database_url, readonly=True)


def _ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _migration_option():
    return typer.Option(None, "--migration", "-m", help="Migration id (default: the newest).")


def render_status(rep: dict) -> str:
    """The text of `migrator status`: phase, streak, clean windows, lease, last windows and host modes."""
    lines = [f"migration {rep['migration_id']}: {rep['label']}"
             + (f" (paused in {rep['paused_phase']})" if rep["paused_phase"] else "")
             + f"   since {_ts(rep['phase_since'])}"]
    clean = (f", clean {rep['clean_windows']}/{rep['min_clean_windows']}"
             + (" + manual gate" if rep["manual_gate"] else "")) if rep["min_clean_windows"] is not None else ""
    lines.append(f"window {rep['window']}   breach streak {rep['streak']}/{rep['rollback_after']}{clean}"
                 f"   no-data: {rep['no_data']}")
    if rep["last_verdict"]:
        lv = rep["last_verdict"]
        lines.append(f"last verdict: window {lv['index']} {lv['verdict']} ({lv['rule']})")
    if rep["pending"]:
        lines.append(f"pending transition {rep['pending']['id']} -> {rep['pending']['to']} (being applied)")
    if rep["reported_fingerprint"] and rep["reported_fingerprint"] != rep["schema_fingerprint"]:
        lines.append(f"SCHEMA CHANGED: frozen {rep['schema_fingerprint']}, reported {rep['reported_fingerprint']}")
    lease = rep["lease"]
    lines.append("controller: " + (f"{lease['holder']} (lease until {_ts(lease['expires_at'])}"
                                   f"{'' if lease['live'] else ', expired'})" if lease else "not running"))
    for ch, w in sorted(rep["last_window"].items()):
        lag = "-" if w["lag_p99_ms"] is None else f"{w['lag_p99_ms']:.2f} ms"
        lines.append(f"last {ch:<4} window: {w['host']} #{w['index']} {w['mode']} attempts {w['attempts']} "
                     f"loss {100 * w['loss_rate']:.3f}% lag p99 {lag}")
    hosts = rep["hosts"]
    shown = hosts[:20]
    lines.append("hosts: " + ", ".join(f"{h['name']}={h['desired_mode']}"
                                       + ("" if h["applied_mode"] == h["desired_mode"] else f"(applied {h['applied_mode'] or '-'})")
                                       for h in shown) + (f" ... {len(hosts) - 20} more" if len(hosts) > 20 else ""))
    return "\n".join(lines)


@app.command("status")
def status_cmd(config: Path = config_option(), migration: int = _migration_option(),
               watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C."),
               interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between refreshes."),
               as_json: bool = typer.Option(False, "--json", help="Print JSON (one line per refresh).")) -> None:
    """Read-only: phase, slice, window, breach streak k/N, clean windows, lease, last window per channel.

    Examples: migrator status;  migrator status --watch --interval 2
    """
    sf = reader(config)
    try:
        while True:
            with database_errors(sf), sf() as s:
                rep = ops.status_report(s, migration)
            if as_json:
                emit_json(rep)
            else:
                if watch:
                    typer.echo("\x1b[2J\x1b[H", nl=False)
                typer.echo(render_status(rep))
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return  # Ctrl-C is how --watch ends


@app.command("history")
def history_cmd(config: Path = config_option(), migration: int = _migration_option(),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Read-only: every transition: when, from, to, actor, reason, and the windows that triggered it.

    Example: migrator history --json
    """
    sf = reader(config)
    with database_errors(sf), sf() as s:
        m = api.get_migration(s, migration)
        rows = api.history(s, m.id)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo(f"migration {m.id}: no transitions yet ({m.phase})")
    for r in rows:
        frm = r["from"] + (f"[{r['from_slice']}]" if r["from_slice"] else "")
        to = r["to"] + (f"[{r['to_slice']}]" if r["to_slice"] else "")
        wins = f" windows {r['window_ids']}" if r["window_ids"] else ""
        state = "" if r["status"] == "confirmed" else f" ({r['status']})"
        typer.echo(f"{r['id']:>4} {_ts(r['confirmed_at'] or r['at'])} {frm} -> {to} {r['actor']}{state}: {r['reason']}{wins}")


@app.command("windows")
def windows_cmd(config: Path = config_option(), migration: int = _migration_option(),
                phase: str = typer.Option(None, "--phase", help="Only windows of this phase (e.g. SHADOW)."),
                host: str = typer.Option(None, "--host", help="Only this host."),
                channel: str = typer.Option(None, "--channel", help="perf or ring."),
                last: int = typer.Option(20, "--last", min=1, help="Newest N windows."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Read-only: per-window measurements with their verdicts, per host and channel.

    Examples: migrator windows --phase SHADOW --host mig1;  migrator windows --last 100 --json
    """
    if phase:
        phase = phase.upper()
    sf = reader(config)
    with database_errors(sf), sf() as s:
        m = api.get_migration(s, migration)
        rows = api.list_windows(s, m.id, phase=phase, host=host, channel=channel, last=last)
    if as_json:
        emit_json(rows)
        return
    typer.echo(f"{'id':>7} {'phase':<15} {'host':<10} {'win':>5} {'chan':<4} {'mode':<4} {'attempts':>9} "
               f"{'loss%':>7} {'p99ms':>7} {'verdict':<8} rule")
    for r in rows:
        p99 = "-" if r["lag_p99_ms"] is None else f"{r['lag_p99_ms']:.2f}"
        typer.echo(f"{r['id']:>7} {r['phase']:<15} {r['host']:<10} {r['index']:>5} {r['channel']:<4} {r['mode']:<4} "
                   f"{r['attempts']:>9} {100 * r['loss_rate']:>7.3f} {p99:>7} {r['verdict'] or '-':<8} {r['rule'] or ''}")


@app.command("what-if")
def what_if_cmd(config: Path = config_option(), migration: int = _migration_option(),
                rollback_after: int = typer.Option(None, "--rollback-after", min=1, help="Another N."),
                max_loss_rate: float = typer.Option(None, "--max-loss-rate", min=0.0, max=1.0),
                max_lag_p99_ms: float = typer.Option(None, "--max-lag-p99-ms", min=0.0),
                max_parse_errors: int = typer.Option(None, "--max-parse-errors", min=0),
                max_payload_mismatch: int = typer.Option(None, "--max-payload-mismatch", min=0),
                no_data: str = typer.Option(None, "--no-data", help="hold, breach or reset."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Read-only: replay stored windows under other thresholds / N; where would it have rolled back?

    Example: migrator what-if --rollback-after 2 --max-loss-rate 0.0005
    """
    if no_data is not None and no_data not in ("hold", "breach", "reset"):
        raise typer.BadParameter("must be hold, breach or reset", param_hint="--no-data")
    sf = reader(config)
    with database_errors(sf), sf() as s:
        rep = ops.what_if_report(s, migration, rollback_after=rollback_after, no_data=no_data,
                                 max_loss_rate=max_loss_rate, max_lag_p99_ms=max_lag_p99_ms,
                                 max_parse_errors=max_parse_errors, max_payload_mismatch=max_payload_mismatch)
    if as_json:
        emit_json(rep)
        return
    v = rep["verdicts"]
    typer.echo(f"migration {rep['migration_id']} replayed with rollback_after={rep['rollback_after']}, "
               f"max_loss_rate={rep['thresholds']['max_loss_rate']}, max_lag_p99_ms={rep['thresholds']['max_lag_p99_ms']}, "
               f"no_data={rep['no_data']}: {v['pass']} pass, {v['breach']} breach, {v['no-data']} no-data")
    at = rep["rollback_at"]
    if at:
        where = at["phase"] + (f" slice {at['slice']}" if at["slice"] else "")
        typer.echo(f"would roll back in {where} "
                   f"at window {at['index']} (windows {at['window_ids']})")
    else:
        typer.echo("would not roll back")
    act = rep["actual_rollback"]
    typer.echo("actually: " + (f"rolled back by transition {act['transition_id']} (windows {act['window_ids']})"
                                if act else "no automatic rollback"))
