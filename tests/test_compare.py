"""Payload comparison in DUAL as pure functions on recorded batches: the digest, and the pairing
of the two channels' records by seq (dataplane/compare.py)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from migrator.dataplane.compare import PayloadCompare, digests
from migrator.dataplane.frames import HDR_SIZE, Frames, headers_at
from migrator.shared.vocab import MODE_VALUES

DUAL, PERF, RING = MODE_VALUES["DUAL"], MODE_VALUES["PERF"], MODE_VALUES["RING"]


def record(seq: int, payload: bytes, *, mode: int = DUAL) -> bytes:
    """One migrator record (32-byte header + payload), padded to 8 bytes as both channels frame it."""
    rec = struct.pack("<HHHHIIQQ", 1, mode, 0, 0, len(payload), 0, seq, 1000 + seq) + payload
    return rec + b"\xee" * (-len(rec) % 8)  # non-zero padding: the digest must not read it


def frames(recs: list[bytes], *, shift: int = 0, gap: int = 0) -> Frames:
    """A batch as a consumer hands it out: records back to back in one buffer, the first at byte
    `shift` (perf samples put records 4 bytes off an 8-byte boundary), `gap` junk bytes between."""
    starts, pos = [], shift
    for r in recs:
        starts.append(pos)
        pos += len(r) + gap
    raw = bytearray(b"\xab" * pos)
    for s, r in zip(starts, recs):
        raw[s:s + len(r)] = r
    buf = np.frombuffer(bytes(raw), np.uint8).copy()
    at = np.asarray(starts, np.int64)
    return Frames(headers_at(buf, at), buf, at + HDR_SIZE)


def payload(i: int, size: int) -> bytes:
    return bytes((i * 31 + k * 7) % 251 for k in range(size))


SIZES = [0, 1, 3, 7, 8, 9, 24, 40, 63, 64, 65, 200, 4096]


def test_the_digest_depends_on_length_and_bytes_only_not_on_layout():
    pays = [payload(i, s) for i, s in enumerate(SIZES)]
    alone = [int(digests(frames([record(i, p)]))[0]) for i, p in enumerate(pays)]
    assert len(set(alone)) == len(pays)
    for shift in (0, 4):  # both 8-byte alignments of the payloads
        for gap in (0, 8, 12):  # other neighbours, other strides
            assert digests(frames([record(i, p) for i, p in enumerate(pays)], shift=shift, gap=gap)).tolist() == alone
    # a run of one size (read as a strided view) agrees with the same records read one by one
    run = [record(i, payload(i, 40)) for i in range(50)]
    assert digests(frames(run)).tolist() == [int(digests(frames([r]))[0]) for r in run]
    # many sizes in one batch (grouped into power-of-two widths, padding masked) agree too
    many = [record(i, payload(i, 8 + i)) for i in range(120)]
    assert digests(frames(many, shift=4)).tolist() == [int(digests(frames([r]))[0]) for r in many]


def test_every_single_bit_flip_and_every_length_change_changes_the_digest():
    base = payload(5, 37)
    d0 = int(digests(frames([record(0, base)]))[0])
    flips = [bytes(b ^ (1 << bit) if k == pos else b for k, b in enumerate(base))
             for pos in range(len(base)) for bit in range(8)]
    ds = digests(frames([record(i, p) for i, p in enumerate(flips)], shift=4))
    assert len(ds) == 37 * 8 and d0 not in ds.tolist() and len(set(ds.tolist())) == len(flips)
    # zero bytes count: b"ab" and b"ab\0" (same padded words) differ by their length
    assert len(set(digests(frames([record(0, b"ab"), record(1, b"ab\0"), record(2, b"ab\0\0\0\0\0\0")])).tolist())) == 3


def test_ring_payloads_that_differ_from_perf_count_once_per_seq():
    perf = [record(s, payload(s, 24 + s % 5)) for s in range(100)]
    ring = [record(s, payload(s + 1 if 10 <= s < 20 else s, 24 + s % 5)) for s in range(100)]
    cmp = PayloadCompare()
    assert cmp.add("perf", frames(perf, shift=4)) == 0  # nothing to pair with yet
    assert cmp.add("ring", frames(ring)) == 10
    c = cmp.take()
    assert (c.compared, c.mismatches, c.mismatch_seqs) == (100, 10, tuple(range(10, 18)))
    assert cmp.take() == type(c)()  # counts restart after a take


def test_ring_first_and_batches_split_anywhere_pair_the_same():
    perf = [record(s, payload(s, 48)) for s in range(60)]
    ring = [record(s, payload(s, 48) if s % 7 else b"\0" * 48) for s in range(60)]
    cmp = PayloadCompare()
    cmp.add("ring", frames(ring[:25]))
    cmp.add("perf", frames(perf[:40], shift=4))
    cmp.add("ring", frames(ring[25:]))
    cmp.add("perf", frames(perf[40:], shift=4))
    c = cmp.take()
    assert (c.compared, c.mismatches) == (60, len(range(0, 60, 7)))


def test_a_record_seen_on_one_channel_only_is_not_a_mismatch():
    perf = [record(s, payload(s, 32)) for s in range(50)]
    ring = [record(s, payload(s, 32)) for s in range(50) if s % 5]  # every 5th dropped on the ring
    cmp = PayloadCompare()
    cmp.add("perf", frames(perf))
    cmp.add("ring", frames(ring))
    c = cmp.take()
    assert (c.compared, c.mismatches) == (40, 0)


def test_only_records_emitted_in_dual_are_compared():
    cmp = PayloadCompare()
    cmp.add("perf", frames([record(s, payload(s, 16), mode=PERF) for s in range(10)]))
    cmp.add("ring", frames([record(s, b"x" * 16, mode=RING) for s in range(10)]))
    assert cmp.take().compared == 0
    assert cmp._side is None  # nothing was ever kept: the table is allocated at the first DUAL record
    mixed = [record(s, payload(s, 16), mode=DUAL if s >= 5 else PERF) for s in range(10)]
    cmp.add("perf", frames(mixed))
    cmp.add("ring", frames([record(s, b"y" * 16) for s in range(5, 10)]))
    c = cmp.take()
    assert (c.compared, c.mismatches) == (5, 5)


def test_the_table_is_bounded_and_an_evicted_digest_is_never_a_mismatch():
    cmp = PayloadCompare(capacity=16)
    cmp.add("perf", frames([record(s, payload(s, 16)) for s in range(100)]))
    # ring copies all differ, but only seqs 84..99 still have a perf digest in the 16 slots
    cmp.add("ring", frames([record(s, b"z" * 16) for s in range(100)]))
    c = cmp.take()
    assert (c.compared, c.mismatches) == (16, 16)
    # perf 0..83 were overwritten by later perf seqs; ring 0..67 by later ring seqs (68..83 wait)
    assert cmp.unpaired_evicted == 84 + 68
    assert cmp._side.nbytes + cmp._seq.nbytes + cmp._dig.nbytes == 16 * 17
    with pytest.raises(ValueError):
        PayloadCompare(capacity=1000)


def test_empty_batches_and_empty_payloads():
    cmp = PayloadCompare()
    assert cmp.add("perf", Frames.empty()) == 0
    assert len(digests(Frames.empty())) == 0
    cmp.add("perf", frames([record(0, b""), record(1, b"")]))
    assert cmp.add("ring", frames([record(0, b""), record(1, b"a")])) == 1


def test_a_consumer_that_is_behind_skips_hashing_and_never_counts_a_mismatch():
    behind = [True]
    cmp = PayloadCompare(room=lambda: not behind[0])
    cmp.add("perf", frames([record(s, payload(s, 24)) for s in range(30)]))  # shed: buffers filling
    behind[0] = False
    cmp.add("ring", frames([record(s, b"\0" * 24) for s in range(30)]))  # all differ, none paired
    cmp.add("perf", frames([record(s, payload(s, 24)) for s in range(30, 40)]))
    cmp.add("ring", frames([record(s, b"\0" * 24) for s in range(30, 40)]))
    c = cmp.take()
    assert (c.skipped, c.compared, c.mismatches) == (30, 10, 10)


def test_runs_of_one_size_per_cpu_read_strided_agree_with_one_by_one():
    # perf hands out one run per CPU: same size, same stride, a jump between the runs
    recs = [record(s, payload(s, 44)) for s in range(90)]
    parts = [frames(recs[:30], shift=4), frames(recs[30:31], shift=4), frames(recs[31:], shift=4)]
    batch = Frames.concat(parts)
    assert batch.off.tolist() != list(range(batch.off[0], batch.off[0] + 80 * 90, 80))  # not one run
    assert digests(batch).tolist() == [int(digests(frames([r]))[0]) for r in recs]


def reference_pairing(items: list[tuple[str, list[tuple[int, int, bytes]], bool]], capacity: int):
    """The pairing rule in plain Python: per batch, in consumption order, every DUAL record whose
    other copy waits in its slot is compared and frees the slot; then the rest are stored."""
    table: dict[int, tuple[int, str, bytes]] = {}  # slot -> (seq, channel, payload)
    compared = mismatches = skipped = evicted = 0
    evidence: list[int] = []
    for channel, recs, room in items:
        dual = [(seq, p) for seq, mode, p in recs if mode == DUAL]
        if not room:
            skipped += len(dual)
            continue
        rest = []
        for seq, p in dual:
            w = table.get(seq % capacity)
            if w is not None and w[0] == seq and w[1] != channel:
                compared += 1
                if w[2] != p:
                    mismatches += 1
                    evidence.append(seq)
                del table[seq % capacity]
            else:
                rest.append((seq, p))
        for seq, p in rest:
            evicted += (seq % capacity) in table
            table[seq % capacity] = (seq, channel, p)
    return compared, mismatches, skipped, evicted, evidence[:PayloadCompare.EVIDENCE], table


@pytest.mark.parametrize("one_call", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_pairing_matches_the_plain_rule_on_messy_streams(seed, one_call):
    # both channels in random batches: records dropped on one side, corrupted, emitted in PERF or
    # RING (never compared), repeated, seqs spanning several times the table, consumers behind
    rng = np.random.default_rng(seed)
    capacity = 16
    items = []
    for _ in range(30):
        channel = "perf" if rng.random() < 0.5 else "ring"
        recs = []
        for _ in range(int(rng.integers(0, 12))):
            seq = int(rng.integers(0, 80))
            mode = [DUAL, DUAL, DUAL, PERF, RING][int(rng.integers(5))]
            p = payload(seq, 8 + seq % 13)
            if rng.random() < 0.15:
                p = p[:-1] + bytes([p[-1] ^ 1])
            recs.append((seq, mode, p))
        items.append((channel, recs, bool(rng.random() < 0.85)))
    cmp = PayloadCompare(capacity=capacity)
    batches = [(ch, frames([record(s, p, mode=m) for s, m, p in recs]), room) for ch, recs, room in items]
    if one_call:  # pairs within the call compared byte for byte (native.c mg_pair, HELD)
        cmp.add_many(batches)
    else:  # every pair across calls: compared by digest
        for b in batches:
            cmp.add_many([b])
    compared, mismatches, skipped, evicted, evidence, table = reference_pairing(items, capacity)
    c = cmp.take()
    assert (c.compared, c.mismatches, c.skipped, cmp.unpaired_evicted) == (compared, mismatches, skipped, evicted)
    assert list(c.mismatch_seqs) == evidence
    waiting = {slot: (int(cmp._seq[slot]), "perf" if cmp._side[slot] == 1 else "ring")
               for slot in np.flatnonzero(cmp._side)}
    assert waiting == {slot: (seq, ch) for slot, (seq, ch, _) in table.items()}
