"""Registry.decode's fast paths against a record-by-record reference, on batches shaped like both
consumers' (a ring's run of one size as strided views, mixed sizes as gathered headers)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from migrator.dataplane.frames import HDR_DTYPE, HDR_SIZE, Frames, headers_at, strided_headers
from migrator.dataplane.schema import Registry, header_name

LAYOUTS = [  # (type, version, layout, min_size)
    (7, 1, [("a", "<u4"), ("b", "<u4")], None),
    (7, 2, [("a", "<u4"), ("b", "<u4"), ("c", "<u8")], None),  # newest of 7; v1 decodes with c = 42
    (3, 0, [("x", "<u2"), ("len", "<u8"), ("cpu", "u1")], None),  # header names reused: hdr_len, hdr_cpu
    (5, 0, np.dtype({"names": ["p", "q"], "formats": ["<u4", "<u8"], "offsets": [0, 8], "itemsize": 16}), None),
    (6, 0, [("id", "<u8"), ("n", "<u4"), ("tail", "u1", (12,))], 12),  # a variable tail from byte 12
]
UNKNOWN = (9, 0)


def registry() -> Registry:
    reg = Registry()
    for tid, ver, layout, min_size in LAYOUTS:
        reg.register(tid, ver, layout, defaults={"c": 42} if tid == 7 else None, min_size=min_size)
    return reg


def record(seq: int, tid: int, ver: int, payload: bytes) -> bytes:
    rec = struct.pack("<HHHHIIQQ", 1, 2, tid, ver, len(payload), seq % 3, seq, 1000 + seq) + payload
    return rec + b"\0" * (-len(rec) % 8)


def reference(reg: Registry, recs: list[tuple[int, int, int, bytes]]) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Record by record: what decode must give, and the parse errors it must count."""
    rows: dict[int, list] = {}
    errors: dict[int, int] = {}
    for seq, tid, ver, payload in recs:
        t = reg.types.get(tid)
        dt = t.versions.get(ver) if t else None
        if dt is None or len(payload) < t.min_size(ver):
            errors[tid] = errors.get(tid, 0) + 1
            continue
        new = t.versions[t.newest]
        out = np.zeros(1, reg.decoded_dtype(tid))
        hdr = np.frombuffer(record(seq, tid, ver, payload)[:HDR_SIZE], HDR_DTYPE)
        for n in HDR_DTYPE.names:
            out[header_name(n, new)] = hdr[n]
        got = np.frombuffer((payload + b"\0" * dt.itemsize)[: dt.itemsize], dt)
        for n in new.names:
            if n in dt.names:
                out[n] = got[n]
            elif n in t.defaults:
                out[n] = t.defaults[n]
        rows.setdefault(tid, []).append(out)
    return {tid: np.concatenate(r) for tid, r in rows.items()}, errors


def frames_of(recs, strided: bool) -> Frames:
    raw = [record(seq, tid, ver, p) for seq, tid, ver, p in recs]
    # Each record behind an 8-byte ring header, as the ring consumer's buffer holds them.
    buf = np.frombuffer(b"".join(b"\0" * 8 + r for r in raw), np.uint8)
    at = np.cumsum([8] + [len(r) + 8 for r in raw[:-1]]).astype(np.int64)
    if strided:
        assert len({len(r) for r in raw}) == 1
        hdr = strided_headers(buf, int(at[0]), len(raw[0]) + 8, len(raw))
    else:
        hdr = headers_at(buf, at)
    return Frames(hdr, buf, at + HDR_SIZE)


def payload(rng, tid: int, ver: int, size: int) -> bytes:
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("seed", range(40))
def test_decode_matches_the_record_by_record_reference(seed):
    rng = np.random.default_rng(seed)
    kinds = [(tid, ver, np.dtype(layout).itemsize if not isinstance(layout, np.dtype) else layout.itemsize)
             for tid, ver, layout, _ in LAYOUTS] + [(*UNKNOWN, 8)]
    n = int(rng.integers(1, 80))
    one_kind = seed % 3 == 0  # a run of one (type, version, size): the strided paths
    if one_kind:
        tid, ver, size = kinds[seed % len(kinds)]
        recs = [(i, tid, ver, payload(rng, tid, ver, size)) for i in range(n)]
    else:
        recs = []
        for i in range(n):
            tid, ver, size = kinds[int(rng.integers(len(kinds)))]
            size += int(rng.integers(-4, 9))  # shorter (an error, or a variable tail) and longer
            recs.append((i, tid, ver, payload(rng, tid, ver, max(0, size))))
    for strided in ([True, False] if one_kind else [False]):
        reg = registry()
        frames = frames_of(recs, strided)
        want, errors = reference(reg, recs)
        assert reg.check(frames) == sum(errors.values())
        assert reg.take_parse_errors() == sum(errors.values())
        got = reg.decode(frames)
        assert reg.parse_errors == errors
        assert {tid for tid, rows in got.items() if len(rows)} == set(want)  # all short: an empty array
        for tid in want:
            assert got[tid].dtype == want[tid].dtype
            # same record order within a type: sort both by seq (versions come out in version order)
            g, w = np.sort(got[tid], order="seq"), np.sort(want[tid], order="seq")
            assert g.tobytes() == w.tobytes(), (seed, tid, strided)


def test_equal_sized_short_records_in_one_perf_run_decode_their_missing_tail_as_zeros():
    """A perf chunk of same-size samples is read as a strided run over the chunk; records shorter than
    their layout (a variable tail) must not read past the chunk, and their missing bytes are zeros."""
    from migrator.dataplane.readers.perf import PERF_RECORD_SAMPLE, PerfConsumer

    reg = Registry()
    reg.register(5, 1, [("a", "<u8"), ("tail", "V56")], min_size=8)
    recs = [struct.pack("<HHHHIIQQ", 1, 1, 5, 1, 8, 0, i, 1000 + i) + struct.pack("<Q", i * 3) for i in range(50)]
    chunk = b"".join(struct.pack("<IHHI", PERF_RECORD_SAMPLE, 0, 12 + len(r) + 4, len(r) + 4) + r + b"\0" * 4
                     for r in recs)
    pc = PerfConsumer.__new__(PerfConsumer)
    pc.parse_errors = pc.lost_reported = pc.consumed = pc.consumed_bytes = 0
    frames = pc.walk(chunk)
    rows = reg.decode(frames)[5]
    assert rows["seq"].tolist() == list(range(50)) and rows["a"].tolist() == [i * 3 for i in range(50)]
    assert not any(bytes(t).strip(b"\0") for t in rows["tail"])
    assert reg.parse_errors == {}
