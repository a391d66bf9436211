"""`migrator report`: one self-contained HTML file for one migration, charts as inline SVG.

What it shows: the phase timeline with every transition (actor, reason, the windows that decided
it, the rollback highlighted), a lane per host with the modes it ran (PERF, DUAL, RING) over the
migration, the breach streak against N, and per host and window the loss and lag p99 of ring and
perf, consumer CPU per event (idle windows left out, towering points clipped: lanes.py), parse
errors and payload mismatches, with a note wherever a panel is empty or a line stops.

The file needs no network to open: CSS is inline, charts are matplotlib SVG (text drawn as
paths, so no font is fetched) pasted into the page, no script at all. matplotlib is imported
inside the chart functions only: every other command starts without paying for it.
Everything read from the database goes into the page through html.escape.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from migrator.errors import MigratorError
from migrator.tools.report.charts import BREACH, DUAL, MAX_HOST_CHARTS, PERF, RING, _chart_end
from migrator.tools.report.data import ReportData, collect
from migrator.tools.report.lanes import host_notes, lanes
from migrator.tools.report.page import esc, render_html


def summary(data: ReportData, path: str | None = None, size: int | None = None) -> dict:
    """What `migrator report --json` prints: where the file went and what it covers."""
    rb = data.rollback
    return {"path": path, "bytes": size, "migration_id": data.migration["id"], "phase": data.migration["phase"],
            "label": data.migration["label"], "hosts": [h["name"] for h in data.hosts],
            "transitions": len(data.transitions), "windows": len(data.windows),
            "charts": 3 + min(MAX_HOST_CHARTS, len({w["host"] for w in data.windows})),
            "rollback_after": data.migration["rollback_after"],
            "max_streak": max([v["streak"] for v in data.streak] + [(data.story or {}).get("streak", 0)]),
            "streak": data.story,  # the streak every view shows (control/story.py)
            "rollback": ({"transition_id": rb["id"], "actor": rb["actor"], "reason": rb["reason"],
                          "window_ids": rb["window_ids"]} if rb else None),
            "deciding": {str(t["id"]): t["window_ids"] for t in data.transitions if t["window_ids"]},
            # each host's modes over the migration (segments of windows #a..#b, then what it applied)
            "lanes": lanes(data, _chart_end(data)),
            # per host: events the consumer acted on, by channel, and the kernel-counted drops (control/story.py)
            "consumer": data.consumer,
            # why a host's panel is empty or a line stops, CPU points left out or clipped
            "notes": {h: host_notes(data, h, ws, _chart_end(data)) for h, ws in _by_host(data).items()}}


def _by_host(data: ReportData) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {h["name"]: [] for h in data.hosts}
    for w in data.windows:
        out.setdefault(w["host"], []).append(w)
    return {h: ws for h, ws in out.items() if ws}


def build_report(session: Session, migration_id: int | None = None) -> str:
    """The report of one migration (default: the newest) as one self-contained HTML page."""
    return render_html(collect(session, migration_id))


def write_report(text: str, path: Path) -> int:
    """Write the page atomically (temp file in the same directory, then rename); returns its size in bytes.

    Raises MigratorError naming the path and the fix; nothing is left half-written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fix = "pass -o with a file in a directory that exists and is writable"
    if path.is_dir():
        raise MigratorError(f"cannot write the report to {path}: it is a directory (fix: {fix}, e.g. -o {path / 'report.html'})")
    if parent.exists() and not parent.is_dir():
        raise MigratorError(f"cannot write the report to {path}: {parent} is not a directory (fix: {fix})")
    if not parent.is_dir():
        raise MigratorError(f"cannot write the report to {path}: directory {parent} does not exist "
                            f"(fix: create it with `mkdir -p {parent}` or {fix})")
    data = text.encode("utf-8")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise MigratorError(f"cannot write the report to {path}: {exc.strerror or exc} (fix: {fix})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return len(data)


__all__ = ["ReportData", "collect", "render_html", "build_report", "write_report", "summary", "esc", "RING", "PERF", "DUAL", "BREACH"]
