"""Payload layouts per (type, type_version), a backward-compatible batch decoder, a fingerprint.

Every record is migrator's header (dataplane/frames.py) and a payload whose layout the operator
registers per event type and version, as a numpy dtype, a ctypes Structure, or bcc's inferred
event type. The newest version of a type is what decoded batches carry: an older, shorter
version decodes with its missing fields set to their defaults; a (type, version) nobody
registered is counted as a parse error of that type, never raised. The migration records the
fingerprint of the registry; a change mid-migration stops it.
"""
from __future__ import annotations

import ctypes as ct
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from migrator.dataplane.frames import HDR_DTYPE, Frames
from migrator.errors import SchemaError
from migrator.vocab import MODE_NAMES


def dtype_of(layout) -> np.dtype:
    """A packed numpy dtype from a dtype, a field list, or a ctypes Structure class."""
    if isinstance(layout, type) and issubclass(layout, ct.Structure):
        return _ctypes_dtype(layout)
    return np.dtype(layout)


def _ctypes_dtype(struct: type[ct.Structure]) -> np.dtype:
    names, formats, offsets = [], [], []
    for name, ctype, *_ in struct._fields_:
        names.append(name)
        formats.append(np.dtype(ctype) if not issubclass(ctype, ct.Array) else
                       (f"S{ct.sizeof(ctype)}" if ctype._type_ is ct.c_char else
                        (np.dtype(ctype._type_), ctype._length_)))
        offsets.append(getattr(struct, name).offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ct.sizeof(struct)})


def header_name(name: str, payload: np.dtype) -> str:
    """The name a header field takes in decoded rows: its own, or hdr_<name> if the payload uses it."""
    return f"hdr_{name}" if payload.names and name in payload.names else name


@dataclass
class TypeLayouts:
    """Every registered version of one event type, and the defaults of fields older ones lack."""

    type_id: int
    name: str
    versions: dict[int, np.dtype] = field(default_factory=dict)
    defaults: dict[str, object] = field(default_factory=dict)

    @property
    def newest(self) -> int:
        """The highest registered version: the dtype every decoded batch of this type has."""
        return max(self.versions)


class Registry:
    """Payload layouts per (type, type_version) for one channel."""

    def __init__(self) -> None:
        self.types: dict[int, TypeLayouts] = {}
        self.parse_errors: dict[int, int] = {}

    def register(self, type_id: int, version: int, layout, *, name: str = "", defaults: dict | None = None) -> None:
        """Declare the payload layout of `type_id` at `version` (a dtype, field list or ctypes Structure)."""
        dt = dtype_of(layout)
        t = self.types.setdefault(type_id, TypeLayouts(type_id, name or f"type{type_id}"))
        if version in t.versions and t.versions[version] != dt:
            raise SchemaError(type_id, version, "is registered twice with different layouts",
                              "give the new layout a new type_version")
        t.versions[version] = dt
        if defaults:
            t.defaults.update(defaults)

    def fingerprint(self) -> str:
        """A stable hash of every registered layout (names, types, offsets, sizes)."""
        desc = {str(tid): {str(v): {"size": dt.itemsize,
                                    "fields": [[n, dt.fields[n][0].str, dt.fields[n][1]] for n in dt.names]}
                           for v, dt in sorted(t.versions.items())}
                for tid, t in sorted(self.types.items())}
        digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
        return f"r{len(self.types)}:{digest}"

    def decoded_dtype(self, type_id: int) -> np.dtype:
        """Header fields followed by the newest payload fields of a type; a header field whose
        name the payload also uses (say `cpu`) is called `hdr_<name>`."""
        t = self.types[type_id]
        new = t.versions[t.newest]
        return np.dtype([(header_name(n, new), HDR_DTYPE.fields[n][0]) for n in HDR_DTYPE.names]
                        + [(n, new.fields[n][0]) for n in new.names])

    def check(self, frames: Frames) -> int:
        """Count (in parse_errors, per type) the records no registered layout can read; returns how many."""
        if not len(frames):
            return 0
        hdr = frames.hdr
        keys = hdr["type"].astype(np.int64) << 16 | hdr["type_version"]
        bad = 0
        for key in np.unique(keys):
            tid, ver = int(key) >> 16, int(key) & 0xFFFF
            t = self.types.get(tid)
            dt = t.versions.get(ver) if t else None
            sel = keys == key
            n = int(sel.sum()) if dt is None else int((hdr["len"][sel] < dt.itemsize).sum())
            if n:
                self.parse_errors[tid] = self.parse_errors.get(tid, 0) + n
                bad += n
        return bad

    def decode(self, frames: Frames, count_errors: bool = True) -> dict[int, np.ndarray]:
        """Decode a batch into one structured array per known type (header + newest payload fields).

        Records of an unknown (type, version), or whose payload is shorter than its layout, are
        counted in parse_errors under their type and left out.
        """
        out: dict[int, np.ndarray] = {}
        if not len(frames):
            return out
        hdr = frames.hdr
        keys = hdr["type"].astype(np.int64) << 16 | hdr["type_version"]
        for key in np.unique(keys):
            tid, ver = int(key) >> 16, int(key) & 0xFFFF
            sel = np.flatnonzero(keys == key)
            t = self.types.get(tid)
            dt = t.versions.get(ver) if t else None
            if dt is None:
                if count_errors:
                    self.parse_errors[tid] = self.parse_errors.get(tid, 0) + len(sel)
                continue
            short = hdr["len"][sel] < dt.itemsize
            if short.any():
                if count_errors:
                    self.parse_errors[tid] = self.parse_errors.get(tid, 0) + int(short.sum())
                sel = sel[~short]
            rows = np.zeros(len(sel), dtype=self.decoded_dtype(tid))
            newest = t.versions[t.newest]
            for name in HDR_DTYPE.names:
                rows[header_name(name, newest)] = hdr[name][sel]
            raw = frames.buf[frames.off[sel][:, None] + np.arange(dt.itemsize)] if len(sel) else \
                np.empty((0, dt.itemsize), np.uint8)
            payload = raw.view(dt).reshape(len(sel))
            for name in newest.names:
                if name in dt.names:
                    rows[name] = payload[name]
                elif name in t.defaults:
                    rows[name] = t.defaults[name]
            out[tid] = rows if tid not in out else np.concatenate([out[tid], rows])
        return out

    def take_parse_errors(self) -> int:
        """Parse errors counted since the last call, all types together (for a window's books)."""
        n = sum(self.parse_errors.values())
        self.parse_errors = {}
        return n


# -- the demo probes' event (bpf/demo.h) ----------------------------------------------------------
DEMO_TYPE = 1
KINDS = {1: "synthetic", 2: "fork", 3: "exec", 4: "exit", 5: "packet"}
_DEMO_V1 = [("kind", "<u4"), ("pid", "<u4"), ("aux", "<u4"), ("len", "<u4"), ("comm", "S16")]
DEMO_LAYOUTS = {1: np.dtype(_DEMO_V1), 2: np.dtype(_DEMO_V1 + [("value", "<u8")])}
DEMO_VERSION = 2


def demo_registry() -> Registry:
    """The registry of migrator's own demo probes (one type, two versions shipped)."""
    reg = Registry()
    for version, dt in DEMO_LAYOUTS.items():
        reg.register(DEMO_TYPE, version, dt, name="demo", defaults={"value": 0})
    return reg


def fingerprint() -> str:
    """The fingerprint of the demo probes' registry (what `migrator start` freezes by default)."""
    return demo_registry().fingerprint()


def render(rec: np.void) -> dict:
    """One decoded demo record as a plain dict (for --json and tests)."""
    d = {name: rec[name].item() for name in rec.dtype.names}
    if isinstance(d.get("comm"), bytes):
        d["comm"] = d["comm"].decode(errors="replace")
    d["mode"] = MODE_NAMES.get(d["flags"] & 3, "?")
    d["kind_name"] = KINDS.get(d.get("kind", 0), "?")
    return d
