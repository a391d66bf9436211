"""What an agent attached to the kernel, written down where the next agent of its host can read it.

Every tc filter an agent attaches has an explicit priority and handle (tc.attach_tc); every XDP
program an explicit device and mode. Each attachment is written, before the attach call
returns to its caller, to a small JSON file per process:

    $MIGRATOR_RUN_DIR/attach/<host>.<pid>.json      (default /run/migrator/attach/)
    {"host": "mig1", "pid": 4242, "start_ticks": 123456, "attached": [
        {"type": "tc", "device": "mig1-n", "netns": "mig1", "direction": "ingress",
         "prio": 49152, "handle": 1, "name": "tc_packet"}, ...]}

and removed from it when detached; the file goes when its last entry does. Every exit path of
the agent detaches (normal end, exception, SIGTERM/SIGINT through the same `finally`); a SIGKILL
leaves the file behind, and the next agent of that host first calls `reap(host)`: for each file
whose process is dead (its pid gone, or reused by another process: the start time in
/proc/<pid>/stat differs), it removes exactly the filters the file names (device, namespace,
hook, priority, handle, and the program name checked too), never a filter found by name alone,
then deletes the file. A live process's file is never touched. No database schema is involved.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("migrator.agent")


def run_dir() -> Path:
    """Where the records live: $MIGRATOR_RUN_DIR/attach, default /run/migrator/attach."""
    return Path(os.environ.get("MIGRATOR_RUN_DIR") or "/run/migrator") / "attach"


def _safe(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, ticks: int | None) -> bool:
    """True if `pid` is the same process that wrote a record (pid alive, same start time)."""
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


@dataclass
class AttachRecord:
    """This process's record of what it attached for `host`."""

    host: str
    directory: Path = field(default_factory=run_dir)
    attached: list[dict] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.directory / f"{_safe(self.host)}.{os.getpid()}.json"

    def add(self, entry: dict) -> None:
        """Note one attachment (the same entry twice, e.g. an atomic replace on reload, is kept once)."""
        if entry not in self.attached:
            self.attached.append(dict(entry))
        self._write()

    def remove(self, entry: dict) -> None:
        """Forget one attachment (after it was detached); the file goes with the last one."""
        self.attached = [e for e in self.attached if e != entry]
        self._write()

    def _write(self) -> None:
        path = self.path
        if not self.attached:
            path.unlink(missing_ok=True)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": self.host, "pid": os.getpid(), "start_ticks": start_ticks(os.getpid()),
                                   "attached": self.attached}))
        os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one


def detach_entry(entry: dict) -> bool:
    """Remove one recorded attachment from the kernel; False when it was already gone."""
    if entry.get("type") == "tc":
        from migrator.dataplane.tc import TcFilter, detach_filter

        return detach_filter(TcFilter.from_dict(entry))
    if entry.get("type") == "xdp":
        from bcc import BPF

        from migrator.dataplane.netns import entered

        with entered(entry.get("netns") or None):
            BPF.remove_xdp(entry["device"], entry.get("flags", 0))
        return True
    log.warning("attachment record entry of unknown type left alone: %s", entry)
    return False


def reap(host: str, directory: Path | None = None) -> list[dict]:
    """Remove what dead predecessors of `host` left attached, found by their records; returns the
    entries removed from the kernel. Records of live processes are left alone."""
    directory = directory or run_dir()
    removed: list[dict] = []
    for path in sorted(directory.glob(f"{_safe(host)}.*.json")):
        try:
            rec = json.loads(path.read_text())
            pid = int(rec["pid"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable attachment record %s left alone: %s", host, path, exc)
            continue
        if pid == os.getpid() or alive(pid, rec.get("start_ticks")):
            continue
        count = len(removed)
        for entry in rec.get("attached", []):
            try:
                if detach_entry(entry):
                    removed.append(entry)
            except Exception as exc:  # noqa: BLE001 - the device or namespace may be gone with it
                log.warning("%s: removing %s left by dead pid %d: %s", host, entry, pid, exc)
        log.warning("%s: removed %d attachment(s) left by dead agent pid %d (record %s)", host,
                    len(removed) - count, pid, path, extra={"host": host})
        path.unlink(missing_ok=True)
    return removed


__all__ = ["AttachRecord", "reap", "detach_entry", "run_dir", "alive", "start_ticks"]
