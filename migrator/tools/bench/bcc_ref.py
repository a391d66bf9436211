"""bcc's callback consumers, kept as the reference path the benchmark measures ours against.

One Python callback per record, as bcc users write them: the record is decoded in place from
the raw pointer (seq and ktime_ns through a ctypes cast, no copy) into the same numbers our
batched consumers produce: count, lag (CLOCK_MONOTONIC at the callback minus ktime_ns) and
ordering inversions on seq. Like the library's `callback` path, it also does the operator's
per-record work the benchmark asks of every callback: read the payload's first 8 bytes.
"""
from __future__ import annotations

import ctypes as ct
import time
from array import array

import numpy as np

from migrator.dataplane.frames import HDR_DTYPE, HDR_SIZE
from migrator.dataplane.windows import ChannelMeter

# migrator's header (frames.HDR_DTYPE) read as u64 words: seq and ktime_ns are one word each, then
# the payload's first 8 bytes (every payload of both bench streams has at least 24). Indexing an
# array made in place at the pointer is the cheapest ctypes read measured here (~0.2 us, against
# ~0.45 us for ct.cast to a pointer and ~0.3 us for string_at + struct.unpack).
_SEQ_WORD, _KTIME_WORD, _PAYLOAD_WORD = HDR_DTYPE.fields["seq"][1] // 8, HDR_DTYPE.fields["ktime_ns"][1] // 8, HDR_SIZE // 8
_HDR_AT = (ct.c_uint64 * (_PAYLOAD_WORD + 1)).from_address


class _Tally:
    """What the callbacks accumulate: raw seq, lag and the payload's first 8 bytes per record,
    summarised (vectorised) at the end."""

    def __init__(self) -> None:
        self.seqs = array("Q")
        self.lags = array("q")
        self.first = array("Q")  # the payload's first 8 bytes, as a little-endian u64
        self.lost_reported = 0

    @property
    def delivered(self) -> int:
        return len(self.seqs)

    def meter(self) -> ChannelMeter:
        """The same summary the pipeline's paths get (lag histogram, inversions), at the end."""
        m = ChannelMeter("ref")
        m.add_lags(np.frombuffer(self.seqs, dtype=np.uint64), np.frombuffer(self.lags, dtype=np.int64))
        return m


def _make_callback(t: _Tally):
    """A record callback for either channel: bcc passes (ctx-or-cpu, data, size)."""
    hdr_at, mono = _HDR_AT, time.monotonic_ns
    seqs_append, lags_append, first_append = t.seqs.append, t.lags.append, t.first.append
    seq_w, ktime_w, payload_w = _SEQ_WORD, _KTIME_WORD, _PAYLOAD_WORD

    def cb(_ctx, data, _size):
        h = hdr_at(data)
        seqs_append(h[seq_w])
        lags_append(mono() - h[ktime_w])
        first_append(h[payload_w])
        return 0

    return cb


class BccRingRef:
    """bcc `open_ring_buffer` + `ring_buffer_poll` on a probe's channel ring (`events__ring`).

    `probe` is anything with `.bpf` and `.channel` (a demo Probe, or the bench's mixed program)."""

    channel = "ring"

    def __init__(self, probe) -> None:
        self.bpf = probe.bpf
        self.tally = _Tally()
        probe.channel.ring_map.open_ring_buffer(_make_callback(self.tally))

    def close(self) -> None:
        """Nothing to release before the program is unloaded (bcc frees the ring reader then)."""

    def poll(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for records and run the callback on each (bcc's ring_buffer_poll)."""
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume(self) -> None:
        """Run the callback on every record waiting now, without blocking."""
        self.bpf.ring_buffer_consume()


class BccPerfRef:
    """bcc `open_perf_buffer` (64 pages per CPU, bcc's wakeup per record) + `perf_buffer_poll`."""

    channel = "perf"

    def __init__(self, probe, page_cnt: int = 64) -> None:
        self.bpf = probe.bpf
        self.tally = _Tally()

        def lost(n: int) -> None:
            self.tally.lost_reported += n

        self.table = probe.channel.perf_map
        self.table.open_perf_buffer(_make_callback(self.tally), page_cnt=page_cnt, lost_cb=lost)

    def close(self) -> None:
        """Free the per-CPU readers while the map is still there: left to bcc's __del__ after the
        program's cleanup, the map delete fails and Python prints an ignored KeyError."""
        for key in list(getattr(self.table, "_open_key_fds", {})):
            try:
                del self.table[key]
            except Exception:
                pass

    def poll(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for records and run the callback on each (bcc's perf_buffer_poll)."""
        self.bpf.perf_buffer_poll(timeout_ms)

    def consume(self) -> None:
        """Run the callback on every record waiting now, without blocking."""
        self.bpf.perf_buffer_consume()


__all__ = ["BccRingRef", "BccPerfRef"]
