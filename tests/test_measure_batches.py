"""Measurement amortised over many drains (pipeline.flush_measure) gives exactly the results of
measuring each batch as it was drained: the payload comparison (PayloadCompare.add_many against
add() batch by batch), the window meter (ChannelMeter.add_batches against add()), and the header
join they use. Pure functions on recorded batches; the live path is covered by test_dual_exact.py,
test_exactly_once.py and test_payload_checks.py."""
from __future__ import annotations

import numpy as np

from migrator.dataplane.compare import CompareCounts, PayloadCompare
from migrator.dataplane.frames import HDR_DTYPE, concat_headers, strided_headers
from migrator.dataplane.windows import ChannelMeter
from tests.test_compare import DUAL, PERF, frames, payload, record


def _state(c: PayloadCompare) -> tuple:
    side = c._side if c._side is not None else np.zeros(0, np.uint8)
    live = np.flatnonzero(side)
    return (c.counts, c.unpaired_evicted, live.tolist(),
            c._seq[live].tolist() if len(live) else [], c._dig[live].tolist() if len(live) else [])


def _both(items: list[tuple[str, object, bool]], capacity: int = 1 << 10) -> tuple[tuple, tuple]:
    """(state after add() on each batch in turn, state after one add_many of them all)."""
    one, many = PayloadCompare(capacity), PayloadCompare(capacity)
    for ch, f, room in items:
        one.add(ch, f, room=room)
    many.add_many(items)
    return _state(one), _state(many)


def _rec(seq: int, *, corrupt: bool = False, mode: int = DUAL, size: int = 40) -> bytes:
    p = payload(seq, size)
    return record(seq, (p[:-1] + bytes([p[-1] ^ 1])) if corrupt else p, mode=mode)


def test_add_many_equals_add_batch_by_batch_on_interleaved_channels_with_mismatches():
    # ring runs ahead of perf by a few records (perf's copies arrive a batch later), some ring
    # payloads corrupted, a few records emitted in PERF (perf only), one batch without room.
    items = []
    bad = {5, 17, 18, 30, 41, 42, 43, 44, 45, 46, 47, 48}
    for k in range(6):
        lo = 10 * k
        perf = [_rec(s, mode=PERF if s % 13 == 0 else DUAL) for s in range(max(0, lo - 3), lo + 7)]
        ring = [_rec(s, corrupt=s in bad) for s in range(lo, lo + 10) if s % 13]
        items.append(("perf", frames(perf, shift=4), True))
        items.append(("ring", frames(ring), k != 2))
    one, many = _both(items)
    assert one == many
    counts: CompareCounts = many[0]
    assert counts.mismatches > 8 and len(counts.mismatch_seqs) == 8 and counts.skipped == 9
    assert list(counts.mismatch_seqs) == [5, 17, 18, 30, 41, 42, 43, 44]


def test_add_many_keeps_batch_order_where_the_order_matters():
    # seqs spanning more than the table: a later seq evicts an earlier one of its slot
    span = [("perf", frames([_rec(s) for s in (1, 2, 3)]), True),
            ("ring", frames([_rec(s) for s in (1 + 64, 2)]), True),
            ("perf", frames([_rec(s) for s in (1 + 64, 200)]), True),
            ("ring", frames([_rec(s) for s in (1, 3)]), True)]
    one, many = _both(span, capacity=64)
    assert one == many and one[1] > 0
    # a seq twice on one side (a corrupt stream): the second copy must replace the first in turn
    dup = [("perf", frames([_rec(7), _rec(8)]), True), ("ring", frames([_rec(7, corrupt=True)]), True),
           ("ring", frames([_rec(7)]), True), ("perf", frames([_rec(7)]), True)]
    assert _both(dup)[0] == _both(dup)[1]
    # a copy of a record already waiting in the table from an earlier pass
    c1, c2 = PayloadCompare(1 << 10), PayloadCompare(1 << 10)
    first = ("ring", frames([_rec(9, corrupt=True)]), True)
    c1.add(*first[:2], room=True)
    c2.add_many([first])
    again = [("ring", frames([_rec(9)]), True), ("perf", frames([_rec(9)]), True)]
    for ch, f, room in again:
        c1.add(ch, f, room=room)
    c2.add_many(again)
    assert _state(c1) == _state(c2) and c1.counts.mismatches == 0 and c1.unpaired_evicted == 1


def test_add_many_with_nothing_dual_or_nothing_at_all():
    c = PayloadCompare(1 << 10)
    c.add_many([])
    c.add_many([("perf", frames([_rec(1, mode=PERF)]), True)])
    assert c.counts == CompareCounts() and c._side is None


def _batch(seqs, lags_ns, now):
    b = np.zeros(len(seqs), HDR_DTYPE)
    b["seq"] = seqs
    b["ktime_ns"] = [now - lag for lag in lags_ns]
    return b


def test_meter_add_batches_equals_add_batch_by_batch():
    rng = np.random.default_rng(7)
    batches, nows, seq = [], [], 0
    for k in range(9):
        n = int(rng.integers(1, 40))
        seqs = seq + np.arange(n) + (rng.integers(-3, 3, n) if k % 3 == 0 else 0)  # some inversions
        seq += n
        now = 5_000_000_000 + k * 10_000_000
        batches.append(_batch(seqs, rng.integers(0, 30_000_000, n).tolist(), now))
        nows.append(now)
    a, b = ChannelMeter("perf"), ChannelMeter("perf")
    for h, t in zip(batches, nows):
        a.add(h, t)
    b.add_batches(concat_headers(batches), [len(h) for h in batches], nows)
    assert (a.delivered, a.inversions, a.lag_max_ns, a.seq_min, a.seq_max, a.max_seq) == \
           (b.delivered, b.inversions, b.lag_max_ns, b.seq_min, b.seq_max, b.max_seq)
    assert a.inversions > 0
    assert np.array_equal(a.hist, b.hist) and a.lag_summary() == b.lag_summary()


def test_concat_headers_joins_strided_views_field_for_field():
    buf = np.frombuffer(b"".join(_rec(s) for s in range(6)), np.uint8)
    stride = len(_rec(0))
    a, b = strided_headers(buf, 0, stride, 3), strided_headers(buf, 3 * stride, stride, 3)
    joined = concat_headers([a, b])
    assert joined.dtype == HDR_DTYPE and joined["seq"].tolist() == list(range(6))
    assert joined.tolist() == np.concatenate([a, b]).tolist()
    assert concat_headers([a]) is a
