"""The native record loops' library (dataplane/native.py): built when missing or stale, a clear
error without a compiler, drain buffers reused only once nothing holds them, and the perf walk's
edges (a corrupt header ends it; a single record is a strided run of one)."""
from __future__ import annotations

import os
import shutil
import struct

import numpy as np
import pytest

from migrator.dataplane import native
from migrator.dataplane.readers.perf import PERF_RECORD_SAMPLE, PerfConsumer
from migrator.dataplane.frames import HDR_SIZE
from migrator.errors import MigratorError


def record(seq: int, payload: bytes) -> bytes:
    rec = struct.pack("<HHHHIIQQ", 1, 1, 1, 0, len(payload), 0, seq, 1000 + seq) + payload
    return rec + b"\0" * (-len(rec) % 4)


def sample(rec: bytes) -> bytes:
    raw = rec + b"\0" * (-(len(rec) + 12) % 8)
    return struct.pack("<IHHI", PERF_RECORD_SAMPLE, 0, 12 + len(raw), len(raw)) + raw


def walker() -> PerfConsumer:
    pc = PerfConsumer.__new__(PerfConsumer)
    pc.parse_errors = pc.lost_reported = pc.consumed = pc.consumed_bytes = 0
    return pc


@pytest.fixture
def private_source(tmp_path, monkeypatch):
    """The library's sources copied into a directory of their own, so builds there touch nothing shared."""
    for p in native.SOURCES:
        shutil.copy(p, tmp_path / p.name)
    src = tmp_path / native.SOURCE.name
    monkeypatch.setattr(native, "SOURCE", src)
    monkeypatch.setattr(native, "SOURCES", tuple(tmp_path / p.name for p in native.SOURCES))
    monkeypatch.setattr(native, "_candidates", lambda: [tmp_path / native.LIB_NAME])
    return src


def test_built_when_missing_and_again_when_the_source_changes(private_source):
    lib = native.build()
    assert lib == private_source.with_name(native.LIB_NAME) and lib.exists()
    built = lib.stat().st_ino, lib.stat().st_mtime_ns
    later = built[1] + 10**9  # a source dated in the future (a skewed clock) is no reason to rebuild
    os.utime(private_source, ns=(later, later))
    assert native.build() == lib and (lib.stat().st_ino, lib.stat().st_mtime_ns) == built
    private_source.write_text(private_source.read_text() + "/* changed */\n")
    native.build()
    assert lib.stat().st_ino != built[0]  # rebuilt (a new file renamed into place)


def test_no_compiler_is_an_error_that_names_the_fix(private_source, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(MigratorError, match="setup.sh"):
        native.build()
    assert not private_source.with_name(native.LIB_NAME).exists()


def test_a_source_that_does_not_compile_says_why(private_source):
    private_source.write_text("this is not C\n")
    with pytest.raises(MigratorError, match="failed"):
        native.build()
    assert [p.name for p in private_source.parent.iterdir() if p.name.startswith(native.LIB_NAME + "tmp")] == []


def test_spares_are_reused_only_when_nothing_holds_them():
    pool = native.Spares(limit=1 << 20)
    a, a_at = pool.take(1000)
    held = a[:10]  # a batch keeps a view of its bytes
    del a
    b, b_at = pool.take(1000)
    assert b_at != a_at  # the first one is still in use
    del held, b
    c, c_at = pool.take(5000)
    assert c_at == a_at and len(c) == 5000  # free again, and big enough (64 KiB at least)
    del c
    d, d_at = pool.take(200_000)  # free but too small: grown in place of the old one
    assert len(d) == 200_000 and native.addr(d) == d_at


def test_perf_walk_stops_at_a_corrupt_header_and_keeps_what_came_before():
    recs = [sample(record(i, b"p" * 24)) for i in range(3)]
    corrupt = struct.pack("<IHH", PERF_RECORD_SAMPLE, 0, 4)  # size 4: cannot move on
    pc = walker()
    frames = pc.walk(b"".join(recs[:2]) + corrupt + b"\0" * 4 + recs[2])
    assert frames.seq.tolist() == [0, 1] and (pc.consumed, pc.parse_errors) == (2, 0)


def test_one_record_is_a_run_of_one():
    pc = walker()
    frames = pc.walk(sample(record(7, b"q" * 40)))
    assert frames.seq.tolist() == [7] and bytes(frames.payload(0)) == b"q" * 40
    assert frames.off.tolist() == [12 + HDR_SIZE]


def test_mixed_sizes_come_out_as_gathered_headers_in_order():
    recs = [record(i, bytes([i]) * (8 + 4 * i)) for i in range(20)]
    pc = walker()
    frames = pc.walk(b"".join(sample(r) for r in recs))
    assert frames.hdr.strides == (HDR_SIZE,)  # copies, not a strided view
    assert frames.seq.tolist() == list(range(20))
    assert [bytes(frames.payload(i)) for i in range(20)] == [r[HDR_SIZE:HDR_SIZE + 8 + 4 * i]
                                                           for i, r in enumerate(recs)]
    assert np.all(frames.hdr["len"] == [8 + 4 * i for i in range(20)])


def test_meter_matches_a_numpy_reference():
    from migrator.dataplane.frames import EPOCHS, HDR_DTYPE
    from migrator.dataplane.windows import _NBINS, ChannelMeter

    rng = np.random.default_rng(5)
    m, by_epoch = ChannelMeter("t"), np.zeros(EPOCHS, np.int64)
    hist, inversions, top, lag_max = np.zeros(_NBINS, np.int64), 0, -1, 0
    epochs = np.zeros(EPOCHS, np.int64)
    for _ in range(5):
        counts = rng.integers(1, 50, 4).tolist()
        now = (10**12 + rng.integers(0, 10**9, 4)).tolist()
        hdr = np.zeros(sum(counts), HDR_DTYPE)
        hdr["seq"] = rng.integers(0, 1000, len(hdr))
        hdr["ktime_ns"] = 10**12 - rng.integers(-10**6, 10**10, len(hdr))  # some from the future: lag 1
        hdr["flags"] = rng.integers(0, 1 << 16, len(hdr))
        m.add_batches(hdr, counts, now, by_epoch)
        ref_now = np.repeat(np.array(now, np.float64), counts)
        lag = np.maximum(ref_now - hdr["ktime_ns"].astype(np.float64), 1.0)
        np.add.at(hist, np.minimum((np.log2(lag) * 8).astype(np.int64), _NBINS - 1), 1)
        epochs += np.bincount((hdr["flags"] >> 2) % EPOCHS, minlength=EPOCHS)
        lag_max = max(lag_max, int((np.repeat(now, counts) - hdr["ktime_ns"].astype(np.int64)).max()))
        for s in hdr["seq"].tolist():
            inversions, top = (inversions + 1, top) if s < top else (inversions, s)
    assert m.hist.tolist() == hist.tolist() and m.inversions == inversions and m.lag_max_ns == lag_max
    assert m.delivered == sum(by_epoch) and m.max_seq == top
    assert by_epoch.tolist() == epochs.tolist()
