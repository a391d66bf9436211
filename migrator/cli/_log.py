"""The one logging setup of the long-running commands: --log-format text|json and --log-level.

JSON lines carry ts (UTC, ISO 8601), level, logger, msg and every extra field the call passed
(`log.warning("...", extra={"host": h})`), so a log shipper indexes them without parsing text.
The choice is exported to the environment, so processes a command starts (the lab's agents) log
the same way.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from enum import Enum

import typer

FORMAT_ENV, LEVEL_ENV = "MIGRATOR_LOG_FORMAT", "MIGRATOR_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogFormat(str, Enum):
    """How log records are written to stderr."""

    text = "text"
    json = "json"


# Attributes every LogRecord has: anything else on a record came from `extra=` and is emitted.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the extra fields, and exc on exceptions."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (keys in a stable order: ts, level, logger, msg, then sorted extras)."""
        doc = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
               .replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for key in sorted(set(vars(record)) - _STANDARD):
            if key not in doc:
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(fmt: str = "text", level: str = "INFO", stream=None) -> logging.Handler:
    """Route the root logger to stderr (or `stream`) as text or JSON lines at `level`; returns the handler.

    Replaces handlers an earlier call installed, keeps alembic's INFO chatter out, and exports
    the choice to MIGRATOR_LOG_FORMAT / MIGRATOR_LOG_LEVEL for child processes."""
    fmt, level = LogFormat(fmt).value, level.upper()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._migrator = True  # type: ignore[attr-defined]  # ours: the next setup replaces it
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_migrator", False)]:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    os.environ[FORMAT_ENV], os.environ[LEVEL_ENV] = fmt, level
    return handler


def _level(value: str) -> str:
    if value.upper() not in LEVELS:
        raise typer.BadParameter(f"must be one of {', '.join(LEVELS)} (any case), got {value!r}")
    return value.upper()


def log_format_option():
    """--log-format text|json (default $MIGRATOR_LOG_FORMAT, else text)."""
    return typer.Option(LogFormat.text, "--log-format", envvar=FORMAT_ENV, case_sensitive=False,
                        help="Log lines on stderr as text or JSON (ts, level, logger, msg and extra fields).")


def log_level_option():
    """--log-level LEVEL (default $MIGRATOR_LOG_LEVEL, else INFO)."""
    return typer.Option("INFO", "--log-level", envvar=LEVEL_ENV, callback=_level, metavar="LEVEL",
                        help=f"Least severe level logged: {', '.join(LEVELS)}.")
