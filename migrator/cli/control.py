"""Commands that drive a migration: init, plan, start, advance, pause, resume, rollback, abort, undo.

Each one loads canary.toml first (so an invalid config writes nothing), opens the database
(upgrading an older one, refusing a newer one), calls one core function, and renders.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import typer

from migrator.cli import app
from migrator.errors import ConfigError, DatabaseUnavailable, MigratorError, StoreError
from migrator.cli._log import LogFormat, log_format_option, log_level_option, setup_logging
from migrator.cli._options import (CONFIG_HELP, config_option, confirm_timeout_option, json_option, metrics_addr_option,
                                   migration_option, reason_option, resolve_config)
from migrator.cli._out import emit_json
from migrator.config import Config
from migrator.dataplane.source import source_hash
from migrator.shared.passwords import hide_password
from migrator.shared.resources import example_config

# The control plane and the store (SQLAlchemy, alembic) are imported inside the commands that use
# them: every `migrator` invocation imports this module, and `--help` or `plan` must not pay for them.


def check_database(cfg: Config) -> None:
    """Refuse a database that cannot work (ConfigError on canary.toml's `database` field), before
    anything is written: bad URL, unknown scheme, driver not installed, in-memory SQLite, an SQLite
    directory that does not exist (never created: "create DIR first") or is not writable."""
    from migrator.store import check_database_url

    try:
        check_database_url(cfg.database_url)
    except DatabaseUnavailable as exc:
        raise ConfigError(cfg.path, "database", f"{exc.url}: {exc.problem}", exc.fix) from None


def writer(path: Path | None):
    """Config first and its database checked (nothing is written when either is bad), then the upgraded store."""
    from migrator.store import open_store

    cfg = resolve_config(path)
    check_database(cfg)
    return cfg, open_store(cfg.database_url)


@app.command("plan")
def plan_cmd(config: Path = config_option(),
             as_json: bool = json_option()) -> None:
    """Read-only: validate canary.toml and show the phases and slices (never writes the database).

    When the database exists and holds a migration of the same program (or config path), a line on
    stderr warns if buffers.ring_bytes is below what `migrator advise` recommends from its windows.

    With [source] kind = "bcc" it also checks the operator's program: the sink's module and
    function, and (as root, with bcc) compiles the program once, finds its channel's maps and
    loads each [[source.attach]] function through the verifier, then unloads everything.

    Example: migrator plan -c canary.toml
    """
    from migrator.control.phases import label

    cfg = resolve_config(config)
    check_database(cfg)
    source = source_report(cfg)
    warning = ring_size_warning(cfg)
    if warning:
        typer.echo(warning, err=True)
    phases = [{"phase": p, "min_clean_windows": cfg.phase_rule(p).min_clean_windows,
               "manual_gate": cfg.phase_rule(p).manual_gate} for p in ("DUAL_INSTRUMENT", "SHADOW")]
    phases += [{"phase": "CANARY", "slice": k, "ring_hosts": list(h), "min_clean_windows": cfg.phases.canary.min_clean_windows,
                "manual_gate": cfg.phases.canary.manual_gate} for k, h in enumerate(cfg.slice_hosts, 1)]
    phases.append({"phase": "COMPLETE"})
    if as_json:
        emit_json({"config": cfg.to_dict(), "config_hash": cfg.hash, "database_url": hide_password(cfg.database_url),
                   "hosts": list(cfg.host_names), "phases": phases, "source": source})
        if source.get("error"):
            raise MigratorError(source["error"])
        return
    typer.echo(f"{cfg.path}: valid (hash {cfg.hash[:12]}), database {hide_password(cfg.database_url)}")
    typer.echo(f"hosts ({len(cfg.host_names)}): {', '.join(cfg.host_names)}")
    typer.echo(f"rollback after {cfg.rollback_after} consecutive breaching windows of {cfg.window_seconds:g} s; "
               f"no-data: {cfg.no_data}")
    for p in phases:
        if p["phase"] == "COMPLETE":
            typer.echo("  COMPLETE          all hosts RING")
            continue
        name = label(p["phase"], p.get("slice", 0), len(cfg.slice_hosts))
        gate = ", manual gate" if p["manual_gate"] else ""
        what = (f"RING on {len(p['ring_hosts'])}/{len(cfg.host_names)} hosts" if "ring_hosts" in p else "all hosts DUAL")
        typer.echo(f"  {name:<17} {what}; {p['min_clean_windows']} clean windows{gate}")
    for line in source_lines(source):
        typer.echo(line)
    if source.get("error"):
        raise MigratorError(source["error"])


def ring_size_warning(cfg: Config) -> str | None:
    """`plan`'s warning when buffers.ring_bytes is below the last advice for this program
    (control/advise.ring_warning); None when it is not, or there is no database or migration to ask."""
    from migrator.store import open_store, sqlite_path

    try:
        path = sqlite_path(cfg.database_url)
        if path is not None and not path.exists():
            return None  # plan never creates the database
        sf = open_store(cfg.database_url, readonly=True)
    except MigratorError:
        return None
    try:
        from migrator.control.advise import ring_warning

        with sf() as s:
            return ring_warning(s, cfg)
    except Exception:  # advice is a courtesy here: plan's own checks decide its exit
        return None
    finally:
        sf.dispose()


def source_report(cfg: Config) -> dict:
    """What `plan` says about [source]: the program, its hash, the sink, and the compile check
    (or why it was skipped). An `error` key holds the first problem found."""
    src = cfg.source
    out: dict = {"kind": src.kind}
    if src.kind == "demo":
        out["probe"] = cfg.probe.name
        return out
    if src.kind == "command":
        out.update(command=list(src.command), channel=src.channel, runs_through="migrator wrap")
        return out
    out.update(file=src.file, cflags=list(src.cflags), channel=src.channel, sink=src.sink, sink_path=src.sink_path,
               attach=[a.to_dict() for a in src.attach], source_hash=source_hash(cfg))
    from migrator.dataplane.operator import check_program, check_sink

    if src.kind == "attach":
        out["runs_through"] = "migrator.attach"
    else:
        try:
            out["sink_file"] = check_sink(src)
        except MigratorError as exc:
            out["error"] = str(exc)
            return out
    if os.geteuid() != 0:
        out["compile"] = {"skipped": "not running as root (loading BPF programs needs root)"}
        return out
    if importlib.util.find_spec("bcc") is None:
        out["compile"] = {"skipped": "bcc is not importable (apt-get install python3-bpfcc)"}
        return out
    try:
        out["compile"] = check_program(_as_bcc(src))
    except MigratorError as exc:
        out["compile"] = {"failed": str(exc)}
        out["error"] = str(exc)
    return out


def source_lines(rep: dict) -> list[str]:
    """`plan`'s text about [source]."""
    if rep["kind"] == "demo":
        return [f"source: migrator's demo probe {rep['probe']!r} ([probe])"]
    if rep["kind"] == "command":
        return [f"source: command {' '.join(rep['command'])!r}, channel {rep['channel']}, run through `migrator wrap`"]
    lines = [f"source: bcc program {rep['file']}" + (f" (cflags {' '.join(rep['cflags'])})" if rep["cflags"] else ""),
             f"  source hash {rep['source_hash'][:12]} (the C file, its cflags and migrator.h; `init` records it)"]
    if rep["kind"] == "attach":
        lines[0] += f", channel {rep['channel']}, served by your own process through migrator.attach (no agent)"
    else:
        lines.append(f"  sink {rep['sink']}: " + (f"def found in {rep['sink_file']}" if "sink_file" in rep else "not checked"))
    for a in rep["attach"]:
        where = a["device"] + (f" in netns {a['netns']}" if a.get("netns") else "")
        how = a.get("direction") or f"mode {a.get('mode')}"
        lines.append(f"  attach {a['function']} as {a['type']} {how} on {where} ({{host}}: each agent's host name)")
    c = rep.get("compile")
    if c is None:
        pass
    elif "skipped" in c:
        lines.append(f"  compilation skipped: {c['skipped']}")
    elif "failed" in c:
        lines.append(f"  compilation FAILED: {c['failed']}")
    else:
        pl = c.get("payload")
        lines.append(f"  compiled: channel {c['channel']!r} found (maps {', '.join(c['maps'])}; ring {c['ring_bytes']} bytes)")
        if pl:
            var = f", variable size from {pl['min_size']} bytes" if pl["min_size"] < pl["size"] else ""
            lines.append(f"  payload type: {pl['size']} bytes{var}: {', '.join(pl['fields'])}")
        else:
            lines.append("  payload type: none inferred (bcc could not map the struct): the sink gets no decoded rows")
        for f in c["functions"]:
            lines.append(f"  {f['function']}: loads as {f['type']} (verifier passed)")
        lines.append(f"  schema fingerprint {c['schema_fingerprint']} (what `migrator start` freezes)")
    return lines


@app.command("init")
def init_cmd(config_file: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
             name: str = typer.Option("", "--name", help="A name for this migration."),
             example: bool = typer.Option(False, "--example", help="Print the commented default canary.toml and exit (writes nothing)."),
             as_json: bool = json_option()) -> None:
    """Create or upgrade the database and record the plan as a PLANNED migration.

    Running it again with the same canary.toml changes nothing.

    Examples:

        migrator init --example > canary.toml    # the shipped plan, commented

        migrator init canary.toml
    """
    if example:
        typer.echo(example_config(), nl=False)
        return
    from migrator.control import moves as ops
    from migrator.store import database_errors

    cfg, sf = writer(config_file)
    with database_errors(sf), sf() as s, s.begin():
        m, created = ops.init_migration(s, cfg, name=name)
        out = {"migration_id": m.id, "phase": m.phase, "created": created, "config_hash": m.config_hash,
               "source_hash": m.source_hash, "database_url": hide_password(cfg.database_url), "hosts": len(cfg.host_names),
               "slices": len(cfg.slice_hosts)}
    if as_json:
        emit_json(out)
    else:
        verb = "recorded" if created else "already recorded"
        src = f", source {out['source_hash'][:12]} ({cfg.source.file})" if out["source_hash"] else ""
        typer.echo(f"migration {out['migration_id']} {verb}: {out['phase']}, {out['hosts']} hosts, "
                   f"{out['slices']} slices, config {out['config_hash'][:12]}{src}, database {out['database_url']}")


@app.command("start")
def start_cmd(config: Path = config_option(),
              schema_fingerprint: str = typer.Option(None, "--schema-fingerprint", metavar="FP",
                                                     help="Event schema fingerprint to freeze (default: the data plane's)."),
              confirm_timeout: float = confirm_timeout_option("Wait this long for agents to apply each mode change."),
              run: bool = typer.Option(True, "--run/--no-run", help="Keep driving the migration (the controller loop)."),
              seconds: float = typer.Option(None, "--for", min=0.0, metavar="SECONDS", help="Stop the loop after this many seconds."),
              metrics_addr: str = metrics_addr_option(),
              as_json: bool = json_option(),
              log_format: LogFormat = log_format_option(),
              log_level: str = log_level_option()) -> None:
    """Start the PLANNED migration (DUAL_INSTRUMENT) and drive it to COMPLETE or ROLLED_BACK.

    Also resumes driving an already started migration, finishing a transition a crash left
    half-done. A second `start` on the same migration waits as a standby (it says so on stderr,
    naming the controller holding the lease) and takes over when that lease lapses or its holder
    dies, finishing any transition left half-done: each transition happens exactly once.

    SIGTERM stops it as Ctrl-C does: the lease is released, and it exits 143 (Ctrl-C: 130).

    The whole database file is checked first (SQLite's quick_check): a corrupt page is refused
    before the controller decides anything on it.

    With --metrics-addr it serves the migration's phase, slice and breach streak to Prometheus;
    with webhooks in canary.toml's notify table it posts every transition (also those made by
    other commands, such as a manual rollback).

    Example: migrator start -c canary.toml --confirm-timeout 10
    """
    setup_logging(log_format, log_level)
    from migrator.control import moves as ops
    from migrator.control.controller import default_holder, run_controller, start_migration
    from migrator.control.phases import DbApplier
    from migrator.shared.signals import signal_name
    from migrator.store import api, check_integrity, database_errors

    require_database(resolve_config(config))  # before writer(): never create a database for `start`
    cfg, sf = writer(config)
    check_integrity(sf)
    with database_errors(sf), sf() as s:
        m = api.active_migration(s)
        if m is None:
            raise StoreError("no active migration in this database; run `migrator init` first")
        ops.check_same_config(m, cfg)
        mid = m.id
    applier = DbApplier(confirm_timeout=confirm_timeout)
    fp = schema_fingerprint or start_fingerprint(cfg)
    services: list = []  # (metrics endpoint, notifier), started once this process drives the migration

    def take_over(previous: str | None) -> None:
        # The lease is ours: start the migration if PLANNED (finishing what a crash left half-done
        # first), and the services beside the controller. A standby does none of this before.
        if previous is not None:
            typer.echo(f"migration {mid}: taking over from controller {previous!r}", err=True)
        start_migration(sf, mid, schema_fingerprint=fp, applier=applier)
        if not services:
            services.extend(controller_services(sf, mid, cfg, metrics_addr))

    def stand_by(exc) -> None:
        typer.echo(f"migration {mid} is driven by controller {exc.holder!r} (lease until {exc.expires_at}); "
                   "standing by: this controller takes over when that lease lapses or its holder exits",
                   err=True)

    phase = None
    try:
        with database_errors(sf):
            if run:
                import time
                deadline = None if seconds is None else time.time() + seconds
                on_step = None if as_json else _print_step
                holder = default_holder()
                try:
                    phase = run_controller(sf, mid, applier=applier, stop=threading.Event(), deadline=deadline,
                                           on_step=on_step, standby=stand_by, on_lease=take_over, holder=holder)
                except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: run_controller let the lease go
                    typer.echo(f"migration {mid}: controller stopped by {signal_name(exc)}; {lease_left(sf, mid, holder)}",
                               err=True)
                    raise
            else:
                take_over(None)  # --no-run: the move, and its notification posted before we exit
    finally:
        for service in services:
            if service is not None:
                service.close()
    with database_errors(sf), sf() as s:
        rep = ops.status_report(s, mid)
    if as_json:
        emit_json(rep)
    else:
        typer.echo(f"migration {mid}: {rep['label']}" + ("" if phase else " (controller not running)"))


def lease_left(sf, mid: int, holder: str) -> str:
    """What a stopped controller left of its lease, for its last line: normally nothing."""
    from migrator.store import api

    try:
        with sf() as s:
            lease = api.lease_of(s, mid)
            held = lease is not None and lease.holder == holder
            until = lease.expires_at if held else 0.0
    except Exception as exc:  # noqa: BLE001 - the database may be what stopped us
        return f"its lease could not be checked ({' '.join(str(exc).split())[:120]}); it expires by itself"
    if held:
        import time

        return f"its lease could not be released; it expires at {time.strftime('%H:%M:%S', time.localtime(until))}"
    return "it holds no lease now"


def require_database(cfg: Config) -> None:
    """`start` before `init`: refuse an SQLite database file that does not exist, before anything
    creates it (opening the store would, and then find no migration in it)."""
    from sqlalchemy.engine import make_url

    url = make_url(cfg.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise StoreError(f"no database at {url.database}: nothing was created; record the plan first "
                         f"with `migrator init {cfg.path}`")


def controller_services(sf, mid: int, cfg: Config, metrics_addr: str | None):
    """(metrics endpoint, notifier) that run beside the controller loop; None for each one not asked for."""
    endpoint = notifier = None
    if metrics_addr is not None:
        from migrator.control.metrics import start_migration_metrics

        endpoint = start_migration_metrics(metrics_addr, sf, mid, say=lambda line: typer.echo(line, err=True))
    if cfg.notify.webhooks:
        from migrator.control.notify import notifier_for

        notifier = notifier_for(sf, mid, cfg.notify)
    return endpoint, notifier


def _as_bcc(src):
    """A [source] kind = "attach" as the bcc program it names (same file, cflags, channel), for the
    compile check and the fingerprint: the program is the same, only who runs it differs."""
    from dataclasses import replace

    return replace(src, kind="bcc") if src.kind == "attach" else src


def start_fingerprint(cfg: Config) -> str:
    """The schema fingerprint `start` freezes: the demo probes', or for [source] kind = "bcc" or
    "attach" that of the payload type bcc infers from the operator's program (compiled once here:
    root and bcc), the same registry migrator.attach reports from the process's own BPF object."""
    if cfg.source.kind not in ("bcc", "attach"):
        from migrator.control import moves as ops

        return ops.default_fingerprint()
    why = ("not running as root" if os.geteuid() != 0 else
           "bcc is not importable" if importlib.util.find_spec("bcc") is None else None)
    if why:
        raise MigratorError(f"{cfg.path}: the schema fingerprint of {cfg.source.file} needs a compile, and {why} "
                            "(fix: run `migrator plan` as root on an agent host and pass its fingerprint with "
                            "`migrator start --schema-fingerprint ...`)")
    from migrator.dataplane.operator import source_fingerprint

    return source_fingerprint(_as_bcc(cfg.source))


def _print_step(res) -> None:
    for g in res.judged:
        typer.echo(f"window {g.index}: {g.verdict} ({g.rule})")
    if res.target:
        typer.echo(f"-> {res.target}")


def _move(op: str, config: Path | None, migration: int | None, reason: str, confirm_timeout: float | None,
          as_json: bool) -> None:
    from migrator.control import moves as ops
    from migrator.control.phases import DbApplier
    from migrator.store import api, database_errors

    cfg, sf = writer(config)
    with database_errors(sf), sf() as s:
        m = api.get_migration(s, migration)
        mid, planned = m.id, m.phase == "PLANNED"
        warning = ops.check_plan(m, cfg, op)  # a changed plan: refused, or a warning for rollback/abort
    if warning:
        typer.echo(f"Warning: {warning}", err=True)
    fp = start_fingerprint(cfg) if op == "advance" and planned else None  # leaving PLANNED freezes it
    with database_errors(sf):
        t = ops.manual_move(sf, mid, op, reason=reason, applier=DbApplier(confirm_timeout=confirm_timeout),
                            schema_fingerprint=fp)
    if as_json:
        emit_json(t)
    else:
        typer.echo(f"migration {mid}: {t['label']} (transition {t['id']}, {t['reason']})")


@app.command("advance")
def advance_cmd(config: Path = config_option(), migration: int = migration_option(),
                reason: str = reason_option(),
                confirm_timeout: float = confirm_timeout_option(),
                as_json: bool = json_option()) -> None:
    """Move to the next phase or canary slice (passes a manual gate; clean-window and schema guards still apply).

    Refused when canary.toml changed since `init`, as `start` is; from PLANNED it freezes the
    schema fingerprint as `start` does.

    Example: migrator advance --reason "dashboards look fine"
    """
    _move("advance", config, migration, reason, confirm_timeout, as_json)


@app.command("pause")
def pause_cmd(config: Path = config_option(), migration: int = migration_option(),
              reason: str = reason_option(),
              as_json: bool = json_option()) -> None:
    """Stop advancing (hosts keep their modes; automatic rollback stays armed).

    Refused when canary.toml changed since `init`. Windows measured while paused never count as clean.

    Example: migrator pause --reason "change freeze"
    """
    _move("pause", config, migration, reason, None, as_json)


@app.command("resume")
def resume_cmd(config: Path = config_option(), migration: int = migration_option(),
               reason: str = reason_option(),
               as_json: bool = json_option()) -> None:
    """Go back to the phase (and slice) the migration was paused in.

    Refused when canary.toml changed since `init`.

    Example: migrator resume
    """
    _move("resume", config, migration, reason, None, as_json)


@app.command("rollback")
def rollback_cmd(config: Path = config_option(), migration: int = migration_option(),
                 reason: str = reason_option(),
                 confirm_timeout: float = confirm_timeout_option(),
                 as_json: bool = json_option()) -> None:
    """Put every host back on PERF now (ROLLED_BACK, final).

    A canary.toml changed since `init` only warns: stopping is always possible.

    Example: migrator rollback --reason "p99 lag regression on mig1"
    """
    _move("rollback", config, migration, reason, confirm_timeout, as_json)


@app.command("undo")
def undo_cmd(config: Path = config_option(), migration: int = migration_option(),
             reason: str = reason_option(),
             confirm_timeout: float = confirm_timeout_option(),
             as_json: bool = json_option()) -> None:
    """Undo a COMPLETE migration: every host back on PERF (COMPLETE -> ROLLED_BACK, final).

    The only move out of COMPLETE (`rollback` refuses it and names this command). The channel
    header still writes perf after COMPLETE, so PERF is one mode switch away, made through DUAL
    on each host like any switch: no event is lost or delivered twice. Recorded as a transition
    with actor manual and your reason, as every move is. A canary.toml changed since `init` only
    warns. Refused in any other phase: use `rollback` before COMPLETE.

    Example: migrator undo --reason "ring path regressed after rollout" --confirm-timeout 10
    """
    _move("undo", config, migration, reason, confirm_timeout, as_json)


@app.command("abort")
def abort_cmd(config: Path = config_option(), migration: int = migration_option(),
              reason: str = reason_option(),
              confirm_timeout: float = confirm_timeout_option(),
              as_json: bool = json_option()) -> None:
    """Cancel the migration (ABORTED, final): every host back on PERF.

    A canary.toml changed since `init` only warns: stopping is always possible.

    Example: migrator abort --reason "wrong host list"
    """
    _move("abort", config, migration, reason, confirm_timeout, as_json)
