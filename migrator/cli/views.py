"""Read-only commands: status, list, history, windows, what-if. They never write to the database.

The store and the control plane are imported inside each command, so that `migrator --help`
and every command that needs neither start without SQLAlchemy and alembic.
"""
from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import typer

from migrator.cli import app
from migrator.cli._options import config_option, duration, json_option, migration_option, resolve_config, watch_option
from migrator.cli._out import emit_json
from migrator.shared.vocab import FINAL, parse_duration

# `status` exit codes, after `kubectl argo rollouts status`: success when the migration is done (or,
# without --watch, still healthy on its way), failure when it ended anywhere but COMPLETE, and its
# own code when --timeout gave up first. Usage errors also exit 2, as every command's do.
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 2

_VERDICT_STYLE = {"pass": "green", "breach": "bold red", "no-data": "yellow"}
_PHASE_STYLE = {"COMPLETE": "bold green", "ROLLED_BACK": "bold red", "ABORTED": "bold red", "PAUSED": "yellow"}


def reader(path: Path | None):
    """Open the config's database read-only for the view commands (never creates or upgrades it)."""
    from migrator.store import open_store

    cfg = resolve_config(path)
    return open_store(cfg.database_url, readonly=True)


def _ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


# --timeout: checked before any database is opened (a usage error, exit 2); kept as text for the messages.
_check_timeout = duration("--timeout", zero=True, examples="90, 90s, 5m, 1h30m or 0 (no limit)", keep_text=True)


def exit_code(phase: str) -> int:
    """What `status` returns for a migration in `phase`: 1 when it ended ROLLED_BACK or ABORTED, else 0."""
    return EXIT_FAILED if phase in ("ROLLED_BACK", "ABORTED") else EXIT_OK


def status_document(session, migration_id: int | None) -> dict:
    """status_report plus, per host, its last ring and perf window, last verdict and streak, and the
    transition that ended a final migration (`ended`)."""
    from migrator.control import moves as ops
    from migrator.store import api

    rep = ops.status_report(session, migration_id)
    # Host streaks count in the phase position being judged now; paused or ended, in each host's last one.
    live = rep["phase"] in ("DUAL_INSTRUMENT", "SHADOW", "CANARY")
    position = (rep["phase"], rep["slice"]) if live else None
    by_name = {h["name"]: h for h in api.host_status(session, rep["migration_id"], position=position,
                                                       rollback_after=rep["rollback_after"])}
    rep["hosts"] = [{**h, **by_name.get(h["name"], {})} for h in rep["hosts"]]
    if rep["streak_by"] != "controller" or not live:
        # Ended or decided by a host's own breaker: each host's streak is its windows in that streak.
        for h in rep["hosts"]:
            h["streak"] = len({w["index"] for w in rep["streak_windows"] if w["host"] == h["name"]})
    rep["ended"] = None
    hist = api.history(session, rep["migration_id"])
    if rep["phase"] in FINAL:
        rep["ended"] = hist[-1] if hist else None
    # The newest confirmed move that set modes, per host: a lost host is named, with whether it has
    # applied the mode since (its agent returned) or still owes it.
    last = next((t for t in reversed(hist) if t["status"] == "confirmed" and t.get("hosts")), None)
    now_mode = {h["name"]: h["applied_mode"] for h in rep["hosts"]}
    rep["lost_hosts"] = [{"host": h, "transition_id": last["id"], "mode": o["mode"], "last_report": o["last_report"],
                          "applied_since": now_mode.get(h) == o["mode"]}
                         for h, o in sorted((last or {}).get("hosts", {}).items()) if o["status"] == "lost"] \
        if last else []
    return rep


# ---- rendering: plain text (pipes, logs, tests) and rich (a terminal) --------------------------

def _channel(w: dict | None) -> tuple[str, str, str]:
    """(loss, lag p99, emit ns) of a host's last window on one channel; "-" where there is none, and
    for a channel its host does not write (no attempt in the window: a PERF host's ring)."""
    if w is None or not w.get("attempts"):
        return "-", "-", "-"
    p99 = "-" if w["lag_p99_ms"] is None else f"{w['lag_p99_ms']:.2f}ms"
    emit = "-" if w.get("producer_ns") is None else f"{w['producer_ns']:.0f}"
    return f"{100 * w['loss_rate']:.3f}%", p99, emit


def _mode(h: dict) -> str:
    return f"{h['desired_mode']}/{h['applied_mode'] or '-'}"


def _verdict(h: dict) -> str:
    v = h.get("verdict")
    return "-" if not v else v["verdict"] + ("" if v["verdict"] == "pass" else f" ({v['rule']})")


def _age(h: dict, now: float) -> str:
    ends = [w["end"] for w in (h.get("ring"), h.get("perf")) if w]
    if not ends:
        return "-"
    age = max(0.0, now - max(ends))
    if age < 60:
        return f"{age:.1f}s"
    return f"{int(age // 60)}m{int(age % 60):02d}s" if age < 3600 else f"{int(age // 3600)}h{int(age % 3600 // 60):02d}m"


# Two tables keyed by host, so that each fits 80 columns: what the host is doing and how it was
# judged, then its last window per channel (loss, lag p99, emit cost per event in the traced context).
HOST_COLUMNS = ("HOST", "SLICE", "MODE", "VERDICT", "STREAK")
WINDOW_COLUMNS = ("HOST", "RING loss", "p99", "emit ns", "PERF loss", "p99", "emit ns", "AGE")
LEGEND = ("MODE: desired/applied; VERDICT: its last judged window; STREAK: its own breaching windows in a row / N. "
          "RING, PERF: the host's last window per channel (loss, lag p99, emit cost per event in ns); "
          "AGE: since its last window ended")


def host_rows(rep: dict) -> list[tuple[str, ...]]:
    """One row of strings per host, in canary order, under HOST_COLUMNS."""
    n = rep["rollback_after"]
    return [(h["name"], str(h["slice"]), _mode(h), _verdict(h), f"{h.get('streak', 0)}/{n}") for h in rep["hosts"]]


def window_rows(rep: dict, now: float) -> list[tuple[str, ...]]:
    """One row of strings per host, in canary order, under WINDOW_COLUMNS."""
    return [(h["name"], *_channel(h.get("ring")), *_channel(h.get("perf")), _age(h, now)) for h in rep["hosts"]]


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    rows = [columns, *rows]
    w = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return ["  ".join(f"{c:<{w[i]}}" for i, c in enumerate(r)).rstrip() for r in rows]


# The phase line's word for each stall cause (control/stall.py); the next line gives the whole reason.
STALL_SHORT = {"schema": "STALLED: event schema changed", "no_agent": "WAITING for agents",
               "no_data": "STALLED: too few events", "gate": "WAITING for `migrator advance`"}


def header_lines(rep: dict) -> list[str]:
    """The lines above the host table: phase, window and streak, last verdict, pending move, lease, end."""
    pause = rep.get("pause")  # while PAUSED: since the pause itself, not the paused phase's start
    stall = rep.get("stall")
    lines = [f"migration {rep['migration_id']}: {rep['label']}"
             + (f" (paused in {rep['paused_phase']})" if rep["paused_phase"] else "")
             + f"   since {_ts(pause['at'] if pause else rep['phase_since'])}"
             + (f"   {STALL_SHORT.get(stall['cause'], 'stalled')}" if stall else "")]
    if stall:
        lines.append(f"cannot advance: {stall['reason']}")
    if pause:
        lines.append(f"paused by {pause['actor']}: {pause['reason']}")
    clean = (f", clean {rep['clean_windows']}/{rep['min_clean_windows']}"
             + (" + manual gate" if rep["manual_gate"] else "")) if rep["min_clean_windows"] is not None else ""
    lines.append(f"window {rep.get('window_name', rep['window'])}   breach streak {rep['streak']}/{rep['rollback_after']}"
                 f"{clean}   no-data: {rep['no_data']}")
    if rep.get("streak_windows"):  # the same windows in every view (control/story.py)
        from migrator.control.story import describe

        lines.append(f"streak windows ({rep['streak_by']}): {describe(rep['streak_windows'])}")
    if rep["last_verdict"]:
        lv = rep["last_verdict"]
        lines.append(f"last verdict: window {lv.get('name', lv['index'])} {lv['verdict']} ({lv['rule']})")
    if rep["pending"]:
        lines.append(f"pending transition {rep['pending']['id']} -> {rep['pending']['to']} (being applied)")
    if rep["reported_fingerprint"] and rep["reported_fingerprint"] != rep["schema_fingerprint"]:
        lines.append(f"SCHEMA CHANGED: frozen {rep['schema_fingerprint']}, reported {rep['reported_fingerprint']}")
    lease = rep["lease"]
    lines.append("controller: " + (f"{lease['holder']} (lease until {_ts(lease['expires_at'])}"
                                   f"{'' if lease['live'] else ', expired'})" if lease else "not running"))
    for lost in [h for h in rep.get("lost_hosts") or [] if not h["applied_since"]]:  # still owed
        seen = f"last report {_ts(lost['last_report'])}" if lost["last_report"] else "never reported"
        lines.append(f"host {lost['host']}: LOST at transition {lost['transition_id']} ({seen}); "
                     + f"owes {lost['mode']}: restart its agent (migrator agent --host {lost['host']}), "
                     "it applies it with no other flag")
    end = rep.get("ended")
    if end:
        from migrator.control.phases import label

        frm = label(end["from"], end["from_slice"], rep["slices"])
        lines.append(f"ended: {frm} -> {end['to']} by {end['actor']} at {_ts(end['confirmed_at'] or end['at'])}: "
                     f"{end['reason']}")
    return lines


def render_status(rep: dict, now: float | None = None) -> str:
    """The plain text of `migrator status`: the header lines, then per host its state and its last windows."""
    now = time.time() if now is None else now
    return "\n".join(header_lines(rep) + _table(HOST_COLUMNS, host_rows(rep))
                     + _table(WINDOW_COLUMNS, window_rows(rep, now)))


def render_rich(rep: dict, now: float | None = None, note: str = ""):
    """The live view: phase lines, then the per-host tables coloured by verdict and mode (a rich renderable)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    head = header_lines(rep)
    title = Text(head[0], style=_PHASE_STYLE.get(rep["phase"], "bold"))
    hosts = Table(*HOST_COLUMNS, box=None, header_style="bold", pad_edge=False)
    for h, row in zip(rep["hosts"], host_rows(rep)):
        v = (h.get("verdict") or {}).get("verdict")
        mode_style = "" if h["applied_mode"] == h["desired_mode"] else "yellow"
        hosts.add_row(row[0], row[1], Text(row[2], style=mode_style), Text(row[3], style=_VERDICT_STYLE.get(v, "")),
                      Text(row[4], style="bold red" if h.get("streak") else ""))
    windows = Table(*WINDOW_COLUMNS, box=None, header_style="bold", pad_edge=False, caption=LEGEND,
                    caption_justify="left", caption_style="dim")
    for row in window_rows(rep, now):
        windows.add_row(*row)
    parts = [title, *(Text(line) for line in head[1:]), hosts, windows]
    if note:
        parts.append(Text(note, style="dim"))
    return Group(*parts)


# ---- commands ------------------------------------------------------------------------------------

@app.command("status")
def status_cmd(config: Path = config_option(), migration: int = migration_option(),
               watch: bool = watch_option("Refresh until the migration ends (COMPLETE, ROLLED_BACK or ABORTED)."),
               timeout: str = typer.Option(None, "--timeout", "-t", metavar="DURATION", callback=_check_timeout,
                                           help="Watch at most this long (90, 90s, 5m, 1h30m; 0: no limit), then exit 2. "
                                                "Implies --watch."),
               interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between refreshes."),
               as_json: bool = json_option("Print JSON (one document per refresh).")) -> None:
    """Read-only: phase, window, breach streak k/N, lease, and per host its slice, mode
    (desired/applied), verdict and own breach streak, then its last ring and perf window (loss, lag
    p99, emit ns: what one event costs the traced context to emit) and their age.

    Exit codes (as `kubectl argo rollouts status`): 0 when the migration is COMPLETE, or without
    --watch while it is still on its way (PLANNED, a measured phase, PAUSED); 1 when it ended
    ROLLED_BACK or ABORTED (or on any error); 2 when --timeout expired before it ended (2 is
    also a usage error). --watch returns as soon as the migration reaches a final phase, with
    that phase's code; Ctrl-C ends it with 130. The migration watched is fixed at the first
    read, even if a newer one is recorded meanwhile.

    On a terminal the view is a live table; piped, or with --json, it prints plain text or one
    JSON document per refresh. The per-host streak counts that host's own breaching windows in
    a row in the current phase position; the breach streak line is the migration's, the one
    that rolls back at N.

    Examples:

        migrator status

        migrator status --watch --timeout 30m && echo migrated

        migrator status --watch --json | jq -c '{phase, streak}'
    """
    from migrator.errors import DatabaseUnavailable
    from migrator.store import database_errors

    limit = parse_duration(timeout) if timeout is not None else None
    watch = watch or limit is not None
    deadline = time.monotonic() + limit if limit else None
    tty = sys.stdout.isatty() and not as_json
    sf = reader(config)
    live = None
    if watch and tty:
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(), auto_refresh=False, vertical_overflow="visible")
        live.start()
    rep, note = None, ""
    try:
        while True:
            try:
                with database_errors(sf), sf() as s:
                    rep = status_document(s, migration)
                note = ""
            except DatabaseUnavailable as exc:
                if rep is None or not watch:
                    raise
                note = f"{_ts(time.time())} {exc}; retrying"  # a watch rides out an outage: shows the last read
                if not tty:
                    typer.echo(note, err=True)
            migration = rep["migration_id"]
            if live is not None:
                live.update(render_rich(rep, note=note), refresh=True)
            elif not note:
                if as_json:
                    emit_json(rep)
                elif tty:
                    from rich.console import Console

                    Console().print(render_rich(rep))
                else:
                    typer.echo(render_status(rep))
                    if watch:
                        typer.echo("")
            if rep["phase"] in FINAL or not watch:
                code = exit_code(rep["phase"])
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                code = EXIT_TIMEOUT
                break
            time.sleep(interval if left is None else min(interval, left))
    finally:
        if live is not None:
            live.stop()  # before any message: the last frame stays on the screen
    if code == EXIT_TIMEOUT:
        typer.echo(f"Error: --timeout {timeout} expired: migration {rep['migration_id']} is still {rep['label']}",
                   err=True)
    raise typer.Exit(code)


@app.command("list")
def list_cmd(config: Path = config_option(),
             as_json: bool = json_option("Print JSON (a list, oldest first).")) -> None:
    """Read-only: every migration in the database: id, name, phase, created, hosts, windows, last transition.

    Examples:

        migrator list

        migrator list --json | jq '.[] | select(.phase == "ROLLED_BACK") | .id'
    """
    from migrator.control.phases import label
    from migrator.store import api, database_errors

    sf = reader(config)
    with database_errors(sf), sf() as s:
        rows = api.list_migrations(s)
    for r in rows:
        r["label"] = label(r["phase"], r["slice"], r["slices"])
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo("no migrations in this database; run `migrator init`")
        return
    table = [("ID", "PHASE", "CREATED", "HOSTS", "WINDOWS", "LAST TRANSITION", "NAME")]
    for r in rows:
        t = r["last_transition"]
        last = "-" if t is None else (f"{_ts(t['confirmed_at'] or t['at'])} {t['from']} -> {t['to']} {t['actor']}"
                                      + ("" if t["status"] == "confirmed" else f" ({t['status']})"))
        table.append((str(r["id"]), r["label"], _ts(r["created_at"]), str(r["hosts"]), str(r["windows"]), last,
                      r["name"]))
    w = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        typer.echo("  ".join([*(f"{c:<{w[i]}}" if i else f"{c:>{w[i]}}" for i, c in enumerate(row[:-1])), row[-1]]))


@app.command("history")
def history_cmd(config: Path = config_option(), migration: int = migration_option(),
                as_json: bool = json_option()) -> None:
    """Read-only: every transition: when, from, to, actor, reason, and the windows that triggered it.

    Example: migrator history --json
    """
    from migrator.store import api, database_errors

    sf = reader(config)
    with database_errors(sf), sf() as s:
        from migrator.control.phases import label, slice_count
        from migrator.control.story import describe, transition_windows

        m = api.get_migration(s, migration)
        rows = api.history(s, m.id)
        transition_windows(s, m.id, rows)  # each transition's windows, named #n (control/story.py)
        slices = slice_count(s, m.id)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo(f"migration {m.id}: no transitions yet ({m.phase})")
    for r in rows:
        frm, to = label(r["from"], r["from_slice"], slices), label(r["to"], r["to_slice"], slices)
        wins = f" (windows {describe(r['windows'])})" if r["windows"] else ""
        state = "" if r["status"] == "confirmed" else f" ({r['status']})"
        lost = sorted(h for h, o in (r.get("hosts") or {}).items() if o["status"] == "lost")
        state += f" (lost: {', '.join(lost)}; not confirmed there)" if lost else ""
        typer.echo(f"{r['id']:>4} {_ts(r['confirmed_at'] or r['at'])} {frm} -> {to} {r['actor']}{state}: {r['reason']}{wins}")


@app.command("windows")
def windows_cmd(config: Path = config_option(), migration: int = migration_option(),
                phase: str = typer.Option(None, "--phase", help="Only windows of this phase (e.g. SHADOW)."),
                host: str = typer.Option(None, "--host", help="Only this host."),
                channel: str = typer.Option(None, "--channel", help="perf or ring."),
                last: int = typer.Option(20, "--last", min=1, help="Newest N windows."),
                as_json: bool = json_option()) -> None:
    """Read-only: per-window measurements with their verdicts, per host and channel.

    Examples:

        migrator windows --phase SHADOW --host mig1

        migrator windows --last 100 --json
    """
    from migrator.control.story import first_index, window_name
    from migrator.store import api, database_errors

    if phase:
        phase = phase.upper()
    sf = reader(config)
    with database_errors(sf), sf() as s:
        m = api.get_migration(s, migration)
        rows = api.list_windows(s, m.id, phase=phase, host=host, channel=channel, last=last)
        first = first_index(s, m.id)
    if as_json:
        emit_json(rows)
        return
    # window: its name, #n (its number within the migration, as every view prints it); the row id
    # is in --json. filled: records perf lost that the host's process delivered from their ring copy.
    typer.echo(f"{'window':<7} {'phase':<15} {'host':<10} {'chan':<4} {'mode':<4} {'attempts':>9} "
               f"{'loss%':>7} {'filled':>7} {'p99ms':>7} {'emit_ns':>7} {'verdict':<8} rule")
    for r in rows:
        p99 = "-" if r["lag_p99_ms"] is None else f"{r['lag_p99_ms']:.2f}"
        typer.echo(f"{window_name(r['index'], first):<7} {r['phase']:<15} {r['host']:<10} {r['channel']:<4} {r['mode']:<4} "
                   f"{r['attempts']:>9} {100 * r['loss_rate']:>7.3f} {r['filled_from_ring']:>7} {p99:>7} "
                   f"{'-' if r['producer_ns'] is None else round(r['producer_ns']):>7} "
                   f"{r['verdict'] or '-':<8} {r['rule'] or ''}")


@app.command("what-if")
def what_if_cmd(config: Path = config_option(), migration: int = migration_option(),
                rollback_after: int = typer.Option(None, "--rollback-after", min=1, metavar="N",
                                                   help="Breaching windows in a row that roll back."),
                max_loss_rate: float = typer.Option(None, "--max-loss-rate", min=0.0, max=1.0, metavar="RATE",
                                                    help="Most (dropped + lost) / attempts of a ring window."),
                max_lag_p99_ms: float = typer.Option(None, "--max-lag-p99-ms", min=0.0, metavar="MS",
                                                     help="Most end-to-end lag p99 of the ring consumer."),
                max_loss_delta: float = typer.Option(None, "--max-loss-delta", max=1.0, metavar="RATE",
                                                     help="Most ring loss rate minus perf loss rate."),
                max_lag_ratio: float = typer.Option(None, "--max-lag-ratio", min=0.0, metavar="RATIO",
                                                    help="Most ring lag p99 / perf lag p99."),
                max_cpu_ratio: float = typer.Option(None, "--max-cpu-ratio", min=0.0, metavar="RATIO",
                                                    help="Most ring consumer CPU per event / perf's."),
                max_inversions: int = typer.Option(None, "--max-inversions", min=0, metavar="COUNT",
                                                   help="Most ordering inversions in a ring window."),
                min_events: int = typer.Option(None, "--min-events", min=1, metavar="COUNT",
                                               help="Fewest attempts a window needs to be judged (fewer: no-data)."),
                max_parse_errors: int = typer.Option(None, "--max-parse-errors", min=0, metavar="COUNT",
                                                     help="Most ring records per window no payload layout reads."),
                max_payload_mismatch: int = typer.Option(None, "--max-payload-mismatch", min=0, metavar="COUNT",
                                                         help="Most ring payloads per window that differ from perf's (DUAL)."),
                max_producer_ratio: float = typer.Option(None, "--max-producer-ratio", min=0.0, metavar="RATIO",
                                                         help="Most ring emit cost per event / perf's (rule producer_cost)."),
                max_producer_ns: float = typer.Option(None, "--max-producer-ns", min=0.0, metavar="NS",
                                                      help="Most ring emit cost per event in ns (rule producer_cost)."),
                no_data: str = typer.Option(None, "--no-data", metavar="hold|breach|reset",
                                            help="What a window without data does to the streak."),
                as_json: bool = json_option()) -> None:
    """Read-only: replay stored windows under other thresholds / N; where would it have rolled back?

    Every option not given keeps the value the migration was planned with (its canary.toml [thresholds], rollback_after and no_data), so what-if without options replays the migration as it ran.

    Examples:

        migrator what-if --rollback-after 2 --max-loss-rate 0.0005

        migrator what-if --max-lag-ratio 2 --min-events 100 --json
    """
    from migrator.control import moves as ops
    from migrator.control.phases import label
    from migrator.store import database_errors

    if no_data is not None and no_data not in ("hold", "breach", "reset"):
        raise typer.BadParameter("must be hold, breach or reset", param_hint="--no-data")
    sf = reader(config)
    with database_errors(sf), sf() as s:
        rep = ops.what_if_report(s, migration, rollback_after=rollback_after, no_data=no_data,
                                 max_loss_rate=max_loss_rate, max_lag_p99_ms=max_lag_p99_ms,
                                 max_loss_delta=max_loss_delta, max_lag_ratio=max_lag_ratio,
                                 max_cpu_ratio=max_cpu_ratio, max_inversions=max_inversions, min_events=min_events,
                                 max_parse_errors=max_parse_errors, max_payload_mismatch=max_payload_mismatch,
                                 max_producer_ratio=max_producer_ratio, max_producer_ns=max_producer_ns)
    if as_json:
        emit_json(rep)
        return
    v = rep["verdicts"]
    typer.echo(f"migration {rep['migration_id']} replayed with rollback_after={rep['rollback_after']}, "
               f"max_loss_rate={rep['thresholds']['max_loss_rate']}, max_lag_p99_ms={rep['thresholds']['max_lag_p99_ms']}, "
               f"no_data={rep['no_data']}: {v['pass']} pass, {v['breach']} breach, {v['no-data']} no-data")
    at = rep["rollback_at"]
    if at:
        where = label(at["phase"], at["slice"], rep["slices"])
        typer.echo(f"would roll back in {where} by {at['by']} (windows {at['describe']})")
    else:
        typer.echo("would not roll back")
    rolled = rep.get("rolled_up")
    if rolled:  # `migrator prune` rolled windows up: the replay only sees the ones kept
        typer.echo(f"note: {rolled['windows']} windows were rolled up by `migrator prune`; the replay covers "
                   "only the windows kept. Host verdicts recorded on the rolled-up ones:")
        for p in rolled["recorded_verdicts"]:
            where = p["phase"] + (f" slice {p['slice']}" if p["slice"] else "")
            typer.echo(f"  {where}: {p['windows']} windows, {p['pass']} pass, {p['breach']} breach, "
                       f"{p['no-data']} no-data")
    act = rep["actual_rollback"]
    typer.echo("actually: " + (f"rolled back by {act['by']}, transition {act['transition_id']} (windows {act['describe']})"
                                if act else "no automatic rollback"))
