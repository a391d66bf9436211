"""The options several commands share, each defined once, and the checks behind them.

Every command that takes one of these takes it from here, so its spelling, short form and help
are the same everywhere. The short forms each mean one thing in every command: -c --config,
-m --migration, -w --watch, -t --timeout, -o --output, -s --seconds, -n --hosts and -p --prefix
(lab), -h --help.

A check raises OptionError (exit 2, naming the option); `usage` turns it into typer's usage error.
Nothing here imports the data plane or the store: `migrator --help` loads this module.
"""
from __future__ import annotations

from pathlib import Path

import typer

from migrator.config import Config, load_config
from migrator.errors import MigratorError, OptionError
from migrator.shared.vocab import (CONFIG_ENV, DEFAULT_CONFIG, DURATION_UNITS, PERF_PAGES_RULE, RING_BYTES_RULE, config_path,
                                   is_perf_pages, is_ring_bytes, parse_duration)

# Which canary.toml a command reads without --config (migrator.config.config_path), for help texts.
CONFIG_DEFAULT = f"default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG}"
CONFIG_HELP = f"canary.toml to use ({CONFIG_DEFAULT})."


def usage(check):
    """A typer callback/parser running `check` on the value (None passes through) and turning its
    OptionError into a usage error (exit 2), which names the option itself."""
    def callback(value):
        if value is None:
            return None
        try:
            return check(value)
        except OptionError as exc:
            raise typer.BadParameter(exc.detail) from None
    return callback


# ---- canary.toml ---------------------------------------------------------------------------------

def config_option(help: str = CONFIG_HELP) -> Path:
    """--config/-c, the canary.toml of every command that reads one (default: $MIGRATOR_CONFIG or ./canary.toml)."""
    return typer.Option(None, "--config", "-c", help=help, show_default=False)


def resolve_config(path: Path | None) -> Config:
    """Load the canary.toml a command should use: --config, else $MIGRATOR_CONFIG, else ./canary.toml."""
    p, origin = config_path(path)
    return load_config(p, origin=origin)


# ---- the options of many commands ----------------------------------------------------------------

def migration_option(default: str = "the newest", what: str = "Migration id") -> int:
    """--migration/-m ID; `default` says which migration a command takes without it."""
    return typer.Option(None, "--migration", "-m", help=f"{what} (default: {default}).")


def json_option(help: str = "Print JSON.") -> bool:
    """--json: print JSON instead of text (migrator.cli._out.emit_json)."""
    return typer.Option(False, "--json", help=help)


def reason_option() -> str:
    """--reason TEXT of a manual move, kept in its history."""
    return typer.Option("", "--reason", help="Why (kept in history).")


def confirm_timeout_option(help: str = "Wait this long for agents to apply the new modes.") -> float:
    """--confirm-timeout SECONDS of a command that sets modes."""
    return typer.Option(None, "--confirm-timeout", min=0.0, metavar="SECONDS", help=help)


def watch_option(help: str) -> bool:
    """--watch/-w: keep refreshing (`help` says until when)."""
    return typer.Option(False, "--watch", "-w", help=help)


def metrics_addr_option() -> str:
    """--metrics-addr HOST:PORT, the Prometheus endpoint of the long-running commands."""
    return typer.Option(None, "--metrics-addr", metavar="HOST:PORT", callback=_check_metrics_addr,
                        help="Serve Prometheus metrics on HOST:PORT, path /metrics (port 0: any free port).")


def _check_metrics_addr(value: str | None) -> str | None:
    if value is None:
        return None
    from migrator.control.metrics import parse_addr

    try:
        parse_addr(value)
    except MigratorError:
        raise typer.BadParameter(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464") from None
    return value


def db_option(default, help: str) -> str:
    """--db URL|FILE of the benches: an SQLAlchemy URL or an SQLite file path (not a directory)."""
    return typer.Option(default, "--db", callback=_check_db, help=help)


def _check_db(value: str | None) -> str | None:
    # A path must name a file; a URL (postgresql+psycopg://...) is the server's.
    if value is not None and "://" not in value and Path(value).is_dir():
        raise typer.BadParameter(f"{value} is a directory; pass a file path or a database URL")
    return value


# ---- durations -----------------------------------------------------------------------------------

def check_duration(text: object, option: str, *, zero: bool = False, examples: str = "1s, 500ms or 2.5") -> float:
    """Seconds of a duration option (migrator.config.parse_duration's grammar), > 0 (>= 0 with
    `zero`), else OptionError naming the option."""
    fix = f"write e.g. {examples}; {DURATION_UNITS}"
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise OptionError(option, text, "is not a duration", fix) from None
    if seconds == 0 and not zero:
        raise OptionError(option, text, "is not a positive duration", fix)
    return seconds


def duration(option: str, *, zero: bool = False, examples: str = "1s, 500ms or 2.5", keep_text: bool = False):
    """A typer parser/callback for a duration option: its seconds (the text itself with `keep_text`,
    checked), or a usage error naming the option."""
    def check(value):
        seconds = check_duration(value, option, zero=zero, examples=examples)
        return value if keep_text else seconds
    return usage(check)


def window_option(default, help: str) -> float:
    """--window DURATION, the length of a measurement window in seconds (1s, 500ms, 2.5; > 0)."""
    return typer.Option(default, "--window", parser=duration("--window"), metavar="DURATION", help=help)


# ---- numbers of the shadow and bench runs ---------------------------------------------------------

def check_seconds(seconds: float, option: str = "--seconds") -> float:
    """A run length in seconds, refused (OptionError) unless > 0."""
    if not seconds > 0:  # also refuses NaN
        raise OptionError(option, seconds, "is not a positive number of seconds", f"give {option} a number > 0")
    return seconds


def check_rate(rate: float, option: str = "--rate") -> float:
    """An event rate, refused unless >= 0 (0: as fast as the generator goes)."""
    if not rate >= 0:
        raise OptionError(option, rate, "is not >= 0", "use 0 (as fast as possible) or a number of events per second")
    return rate


def check_ring_bytes(ring_bytes: int, option: str = "--ring-bytes") -> int:
    """A ring size the kernel accepts: a power of two of at least one page."""
    if not is_ring_bytes(ring_bytes):
        raise OptionError(option, ring_bytes, f"is not {RING_BYTES_RULE}",
                          f"use e.g. {16 << 20} (16 MiB)")
    return ring_bytes


def check_perf_pages(perf_pages: int, option: str = "--perf-pages") -> int:
    """A perf buffer size per CPU the kernel accepts: a power of two of pages."""
    if not is_perf_pages(perf_pages):
        raise OptionError(option, perf_pages, f"is not {PERF_PAGES_RULE}", "use e.g. 64 (pages per CPU)")
    return perf_pages
