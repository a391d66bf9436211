"""`migrator lab ...`: simulated hosts (network namespaces) on this machine, and their traffic."""
from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli import app
from migrator.cli._log import LogFormat, log_format_option, log_level_option, setup_logging
from migrator.cli._out import emit_json
from migrator.cli._options import (CONFIG_DEFAULT, config_option, json_option, metrics_addr_option, resolve_config,
                                   window_option)
from migrator.shared.passwords import hide_password
from migrator.errors import MigratorError

lab_app = typer.Typer(
    help="Simulated hosts on this machine: network namespaces joined by veth pairs (needs root).\n\n"
         "Examples:\n\n"
         "    sudo migrator lab up --hosts 4\n\n"
         "    sudo migrator lab traffic mig1 --profile burst --count 10000\n\n"
         "    sudo migrator lab run --fault stall-ring",
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")


def _core():
    """migrator.tools.lab, imported when a lab command runs (it loads pyroute2: too slow for every `migrator`)."""
    from migrator.tools import lab

    return lab


PREFIX = typer.Option("mig", "--prefix", "-p", help="Name prefix of the lab: namespaces <prefix>1..N, links <prefix>N-h/-n.")


def _row(h) -> str:
    filters = ",".join(f"{hook}:{'+'.join(n)}" for hook, n in sorted(h.filters.items())) or "-"
    return (f"{h.name:<8} {h.root_if:<10} {h.root_addr or '-':<13} {h.host_if:<10} "
            f"{h.host_addr or '-':<13} {'clsact' if h.qdisc else '-':<7} {filters}")


HEADER = f"{'HOST':<8} {'ROOT_IF':<10} {'ROOT_ADDR':<13} {'HOST_IF':<10} {'HOST_ADDR':<13} {'QDISC':<7} FILTERS"


@lab_app.command("up")
def up(hosts: int = typer.Option(3, "--hosts", "-n", help="Number of hosts (1-64)."), prefix: str = PREFIX,
       json_out: bool = json_option("Print a JSON list of hosts.")) -> None:
    """Create the lab, or repair it: running it again on an existing lab is safe.

    Each host gets a namespace, a veth pair with a /30 in 10.213.0.0/16, static neighbours,
    IPv6 off and a clsact qdisc on its interface.

    Example:

        sudo migrator lab up --hosts 4
    """
    made = _core().lab_up(hosts, prefix)
    if json_out:
        emit_json([h.to_dict() for h in made])
        return
    typer.echo(HEADER)
    for h in made:
        typer.echo(_row(h))


@lab_app.command("down")
def down(prefix: str = PREFIX, json_out: bool = json_option("Print what was removed as JSON.")) -> None:
    """Remove every namespace, veth and qdisc of the lab, including leftovers of a crashed run.

    Example:

        sudo migrator lab down --prefix mig
    """
    removed = _core().lab_down(prefix)
    if json_out:
        emit_json(removed)
        return
    if not any(removed.values()):
        typer.echo(f"Nothing to remove for prefix {prefix!r}.")
        return
    for what, items in removed.items():
        if items:
            typer.echo(f"removed {len(items)} {what}: {', '.join(items)}")


@lab_app.command("status")
def status(prefix: str = PREFIX, json_out: bool = json_option("Print a JSON list of hosts.")) -> None:
    """List the lab's hosts, interfaces, addresses, qdisc and attached BPF filters. Read-only.

    Example:

        sudo migrator lab status --json | jq '.[] | select(.filters == {})'
    """
    hosts = _core().lab_status(prefix)
    if json_out:
        emit_json([h.to_dict() for h in hosts])
    elif not hosts:
        typer.echo(f"No lab hosts with prefix {prefix!r}; create them with `migrator lab up --prefix {prefix}`.")
    else:
        typer.echo(HEADER)
        for h in hosts:
            typer.echo(_row(h))


@lab_app.command("traffic")
def traffic(
    host: str = typer.Argument(..., help="Lab host, e.g. mig1."),
    profile: str = typer.Option("steady", "--profile", help="steady (pps for seconds) or burst (count, fast)."),
    pps: float = typer.Option(1000, "--pps", help="Datagrams per second (steady)."),
    seconds: float = typer.Option(1.0, "--seconds", help="Upper bound on the run time."),
    count: int = typer.Option(None, "--count", help="Upper bound on datagrams (burst: required)."),
    port: int = typer.Option(None, "--port", show_default=False,
                             help="UDP port of the listener in the host (default: the lab listener's)."),
    prefix: str = typer.Option(None, "--prefix", "-p", help="Lab prefix (default: HOST without its number)."),
    json_out: bool = json_option("Print the result as JSON."),
) -> None:
    """Send UDP datagrams from the root namespace to HOST; stops by itself at --count or --seconds.

    Examples:

        sudo migrator lab traffic mig1 --profile steady --pps 5000 --seconds 10

        sudo migrator lab traffic mig2 --profile burst --count 200000 --seconds 5
    """
    core = _core()
    core.traffic.check_args(profile, pps, seconds, count)
    h = core.get_host(host, prefix)
    port = core.traffic.DEFAULT_PORT if port is None else port
    res = core.start_traffic(h, profile=profile, pps=pps, seconds=seconds, count=count, port=port).wait()
    if json_out:
        emit_json({"host": host, "sent": res.sent, "received": res.received, "elapsed": res.elapsed})
        return
    typer.echo(f"{host}: sent {res.sent}, received {res.received} in {res.elapsed:.3f} s "
               f"({res.sent / res.elapsed if res.elapsed else 0:.0f} pps)")


def consumer_lines(res, cfg) -> list[str]:
    """The closing summary of a run of the operator's program ([source] kind = "bcc"): per host,
    the events its sink acted on against the packets sent (demo runs have no sink: no lines)."""
    if not res.consumer:
        return []
    lines = [f"consumer: events the sink {cfg.source.sink} of {cfg.source.file} acted on, per host, "
             "against the packets sent to it"]
    for h, b in res.consumer.items():
        ch = b["by_channel"]
        drops = f", {b['drops']} dropped and counted by the kernel" if b["drops"] else ""
        errs = f", sink raised on {b['sink_errors']} batches" if b["sink_errors"] else ""
        lines.append(f"  {h:<6} sent {b['sent']:>7}  acted {b['acted']:>7} (perf {ch['perf']}, ring {ch['ring']}), "
                     f"{b['switches']} mode switches{drops}{errs}: {b['verdict']}")
    sent = sum(b["sent"] for b in res.consumer.values())
    acted = sum(b["acted"] for b in res.consumer.values())
    drops = sum(b["drops"] for b in res.consumer.values())
    switches = sum(b["switches"] for b in res.consumer.values())
    ok = all(b["ok"] for b in res.consumer.values())
    tail = (f"none lost or doubled across {switches} mode switches" if ok and not drops else
            f"none lost beyond the {drops} the kernel counted, none doubled, across {switches} mode switches" if ok else
            "the books do NOT balance: see the hosts above")
    lines.append(f"  all    sent {sent:>7}  acted {acted:>7}: {tail}")
    return lines


@lab_app.command("run")
def run(
    config: Path = config_option(f"Base canary.toml ({CONFIG_DEFAULT})."),
    hosts: int = typer.Option(None, "--hosts", "-n", help="Lab hosts (default: lab.hosts of the config)."),
    window: float = window_option(None, "Window length: 1s, 500ms, 2.5 (default: the config's)."),
    rollback_after: int = typer.Option(None, "--rollback-after", help="N consecutive breaches (default: the config's)."),
    fault: str = typer.Option(None, "--fault", help="Inject a fault on the first canary host when its canary starts: "
                              "stall-ring, shrink-ring, burst or cpu-load."),
    fault_seconds: float = typer.Option(None, "--fault-seconds", help="How long the fault lasts (default: N + 4 windows)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where the run's canary.toml, database and agent logs go."),
    timeout: float = typer.Option(110.0, "--timeout", help="Give up after this many seconds."),
    keep: bool = typer.Option(False, "--keep", help="Leave the lab hosts up afterwards."),
    json_out: bool = json_option("Print the result (phase, history) as JSON at the end."),
    log_format: LogFormat = log_format_option(),
    log_level: str = log_level_option(),
    metrics_addr: str = metrics_addr_option(),  # the controller's gauges and every host's counters
) -> None:
    """Run a whole perf -> ring migration on lab hosts, live, then print its history.

    The run gets its own directory (canary.toml, SQLite database, agent logs) so it can be
    inspected afterwards with `migrator status|history|windows -c <run-dir>/canary.toml`.

    Examples (the first ends COMPLETE on 4 hosts; with stall-ring the canary host stalls and the run ends
    ROLLED_BACK; with shrink-ring the canary's ring shrinks to 16 KiB for a while):

        sudo migrator lab run

        sudo migrator lab run --fault stall-ring

        sudo migrator lab run --fault shrink-ring

    --log-format and --log-level also apply to the agents it starts (their logs in the run directory).
    """
    setup_logging(log_format, log_level)
    if log_format == "text" and log_level.upper() == "INFO":
        # The live view below prints every judged window and transition itself: the controller's INFO
        # lines would say each move twice. Its warnings (a stall, a lost host) still come through.
        import logging

        logging.getLogger("migrator.control.controller").setLevel(logging.WARNING)
    import time as _time

    from migrator.tools.lab.run import run_lab_migration

    from migrator.tools.lab.run import LAB_FAULTS

    if fault is not None and fault not in LAB_FAULTS:
        raise MigratorError(f"--fault {fault!r} unknown; choose one of {', '.join(LAB_FAULTS)}")
    base = resolve_config(config)
    run_dir = run_dir or Path("runs") / _time.strftime("%Y%m%d-%H%M%S")
    say = (lambda line: typer.echo(line, err=True)) if json_out else typer.echo
    res = run_lab_migration(base, run_dir.resolve(), hosts=hosts, window=window, rollback_after=rollback_after,
                            fault=fault, fault_seconds=fault_seconds, timeout=timeout, keep_lab=keep, say=say,
                            metrics_addr=metrics_addr)
    if json_out:
        emit_json({"migration_id": res.migration_id, "phase": res.phase, "seconds": res.seconds,
                   "run_dir": str(res.run_dir), "final_modes": res.final_modes,
                   "fault_host": res.fault_host, "history": res.history, "consumer": res.consumer})
    else:
        typer.echo("")
        typer.echo(f"history of migration {res.migration_id} ({res.seconds:.1f} s, database {hide_password(res.database_url)}):")
        for t in res.history:
            wtxt = f" (windows {t['windows']})" if t.get("windows") else ""
            typer.echo(f"  {t['from_label']:<16} -> {t['to_label']:<16} {t['actor']:<6} {t['reason']}{wtxt}")
        typer.echo(f"final: {res.phase}; host modes: {', '.join(f'{h}={m}' for h, m in sorted(res.final_modes.items()))}")
        for line in consumer_lines(res, base):
            typer.echo(line)
        typer.echo(f"inspect: {_me()} history -c {res.config_path}")
    if res.phase not in ("COMPLETE", "ROLLED_BACK"):
        raise typer.Exit(1)


def _me() -> str:
    """How to run migrator again as this process was run (`migrator` is not on PATH after set-up:
    the command lives in the venv), for hints that must run as printed."""
    import os
    import shutil
    import sys

    me = sys.argv[0]
    if os.path.basename(me) == "migrator" and shutil.which("migrator") != os.path.abspath(me):
        rel = os.path.relpath(me)
        return rel if not rel.startswith("..") else me
    return "migrator" if shutil.which("migrator") else f"{sys.executable} -m migrator"
