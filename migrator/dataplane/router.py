"""Delivery: which copy of each record reaches the operator's code, exactly once, and what that taught.

The pipeline hands every drained batch to its Router (route) and every measuring pass's headers
to it (measure); nothing is called back up a layer. The router owns the handover cut (handover.py),
delivers the acting channel's records to the operator's callback (bcc's `(cpu, data, size)`) or
batch handler (decoded numpy rows), schedules the payload comparison (compare.py) and the parse
checks, and at each window's close writes what it learned into the pipeline's windows: parse
errors, payload mismatches, `filled_from_ring`, and how many events were acted on.

    event: kernel -> readers/ (drain) -> Pipeline._take -> Router.route -> your callback
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from migrator.dataplane.compare import PayloadCompare
from migrator.dataplane.frames import FLAG_MODE_MASK, FLAG_PERF_LOST, Frames
from migrator.dataplane.handover import Handover
from migrator.dataplane.schema import Registry
from migrator.shared.records import ChannelWindow

# registry.check reads headers only: the measured-only records it checks carry no payload.
_NO_BYTES = np.empty(0, np.uint8)
_NO_OFFSETS = np.empty(0, np.int64)


@dataclass
class ActedMatches:
    """Of the events acted on, which also reached the ring (same seq): `migrator wrap`'s question
    "what would this tool see on the ring buffer?", answered while the tool's callback is open."""

    acted: int = 0
    matched: int = 0  # acted on, and also delivered by the ring
    perf_mode_only: int = 0  # acted on, emitted in PERF mode (the ring was never written)
    _acted_waiting: set = field(default_factory=set)  # acted, emitted with the ring on, ring copy not seen yet
    _ring_waiting: set = field(default_factory=set)  # ring copies not acted (yet)

    def observe(self, channel: str, frames: Frames, mine: np.ndarray | None) -> None:
        """One routed batch; `mine`: which records were delivered (None: all)."""
        seq = frames.seq
        acted = seq if mine is None else seq[mine]
        self.acted += len(acted)
        if channel == "ring":
            got = set(acted.tolist())  # acted straight from the ring
            self.matched += len(got)
            rest = set(seq.tolist()) - got
            hit = rest & self._acted_waiting
            self._acted_waiting -= hit
            self.matched += len(hit)
            self._ring_waiting |= rest - hit
        else:
            flags = frames.hdr["flags"] if mine is None else frames.hdr["flags"][mine]
            ring_on = (flags & FLAG_MODE_MASK) != 0
            self.perf_mode_only += int(len(acted) - ring_on.sum())
            got = set(acted[ring_on].tolist())
            hit = got & self._ring_waiting
            self._ring_waiting -= hit
            self.matched += len(hit)
            self._acted_waiting |= got - hit

    @property
    def not_on_ring(self) -> int:
        """Acted events the ring never delivered (emitted in PERF mode, or missing from the ring)."""
        return self.perf_mode_only + len(self._acted_waiting)

    @property
    def ring_not_acted(self) -> int:
        """Ring deliveries of events the tool never acted on (perf lost them, or they came late)."""
        return len(self._ring_waiting)


class Router:
    """Delivery for one migrator channel; see the module docstring."""

    def __init__(self, registry: Registry, acting: str = "perf") -> None:
        self.registry = registry
        self.handover = Handover(acting)
        self.compare = PayloadCompare()
        self.acted = {"perf": 0, "ring": 0}
        self.ring_held = 0  # ring copies of records perf refused, delivered (what lost_cb is spared)
        self.channel_now = "perf"  # the channel of the batch being delivered
        self.matches: ActedMatches | None = None
        self.queue: list[np.ndarray] = []
        self.queueing = False  # a reader of decoded batches is there: keep them in `queue`
        self._callback: Callable | None = None
        self._batch_cb: Callable[[np.ndarray], None] | None = None
        # Set aside by route for the next measuring pass: every batch for the payload comparison,
        # with whether there was room to hash it when drained.
        self._to_compare: list[tuple[str, Frames, bool]] = []
        # Per channel this window: records the registry cannot read (acted on or only measured).
        self._parse = {"perf": 0, "ring": 0}
        self._filled = 0  # this window: records perf lost that the ring delivered in perf's place

    def deliver_to(self, callback: Callable | None) -> None:
        """Hand every delivered event to callback(cpu, data, size), data at its payload (None: nobody)."""
        self._callback = callback

    def on_batch(self, callback: Callable[[np.ndarray], None] | None) -> None:
        """Hand every delivered batch to callback as decoded numpy rows (one array per event type)."""
        self._batch_cb = callback

    @property
    def delivers(self) -> bool:
        """Whether batches must reach Python: a callback, a batch handler or reader, or wrap's matching."""
        return (self._callback is not None or self._batch_cb is not None or self.queueing
                or self.matches is not None)

    def route(self, channel: str, frames: Frames, room: bool) -> None:
        """Deliver the records of one drained batch that `channel` owns, counting them; set the batch
        aside for the measuring pass (`room`: whether the buffers leave time to hash its payloads)."""
        self._to_compare.append((channel, frames, room))
        self.deliver(channel, frames, count=True)

    def deliver(self, channel: str, frames: Frames, count: bool = False, owned: int | None = None) -> None:
        """Hand the records of a batch that `channel` owns to the operator's code. count: also count
        them (acted, held, filled); the native loop (loop.c) has counted them already, and says how
        many it found owned (`owned`): all of them or none spares the per-record mask."""
        if owned == 0 and self.matches is None:
            return  # measured only (the other channel acts)
        if (len(self.handover.owners) == 1 and self.handover.acting == channel) or owned == len(frames):
            mine = None  # owner of every seq, and of every one-channel record: all of them
        else:
            # by seq, plus every record that is its only copy (a ring copy of one perf refused)
            mine = self.handover.owned(channel, frames.seq, frames.hdr["flags"])
            if mine.all():
                mine = None
        if self.matches is not None and len(frames):
            self.matches.observe(channel, frames, mine)
        if mine is None:
            batch = frames
        elif not mine.any():  # measured only (the other channel acts): counted, never delivered
            return
        else:
            batch = frames.take(mine)
        if count:
            if channel == "ring":
                held = (batch.hdr["flags"] & FLAG_PERF_LOST) != 0
                if held.any():
                    self.ring_held += int(held.sum())
                    self._filled += int(self.handover.fills(batch.hdr["flags"][held], batch.seq[held]).sum())
            self.acted[channel] += len(batch)
        self.channel_now = channel
        if self._callback is not None:
            cb = self._callback
            cpus, lens = batch.hdr["cpu"].tolist(), batch.hdr["len"].tolist()
            base = batch.buf.ctypes.data
            for i, off in enumerate(batch.off.tolist()):
                cb(cpus[i], base + off, lens[i])
        if self._batch_cb is not None or (self._callback is None and self.queueing):
            # Decoded only for someone: a router with neither callback nor reader only counts.
            for rows in self.registry.decode(batch, count_errors=False).values():
                if self._batch_cb is not None:
                    self._batch_cb(rows)
                else:
                    self.queue.append(rows)

    def count_measured(self, parse_perf: int, parse_ring: int, filled: int) -> None:
        """What the native loop (loop.c) measured at drain time: unreadable records per channel, and
        ring copies delivered in perf's place."""
        self._parse["perf"] += parse_perf
        self._parse["ring"] += parse_ring
        self._filled += filled

    def measure(self, joined: dict[str, np.ndarray]) -> None:
        """A measuring pass over the batches routed since the last one (`joined`: their headers per
        channel): compare payloads, and count the records the registry cannot read."""
        items, self._to_compare = self._to_compare, []
        self.compare.add_many(items)
        if self.registry.types:
            for channel, hdr in joined.items():
                self._parse[channel] += self.registry.check(Frames(hdr, _NO_BYTES, _NO_OFFSETS))

    def close_window(self, ws: list[ChannelWindow]) -> None:
        """Write what delivery learned over the window into its closed windows (and start afresh)."""
        self.registry.take_parse_errors()  # per type, both channels; they restart with the window too
        parse, self._parse = self._parse, {"perf": 0, "ring": 0}
        cmp = self.compare.take()
        filled, self._filled = self._filled, 0
        for w in ws:
            w.parse_errors += parse[w.channel]
            w.extra["acted"] = self.acted[w.channel]
            if w.channel == "perf":
                w.filled_from_ring = filled
            if w.channel == "ring" and cmp.compared:
                w.payload_mismatches += cmp.mismatches
                w.extra["payload_compared"] = cmp.compared
                if cmp.mismatch_seqs:
                    w.extra["payload_mismatch_seqs"] = list(cmp.mismatch_seqs)
            if w.channel == "ring" and cmp.skipped:
                w.extra["payload_skipped"] = cmp.skipped
