"""Event schema: every layout ever shipped, a backward-compatible batch decoder, a fingerprint.

The C side is bpf/emit.h (struct event_hdr + struct event). The current version is what the
probes emit; older versions still decode (fields they lack take defaults); unknown versions are
counted as parse errors, never raised.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from migrator.vocab import MODE_NAMES

_HDR = [
    ("schema_version", "<u2"),
    ("flags", "<u2"),
    ("cpu", "<u4"),
    ("seq", "<u8"),
    ("ktime_ns", "<u8"),
]
_V1 = _HDR + [
    ("kind", "<u4"),
    ("pid", "<u4"),
    ("aux", "<u4"),
    ("len", "<u4"),
    ("comm", "S16"),
]
_V2 = _V1 + [("value", "<u8")]

# version -> packed dtype of the payload as the kernel writes it
LAYOUTS: dict[int, np.dtype] = {1: np.dtype(_V1), 2: np.dtype(_V2)}
CURRENT_VERSION = 2
EVENT_DTYPE = LAYOUTS[CURRENT_VERSION]  # every decoded batch has this dtype
RECORD_SIZE = EVENT_DTYPE.itemsize  # 64; emit.h asserts the same size

KINDS = {1: "synthetic", 2: "fork", 3: "exec", 4: "exit", 5: "packet"}
assert RECORD_SIZE == 64 and LAYOUTS[1].itemsize == 56


def fingerprint(version: int = CURRENT_VERSION) -> str:
    """A stable hash of a layout (names, types, offsets, size): a change mid-migration stops it."""
    dt = LAYOUTS[version]
    desc = {
        "version": version,
        "size": dt.itemsize,
        "fields": [[n, dt.fields[n][0].str, dt.fields[n][1]] for n in dt.names],
    }
    digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    return f"v{version}:{digest}"


def empty_batch() -> np.ndarray:
    """A batch with no records, in the current event dtype (what a consumer returns when nothing waits)."""
    return np.empty(0, dtype=EVENT_DTYPE)


def upgrade(records: np.ndarray, version: int) -> np.ndarray:
    """Convert decoded records of an older layout to the current dtype, defaults for new fields."""
    if version == CURRENT_VERSION:
        return records
    out = np.zeros(len(records), dtype=EVENT_DTYPE)
    for name in LAYOUTS[version].names:
        out[name] = records[name]
    return out


def decode_one(buf: bytes | memoryview) -> np.ndarray | None:
    """Decode a single record of any known version; None if its version or size is unknown."""
    if len(buf) < 2:
        return None
    version = int.from_bytes(bytes(buf[:2]), "little")
    dt = LAYOUTS.get(version)
    if dt is None or len(buf) < dt.itemsize:
        return None
    rec = np.frombuffer(bytes(buf[: dt.itemsize]), dtype=dt, count=1)
    return upgrade(rec, version)


def split_versions(records: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep records (already viewed as the current dtype) whose version is current.

    Fast path for channels whose records are all the same size: returns the kept records and the
    number rejected. Callers decode other sizes with decode_one().
    """
    ok = records["schema_version"] == CURRENT_VERSION
    if ok.all():
        return records, 0
    return records[ok], int((~ok).sum())


def render(rec: np.void | np.ndarray) -> dict:
    """One record as a plain dict (for --json and tests)."""
    d = {name: rec[name].item() for name in EVENT_DTYPE.names}
    d["comm"] = d["comm"].decode(errors="replace")
    d["mode"] = MODE_NAMES.get(d["flags"] & 3, "?")
    d["kind_name"] = KINDS.get(d["kind"], "?")
    return d
