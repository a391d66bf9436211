"""Exactly once across switches, as pure functions on recorded batches: the handover's owners,
the perf sample walker and the payload registry."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from migrator.dataplane.readers.perf import PERF_RECORD_LOST, PERF_RECORD_SAMPLE, PerfConsumer
from migrator.dataplane.frames import HDR_SIZE, Frames, headers_at
from migrator.dataplane.handover import Handover
from migrator.dataplane.schema import Registry


def record(seq: int, payload: bytes, *, type_id: int = 0, version: int = 0, mode: int = 1, hdr_version: int = 1) -> bytes:
    """One migrator record: the 32-byte header and the payload."""
    return struct.pack("<HHHHIIQQ", hdr_version, mode, type_id, version, len(payload), 0, seq, 1000 + seq) + payload


def sample(rec: bytes) -> bytes:
    """A perf PERF_RECORD_SAMPLE carrying `rec` as its raw data, padded to 8 bytes as the kernel does."""
    raw = rec + b"\0" * ((-(len(rec) + 4)) % 8)
    return struct.pack("<IHHI", PERF_RECORD_SAMPLE, 0, 12 + len(raw), len(raw)) + raw


def test_every_seq_has_exactly_one_owner_across_many_switches():
    h = Handover("perf")
    h.cut(100, "ring")
    h.cut(100, "ring")  # same owner again: no new cut
    h.cut(250, "perf")
    h.cut(400, "ring")
    seq = np.arange(0, 600, dtype=np.uint64)
    perf, ring = h.owned("perf", seq), h.owned("ring", seq)
    assert not (perf & ring).any() and (perf | ring).all()
    assert perf.sum() == 100 + 150 and ring.sum() == 150 + 200
    assert ring[100] and perf[99] and perf[250] and ring[249] and ring[400] and perf[399]
    with pytest.raises(ValueError):
        h.cut(300, "perf")  # before the last cut


def test_a_record_emitted_in_one_channels_mode_is_delivered_from_it_whatever_its_seq():
    # RING -> PERF at seq 100. A program run that read RING just before the switch fetched seq 101
    # after the cut was read: its only copy is on the ring, so the ring delivers it; a run that read
    # PERF (after the switch) with seq 99 cannot exist, but a PERF record is perf's alone anyway.
    h = Handover("ring")
    h.cut(100, "perf")
    seq = np.array([98, 99, 100, 101, 102], dtype=np.uint64)
    ring_flags = np.array([2, 1, 2, 1, 1], dtype=np.uint16)  # RING, DUAL, RING (late), DUAL, DUAL
    perf_flags = np.array([0, 1, 0, 1, 1], dtype=np.uint16)  # what perf holds at those seqs
    ring = h.owned("ring", seq, ring_flags)
    perf = h.owned("perf", seq, perf_flags)
    assert ring.tolist() == [True, True, True, False, False]
    assert perf.tolist() == [True, False, True, True, True]
    # each DUAL seq (two copies) has exactly one owner; one-copy records are always delivered
    dual = ring_flags == 1
    assert not (ring & perf & dual).any() and ((ring | perf) | ~dual).all()
    # the epoch bits (2-7) and other flags do not change the mode read
    assert h.owned("ring", seq, ring_flags | 0x0104).tolist() == ring.tolist()


def test_perf_walker_reads_mixed_sizes_and_counts_lost_and_bad_records():
    recs = [record(i, bytes([i % 251]) * (24 + (i * 37) % 500)) for i in range(40)]
    lost = struct.pack("<IHHQQ", PERF_RECORD_LOST, 0, 24, 0, 7)
    bad = sample(record(99, b"x" * 8, hdr_version=9))
    chunk = b"".join(sample(r) for r in recs[:20]) + lost + bad + b"".join(sample(r) for r in recs[20:])
    pc = PerfConsumer.__new__(PerfConsumer)
    pc.parse_errors = pc.lost_reported = pc.consumed = pc.consumed_bytes = 0
    frames = pc.walk(chunk)
    assert len(frames) == 40 and frames.seq.tolist() == list(range(40))
    assert (pc.lost_reported, pc.parse_errors) == (7, 1)
    assert bytes(frames.payload(13)) == recs[13][HDR_SIZE:]
    assert frames.hdr["len"].tolist() == [len(r) - HDR_SIZE for r in recs]


def test_perf_walker_reads_a_run_of_one_size_in_one_step():
    recs = [record(i, struct.pack("<Q", i) * 5) for i in range(1000)]
    pc = PerfConsumer.__new__(PerfConsumer)
    pc.parse_errors = pc.lost_reported = pc.consumed = pc.consumed_bytes = 0
    frames = pc.walk(b"".join(sample(r) for r in recs))
    assert frames.seq.tolist() == list(range(1000))
    assert np.frombuffer(bytes(frames.payload(999)), "<u8").tolist() == [999] * 5


def test_registry_decodes_old_versions_with_defaults_and_counts_unknown_ones():
    reg = Registry()
    reg.register(7, 1, [("a", "<u4"), ("b", "<u4")], name="flow")
    reg.register(7, 2, [("a", "<u4"), ("b", "<u4"), ("c", "<u8")], defaults={"c": 42})
    raw = [record(0, struct.pack("<II", 1, 2), type_id=7, version=1),
           record(1, struct.pack("<IIQ", 3, 4, 5), type_id=7, version=2),
           record(2, struct.pack("<II", 6, 7), type_id=7, version=3),  # unknown version
           record(3, b"\1\2", type_id=7, version=2),  # shorter than its layout
           record(4, b"", type_id=9, version=0)]  # unknown type
    raw = [r + b"\0" * (-len(r) % 8) for r in raw]  # framed 8-byte aligned, as both channels do
    buf = np.frombuffer(b"".join(raw), np.uint8)
    starts = np.cumsum([0] + [len(r) for r in raw[:-1]])
    frames = Frames(headers_at(buf, starts), buf, starts + HDR_SIZE)
    assert reg.check(frames) == 3 and reg.parse_errors == {7: 2, 9: 1}
    rows = reg.decode(frames, count_errors=False)[7]
    assert rows["seq"].tolist() == [0, 1] and rows["a"].tolist() == [1, 3] and rows["c"].tolist() == [42, 5]
    assert reg.take_parse_errors() == 3 and reg.parse_errors == {}
    before = reg.fingerprint()
    reg.register(7, 3, [("a", "<u4"), ("b", "<u4"), ("c", "<u8"), ("d", "<u2")])
    assert reg.fingerprint() != before


def test_a_payload_that_looks_like_a_sample_is_read_as_payload():
    # A payload holding a copy of a whole sample, 8-byte aligned inside the outer one: the walk
    # follows the headers the kernel chained, so the copy is never taken for a record.
    inner = sample(record(777, b"z" * 16))
    payload = b"\0" * 4 + inner + b"\0" * 4
    recs = [record(0, b"a" * 24), record(1, payload), record(2, b"b" * 40)]
    pc = PerfConsumer.__new__(PerfConsumer)
    pc.parse_errors = pc.lost_reported = pc.consumed = pc.consumed_bytes = 0
    frames = pc.walk(b"".join(sample(r) for r in recs))
    assert frames.seq.tolist() == [0, 1, 2] and bytes(frames.payload(1)) == payload
    assert (pc.consumed, pc.parse_errors, pc.lost_reported) == (3, 0, 0)
