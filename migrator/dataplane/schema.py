"""Payload layouts per (type, type_version), a backward-compatible batch decoder, a fingerprint.

Every record is migrator's header (dataplane/frames.py) and a payload whose layout the operator
registers per event type and version, as a numpy dtype, a ctypes Structure, or bcc's inferred
event type. The newest version of a type is what decoded batches carry: an older, shorter
version decodes with its missing fields set to their defaults; a (type, version) nobody
registered is counted as a parse error of that type, never raised. The migration records the
fingerprint of the registry; a change mid-migration stops it.

Variable-size records: a layout registered with `min_size` (bcc's inferred type gets the offset
of its trailing array, see tail_offset) accepts payloads from min_size bytes up to its full
size; the bytes a record does not carry decode as zeros. The usual bcc pattern
`struct e { ...; u8 data[MAX]; }` submitted with `sizeof(e) - MAX + n` bytes reads this way.
"""
from __future__ import annotations

import ctypes as ct
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from migrator.dataplane.frames import HDR_DTYPE, HDR_SIZE, Frames
from migrator.errors import SchemaError
from migrator.shared.vocab import MODE_NAMES


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


def tail_offset(layout) -> int | None:
    """The offset of a layout's trailing array field (a variable-size tail), or None.

    `struct e { u32 a; u16 n; u8 data[64]; }` gives 8: records of 8 to 72 payload bytes are valid.
    """
    dt = dtype_of(layout)
    if not dt.names:
        return None
    last = max(dt.names, key=lambda n: dt.fields[n][1])
    sub, off = dt.fields[last][0], dt.fields[last][1]
    is_array = sub.subdtype is not None or sub.kind in "SV"
    return off if is_array and off + sub.itemsize == dt.itemsize and off > 0 else None


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
    min_sizes: dict[int, int] = field(default_factory=dict)  # versions whose records may be shorter

    def min_size(self, version: int) -> int:
        """The fewest payload bytes a record of `version` may carry."""
        return self.min_sizes.get(version, self.versions[version].itemsize)

    @property
    def newest(self) -> int:
        """The highest registered version: the dtype every decoded batch of this type has."""
        return max(self.versions)


class Registry:
    """Payload layouts per (type, type_version) for one channel."""

    def __init__(self) -> None:
        self.types: dict[int, TypeLayouts] = {}
        self.parse_errors: dict[int, int] = {}
        self._decoded: dict[int, np.dtype] = {}  # decoded_dtype() per type, until a register()
        self._whole: dict[tuple[int, int], bool] = {}
        self._last_groups: tuple[np.ndarray, list] | None = None  # see _groups(keep=True)

    def register(self, type_id: int, version: int, layout, *, name: str = "", defaults: dict | None = None,
                 min_size: int | None = None) -> None:
        """Declare the payload layout of `type_id` at `version` (a dtype, field list or ctypes Structure).

        min_size: records may carry fewer bytes than the layout, down to min_size (a variable tail);
        the rest decodes as zeros. None: every record carries the whole layout.
        """
        dt = dtype_of(layout)
        if min_size is not None and not 0 <= min_size <= dt.itemsize:
            raise SchemaError(type_id, version, f"has min_size {min_size} outside 0..{dt.itemsize}",
                              "give the offset of the variable tail (see tail_offset)")
        t = self.types.setdefault(type_id, TypeLayouts(type_id, name or f"type{type_id}"))
        if version in t.versions and (t.versions[version] != dt or t.min_sizes.get(version) != min_size):
            raise SchemaError(type_id, version, "is registered twice with different layouts",
                              "give the new layout a new type_version")
        t.versions[version] = dt
        if min_size is not None and min_size < dt.itemsize:
            t.min_sizes[version] = min_size
        if defaults:
            t.defaults.update(defaults)

    def fingerprint(self) -> str:
        """A stable hash of every registered layout (names, types, offsets, sizes)."""
        desc = {str(tid): {str(v): {"size": dt.itemsize,
                                    "fields": [[n, dt.fields[n][0].str, dt.fields[n][1]] for n in dt.names],
                                    **({"min_size": t.min_sizes[v]} if v in t.min_sizes else {})}
                           for v, dt in sorted(t.versions.items())}
                for tid, t in sorted(self.types.items())}
        digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
        return f"r{len(self.types)}:{digest}"

    def decoded_dtype(self, type_id: int) -> np.dtype:
        """Header fields followed by the newest payload fields of a type; a header field whose
        name the payload also uses (say `cpu`) is called `hdr_<name>`."""
        dt = self._decoded.get(type_id)
        if dt is None:
            t = self.types[type_id]
            new = t.versions[t.newest]
            dt = np.dtype([(header_name(n, new), HDR_DTYPE.fields[n][0]) for n in HDR_DTYPE.names]
                          + [(n, new.fields[n][0]) for n in new.names])
            self._decoded[type_id] = dt
        return dt

    def _copies_whole(self, type_id: int, version: int) -> bool:
        """True when a payload of this version lands in decoded rows byte for byte: it is the
        newest version and its fields sit packed, in order, as decoded_dtype() puts them."""
        key = (type_id, version)
        ok = self._whole.get(key)
        if ok is None:
            t = self.types[type_id]
            dt, out = t.versions[version], self.decoded_dtype(type_id)
            ok = (version == t.newest and out.itemsize == HDR_SIZE + dt.itemsize
                  and all(out.fields[n][1] == HDR_SIZE + dt.fields[n][1] for n in dt.names))
            self._whole[key] = ok
        return ok

    def _groups(self, hdr: np.ndarray, keep: bool = False) -> list[tuple[int, int, np.ndarray | None]]:
        """(type, version, record indexes) per (type, version) in the batch, in (type, version)
        order; indexes None means every record (a batch of one kind: no sort, no index).

        keep: remember the answer for the next call on this very array (check() then decode()
        of one batch, as the Feed does); any other call forgets it.
        """
        last, self._last_groups = self._last_groups, None
        if last is not None and last[0] is hdr:
            return last[1]
        keys = hdr.view(_KIND_VIEW)["kind"]  # type | type_version << 16, one strided read
        k0 = keys[0]
        if (keys == k0).all():
            groups = [(int(k0) & 0xFFFF, int(k0) >> 16, None)]
        else:
            groups = sorted(((int(k) & 0xFFFF, int(k) >> 16, np.flatnonzero(keys == k)) for k in np.unique(keys)),
                            key=lambda g: (g[0], g[1]))
        if keep:
            self._last_groups = (hdr, groups)
        return groups

    def check(self, frames: Frames) -> int:
        """Count (in parse_errors, per type) the records no registered layout can read; returns how many."""
        if not len(frames):
            return 0
        hdr = frames.hdr
        bad = 0
        for tid, ver, sel in self._groups(hdr, keep=True):
            t = self.types.get(tid)
            dt = t.versions.get(ver) if t else None
            if dt is None:
                n = len(hdr) if sel is None else len(sel)
            else:
                lens = hdr["len"] if sel is None else hdr["len"][sel]
                n = int((lens < t.min_size(ver)).sum())
            if n:
                self.parse_errors[tid] = self.parse_errors.get(tid, 0) + n
                bad += n
        return bad

    def decode(self, frames: Frames, count_errors: bool = True) -> dict[int, np.ndarray]:
        """Decode a batch into one structured array per known type (header + newest payload fields).

        Records of an unknown (type, version), or whose payload is shorter than its layout (its
        min_size), are counted in parse_errors under their type and left out.

        Cost: per (type, version) one copy of the headers and one gather of the payloads, both in
        C: a strided view when the payloads are equally spaced (fixed-size records), else one
        fancy index on a byte-stride view of the buffer (element i starts at byte i), so no
        (records x payload bytes) index matrix is ever built.
        """
        out: dict[int, np.ndarray] = {}
        if not len(frames):
            return out
        hdr = frames.hdr
        for tid, ver, sel in self._groups(hdr):
            t = self.types.get(tid)
            dt = t.versions.get(ver) if t else None
            if dt is None:
                if count_errors:
                    self.parse_errors[tid] = self.parse_errors.get(tid, 0) + (len(hdr) if sel is None else len(sel))
                continue
            lens = hdr["len"] if sel is None else hdr["len"][sel]
            short = lens < t.min_size(ver)
            if short.any():
                if count_errors:
                    self.parse_errors[tid] = self.parse_errors.get(tid, 0) + int(short.sum())
                sel = np.flatnonzero(~short) if sel is None else sel[~short]
                lens = lens[~short]
            rows = self._rows(tid, ver, dt, hdr if sel is None else hdr[sel],
                              frames.buf, frames.off if sel is None else frames.off[sel], lens)
            out[tid] = rows if tid not in out else np.concatenate([out[tid], rows])
        return out

    def _rows(self, tid: int, ver: int, dt: np.dtype, hdr: np.ndarray, buf: np.ndarray,
              off: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Decoded rows of records of one (type, version), every payload at least its min_size."""
        t = self.types[tid]
        out_dt = self.decoded_dtype(tid)
        n, size = len(off), dt.itemsize
        whole = self._copies_whole(tid, ver)
        rows = np.empty(n, out_dt) if whole else np.zeros(n, out_dt)
        if not n:
            return rows
        if whole and size and (lens >= size).all():  # a short record's missing bytes must read as zeros
            at = _record_run(hdr, buf, off)
            if at is not None:
                # Header and payload sit together in buf, equally spaced: one copy of both.
                _columns(rows, 0, HDR_SIZE + size)[...] = np.ndarray(
                    (n,), dtype=f"V{HDR_SIZE + size}", buffer=buf, offset=at, strides=(hdr.strides[0],))
                return rows
        # The header: every decoded dtype starts with the 32 header bytes, in header order.
        _columns(rows, 0, HDR_SIZE)[...] = hdr.view(f"V{HDR_SIZE}")
        if not size:
            return rows
        if ver in t.min_sizes and (lens < size).any():
            payload = _gather_short(buf, off, size, lens)  # the bytes a record lacks read as zeros
        else:
            payload = _gather(buf, off, size)  # V<size>, one per record
        if whole:
            _columns(rows, HDR_SIZE, size)[...] = payload
            return rows
        payload = payload.view(dt)
        newest = t.versions[t.newest]
        for name in newest.names:
            if name in dt.names:
                rows[name] = payload[name]
            elif name in t.defaults:
                rows[name] = t.defaults[name]
        return rows

    def take_parse_errors(self) -> int:
        """Parse errors counted since the last call, all types together (for a window's books)."""
        n = sum(self.parse_errors.values())
        self.parse_errors = {}
        return n


def bcc_registry(bpf, name: str) -> Registry:
    """A registry holding the payload type bcc inferred for channel `name` (type 0, version 0), if any.

    bcc records the struct the program hands to `name.perf_submit`; migrator.h keeps that call
    (never executed) next to every MIGRATOR_OUTPUT so the operator's struct is known here. A
    trailing array is a variable-size tail (bcc's `sizeof(e) - MAX + n` pattern, see tail_offset).
    """
    import ctypes as _ct

    reg = Registry()
    try:
        from bcc.table import _get_event_class

        cls = _get_event_class(bpf[name])
        if _ct.sizeof(cls):
            reg.register(0, 0, cls, name=name, min_size=tail_offset(cls))
    except (Exception, SystemExit):  # bcc prints and exits on types it cannot map
        pass
    return reg


# The header's type and type_version read together as one u32: type | type_version << 16.
_KIND_VIEW = np.dtype({"names": ["kind"], "formats": ["<u4"], "offsets": [HDR_DTYPE.fields["type"][1]],
                       "itemsize": HDR_SIZE})
assert HDR_DTYPE.fields["type_version"][1] == HDR_DTYPE.fields["type"][1] + 2


def _record_run(hdr: np.ndarray, buf: np.ndarray, off: np.ndarray) -> int | None:
    """Where in buf the first record's header starts, when the headers are a strided view of
    buf lying right before their payloads (a ring's run of one size); None otherwise."""
    if len(hdr) < 2 or not hdr.strides[0] or int(off[0]) < HDR_SIZE:
        return None
    at = int(off[0]) - HDR_SIZE
    # Addresses through a plain field view: a structured array's own interface builds its descr.
    if hdr["hdr_version"].__array_interface__["data"][0] != buf.__array_interface__["data"][0] + at:
        return None
    step = hdr.strides[0]
    if int(off[-1]) - int(off[0]) != step * (len(off) - 1) or not (np.diff(off) == step).all():
        return None
    return at


def _columns(rows: np.ndarray, start: int, size: int) -> np.ndarray:
    """Bytes [start, start + size) of every row of a contiguous structured array, as one opaque
    (void) value per row: a writable strided view."""
    return np.ndarray((len(rows),), dtype=f"V{size}", buffer=rows, offset=start, strides=(rows.itemsize,))


def _gather(buf: np.ndarray, off: np.ndarray, size: int) -> np.ndarray:
    """The `size` bytes at each offset of buf, as one V<size> value per offset (a copy or a view)."""
    n = len(off)
    first = int(off[0])
    if n > 1:
        step = int(off[1]) - first
        if step >= size and int(off[-1]) - first == step * (n - 1) and (np.diff(off) == step).all():
            # Equally spaced (fixed-size records): a strided view, no index at all.
            return np.ndarray((n,), dtype=f"V{size}", buffer=buf, offset=first, strides=(step,))
    elif n == 1:
        return np.ndarray((1,), dtype=f"V{size}", buffer=buf, offset=first)
    # Element i of this view starts at byte i of buf: one fancy index copies each payload whole.
    at_byte = np.ndarray((len(buf) - size + 1,), dtype=f"V{size}", buffer=buf, offset=0, strides=(1,))
    return at_byte[off]


def _gather_short(buf: np.ndarray, off: np.ndarray, size: int, lens: np.ndarray) -> np.ndarray:
    """Like _gather, for records that may carry fewer than `size` bytes: the rest are zeros."""
    padded = np.concatenate([buf, np.zeros(size, np.uint8)])  # a short last record reads past buf
    out = np.array(_gather(padded, off, size))  # a copy: its tails are zeroed below
    raw = out.view(np.uint8).reshape(len(off), size)
    raw[np.arange(size) >= lens.astype(np.int64)[:, None]] = 0
    return out


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
