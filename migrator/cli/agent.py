"""`migrator agent`: run one host's data plane against the migration database."""
from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import typer

from migrator.agent.drills import DRILL_KINDS, DRILL_DIR, DRILL_TTL, check_ttl, inject, validate
from migrator.cli import app
from migrator.cli._log import LogFormat, log_format_option, log_level_option, setup_logging
from migrator.shared.passwords import hide_password
from migrator.errors import MigratorError, StoreError, UnknownHost
from migrator.shared.vocab import config_path
from migrator.cli._options import config_option, metrics_addr_option, migration_option, resolve_config
from migrator.cli.control import writer

log = logging.getLogger("migrator.agent")


@app.command("agent")
def agent_cmd(
    host: str = typer.Option(..., "--host", help="This host's name, as listed in the migration."),
    config: Path = config_option(),
    migration: int = migration_option("the active one"),
    seconds: float = typer.Option(None, "--seconds", help="Stop after this long (default: until SIGTERM/Ctrl-C)."),
    drills: bool = typer.Option(False, "--drills", help="Act out faults queued with `migrator fault` (lab and rehearsals only)."),
    tc_device: str = typer.Option(None, "--tc-device", help="Device the tc probe attaches to (default: <host>-n, the lab's)."),
    tc_netns: str = typer.Option(None, "--tc-netns", help="Network namespace of that device (default: <host>, the lab's; '' for this one)."),
    log_format: LogFormat = log_format_option(),
    log_level: str = log_level_option(),
    metrics_addr: str = metrics_addr_option(),
) -> None:
    """Load the probe on this host, follow the desired mode, write a window per channel per period.

    The agent talks to nothing but the database: it reads its host's desired mode (PERF, DUAL,
    RING) and writes windows and heartbeats. Without the database it holds PERF unless RING was
    already confirmed, and sends the windows it kept once the database is back.

    Example: migrator agent --host mig1 -c canary.toml
    """
    setup_logging(log_format, log_level)
    # The data plane (bcc, numpy) and the store load here, not when `migrator` starts.
    from migrator.agent.loop import Agent
    from migrator.control import moves as ops
    from migrator.store import api, database_errors
    from migrator.store.hostlease import migration_for_host

    cfg, sf = writer(config)
    with database_errors(sf), sf() as s:
        # Unnamed: the active migration, or a finished one still owed a mode (a host lost in a rollback).
        m = api.get_migration(s, migration or migration_for_host(s, host))
        mid, snap = m.id, ops.snapshot_config(m)
        names = [h["name"] for h in api.hosts(s, mid)]
    if host not in names:  # before anything is loaded or written
        raise UnknownHost(host, mid, names)
    if snap.source.kind == "command":
        run_command(snap.source.command, config_path(config)[0], host)
        return
    stop = threading.Event()
    termed: list[int] = []

    def on_term(signum, frame) -> None:
        # The loop ends at its next turn and its `finally` closes everything, as after Ctrl-C;
        # a stop event rather than an exception, so no database write or map update is cut short.
        termed.append(signum)
        stop.set()

    from migrator.shared.signals import own_process

    signal.signal(signal.SIGTERM, own_process(on_term))  # a forked helper (pyroute2's) just dies
    deadline = time.time() + seconds if seconds else None
    agent = Agent(sf, snap, host, mid, drills=drills, tc_device=tc_device, tc_netns=tc_netns,
                  metrics_addr=metrics_addr)
    why = agent.run(stop=stop, deadline=deadline)
    log.info("agent %s: %s", host, why, extra={"host": host, "migration_id": mid})
    if termed:
        from migrator.shared.signals import Terminated

        typer.echo(f"agent {host}: stopped by SIGTERM; its probe is closed", err=True)
        raise Terminated(termed[0])  # exits as Ctrl-C does: 128 + the signal


def run_command(command: tuple[str, ...], config: Path, host: str) -> None:
    """[source] kind = "command": the operator's unmodified tool, run through `migrator wrap` in
    this process for this host. Refused with the reason when this installation has no wrap."""
    shown = " ".join(command)
    try:
        from migrator.agent.wrap import run_wrapped
    except ImportError as exc:
        raise MigratorError(f'[source] kind = "command" ({shown}) runs through `migrator wrap`, which this '
                            f"installation does not have ({exc}); fix: use kind = \"bcc\" with the program's "
                            "C file and a sink (runbooks/05-your-pipeline.md), or upgrade migrator") from None
    outcome = run_wrapped(list(command), config=config, host=host)
    if outcome.error is not None:
        raise outcome.error
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


@app.command("fault")
def fault_cmd(
    host: str = typer.Argument(..., help="Host whose agent should misbehave."),
    kind: str = typer.Argument(..., help=f"One of: {', '.join(DRILL_KINDS)}."),
    seconds: float = typer.Option(5.0, "--seconds", help="How long the fault lasts."),
    expires_in: float = typer.Option(DRILL_TTL, "--expires-in",
                                     help="Deadline: a drill no agent took this many seconds after queuing lapses."),
    config: Path = config_option(),
) -> None:
    """Queue a drill for a running agent started with --drills (lab and rehearsals only).

    The host must be one the active migration lists (checked in the database of -c, default
    $MIGRATOR_CONFIG or ./canary.toml); without a reachable database only its name is checked.

    Every drill has a deadline (--expires-in, default 30 s) written in its file. One that no agent
    took by then is dropped: the next agent of that host removes it and never acts it out. A host
    whose agent shows no recent heartbeat gets a warning, and its drill lapses unless an agent
    started with --drills comes up before the deadline.

    Example: migrator fault mig1 stall-ring --seconds 6
    """
    d = validate(host, kind, seconds)  # before any path or database is touched
    ttl = check_ttl(expires_in)
    listed = migration_hosts(config)
    if isinstance(listed, str):
        typer.echo(f"fault: {listed}; {d.host} checked as a name only", err=True)
    elif d.host not in listed[1]:
        raise UnknownHost(d.host, listed[0], listed[1])
    elif d.host in listed[2]:
        typer.echo(f"fault: no live agent for {d.host} in migration {listed[0]} ({listed[2][d.host]}); "
                   f"the drill lapses in {ttl:g} s unless an agent started with --drills takes it", err=True)
    path = inject(d.host, d.kind, d.seconds, DRILL_DIR, expires_in=ttl)
    typer.echo(f"fault {kind} for {seconds:g} s queued for {host} ({path}); lapses in {ttl:g} s if no agent takes it")


def migration_hosts(config: Path | None) -> tuple[int, list[str], dict[str, str]] | str:
    """(id, host names, {silent host: why}) of the active migration, or why they cannot be known (no
    config, no database, no active migration). A host is silent when its agent never reported or not
    within [agents] lost_after_windows windows. An explicit -c that is invalid is an error, not a
    reason to skip the check."""
    from migrator.control import moves as ops
    from migrator.store import api, database_errors, open_store

    path = config_path(config)[0]
    if config is None and not path.exists():
        return f"no config at {path} (give -c), so no database to check the host against"
    cfg = resolve_config(config)
    try:
        sf = open_store(cfg.database_url, readonly=True)
        try:
            with database_errors(sf), sf() as s:
                m = api.active_migration(s)
                if m is None:
                    return f"no active migration in {hide_password(cfg.database_url)}"
                hosts = api.hosts(s, m.id)
                snap = ops.snapshot_config(m)
                return m.id, [h["name"] for h in hosts], silent_agents(
                    hosts, time.time(), snap.agents.lost_after_windows * snap.window_seconds)
        finally:
            sf.dispose()
    except StoreError as exc:
        return f"database not reachable ({exc})"


def silent_agents(hosts: list[dict], now: float, limit_seconds: float) -> dict[str, str]:
    """{host: why} for each host whose agent never reported, or not for more than limit_seconds."""
    out = {}
    for h in hosts:
        last = max((t for t in (h["last_heartbeat"], h["applied_at"]) if t is not None), default=None)
        if last is None:
            out[h["name"]] = "its agent never reported"
        elif now - last > limit_seconds:
            out[h["name"]] = f"last report {now - last:.0f} s ago"
    return out
