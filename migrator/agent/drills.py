"""Drills: faults an operator (or the lab) asks a running agent to act out, to rehearse rollback.

They exist only in an agent started with `--drills`. A drill is a small JSON file in a root-only
directory (0700), named after the host and naming it inside; the agent that serves that host
takes it, checks its shape, acts and deletes it. Anything else is refused with a log line.

Every drill carries a deadline (`expires_at`, unix seconds; DRILL_TTL after it was queued unless
asked otherwise). A drill nobody took by then lapses: the next agent of that host removes it with
a log line and never acts it out, so a drill queued while no agent ran cannot fire in a later,
unrelated run. A file without a deadline (an older migrator's) is refused the same way.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import DrillError
from migrator.shared.vocab import HOST_NAME_RE, HOST_NAME_RULE, RING_BYTES_RULE, is_host_name, is_ring_bytes

log = logging.getLogger("migrator.agent")
DRILL_DIR = Path(os.environ.get("MIGRATOR_DRILL_DIR", "/run/migrator/drills"))
# Agent-side drills (the lab adds traffic bursts and CPU load from outside the agent).
DRILL_KINDS = ("stall-ring", "shrink-ring")
MAX_SECONDS = 24 * 3600.0
DRILL_TTL = 30.0  # a queued drill lapses this long after `migrator fault` unless --expires-in says otherwise
MAX_TTL = 3600.0


@dataclass(frozen=True)
class Drill:
    """One requested fault: what, on which host, for how long."""

    host: str
    kind: str
    seconds: float
    ring_bytes: int | None = None


def _host_ok(host: object) -> bool:
    # fullmatch: HOST_NAME_RE ends in `$`, which also matches before a trailing newline.
    return is_host_name(host) and HOST_NAME_RE.fullmatch(host) is not None


def validate(host: object, kind: object, seconds: object) -> Drill:
    """A Drill from untrusted values, or DrillError naming the field and the fix."""
    if not _host_ok(host):
        raise DrillError("host", host, f"a host name is {HOST_NAME_RULE}")
    if kind not in DRILL_KINDS:
        raise DrillError("kind", kind, f"choose one of {', '.join(DRILL_KINDS)}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not 0 < seconds <= MAX_SECONDS:
        raise DrillError("seconds", seconds, f"give a number of seconds in (0, {MAX_SECONDS:g}]")
    return Drill(host, kind, float(seconds))


def drill_path(host: str, drill_dir: Path = DRILL_DIR) -> Path:
    """Where the drill for `host` is dropped; DrillError for anything but a host name (no path tricks)."""
    if not _host_ok(host):
        raise DrillError("host", host, f"a host name is {HOST_NAME_RULE}")
    return drill_dir / f"{host}.json"


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_ttl(expires_in: object) -> float:
    """A drill's time to live in seconds, or DrillError naming the fix."""
    if not _number(expires_in) or not 0 < expires_in <= MAX_TTL:
        raise DrillError("expires_in", expires_in, f"give a number of seconds in (0, {MAX_TTL:g}]")
    return float(expires_in)


def inject(host: str, kind: str, seconds: float, drill_dir: Path = DRILL_DIR, *, expires_in: float = DRILL_TTL,
           now: float | None = None) -> Path:
    """Queue a drill for `host`'s agent (started with --drills); it is taken within a poll, or lapses
    `expires_in` seconds from now (its deadline is written in the file)."""
    d = validate(host, kind, seconds)
    ttl = check_ttl(expires_in)
    drill_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(drill_dir, 0o700)  # mkdir's mode is masked, and an old directory may be wider
    path = drill_path(d.host, drill_dir)
    tmp = path.with_suffix(".tmp")
    at = time.time() if now is None else now
    tmp.write_text(json.dumps({"host": d.host, "kind": d.kind, "seconds": d.seconds, "at": at,
                               "expires_at": at + ttl}))
    tmp.replace(path)  # atomic: the agent never reads half a file
    return path


class DrillBox:
    """The agent's side: takes the drill file of its own host, if any, at most once per poll."""

    def __init__(self, host: str, drill_dir: Path = DRILL_DIR) -> None:
        self.host, self.path = host, drill_path(host, drill_dir)

    def take(self, now: float | None = None) -> Drill | None:
        """The pending drill for this host, or None; a malformed or lapsed file is removed and logged once."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s: drill file %s unreadable (%s): ignored", self.host, self.path, exc)
            return None
        try:
            self.path.unlink()
        except FileNotFoundError:
            return None  # taken by another reader in between
        try:
            spec = json.loads(raw.decode("utf-8"))
            if not isinstance(spec, dict):
                raise DrillError("<file>", spec, 'write a JSON object {"host": ..., "kind": ..., "seconds": ...}')
            d = validate(spec.get("host"), spec.get("kind"), spec.get("seconds"))
            if d.host != self.host:
                raise DrillError("host", d.host, f"this agent serves {self.host}")
            ring = spec.get("ring_bytes")
            if ring is not None and not is_ring_bytes(ring):
                raise DrillError("ring_bytes", ring, f"give {RING_BYTES_RULE}")
            expires_at = spec.get("expires_at")
            if not _number(expires_at):
                raise DrillError("expires_at", expires_at, "queue it again with `migrator fault` (every drill has a deadline)")
            ts = time.time() if now is None else now
            if ts > expires_at:
                log.warning("%s: drill file %s lapsed: %s for %g s, deadline %s (%.1f s ago); removed, not acted out",
                            self.host, self.path, d.kind, d.seconds, _when(expires_at), ts - expires_at)
                return None
            return Drill(d.host, d.kind, d.seconds, ring)
        except (ValueError, RecursionError, DrillError) as exc:  # ValueError covers bad UTF-8 and bad JSON
            log.warning("%s: drill file %s refused: %s", self.host, self.path, exc)
            return None


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
