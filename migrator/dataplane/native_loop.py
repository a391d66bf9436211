"""The pipeline's hot loop in C (loop.c): its slot array, and how it meets the Python objects.

A NativeLoop serves one Pipeline. Before each call into C it writes what C reads (the buffers'
addresses, the meters' state, the handover's cuts, the registry's kinds, the wait policy) into
one int64 array whose slot names C gives (mg_loop_slots); after it, it adds what C counted (records,
bytes, acted, parse errors, pairs compared, CPU) to the same Python objects the Python path
updates, and clears those slots. So a window's books are written by one code either way, and the
Python path (Pipeline with native=False) stays the reference the tests hold this loop to.

Between two calls C waits and drains by itself: a pipeline nobody acts on in-process enters
Python only for its owner's duties (a window's close, a wake fd, the caller's timeout); one that
delivers to a callback enters it once per drain, to deliver.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from migrator.dataplane.frames import HDR_DTYPE
from migrator.dataplane.native import addr, frames_of, lib
from migrator.dataplane.readers.perf import MIN_SAMPLE
from migrator.dataplane.readers.ring import MIN_RECORD
from migrator.dataplane.windows import _NBINS
from migrator.shared.vocab import WORD_READER_SLEEPS

if TYPE_CHECKING:
    from migrator.dataplane.pipeline import Pipeline

RUN_TIMEOUT, RUN_WAKE, RUN_SIGNAL, RUN_DELIVER = range(4)
_CODES = {"perf": 1, "ring": 2}
_EVIDENCE = 8


def slot_names() -> list[str]:
    """The loop's slots, in order, as loop.c names them."""
    return [n for n in lib().mg_loop_slots().decode().split(",") if n]


def _meter_state(m) -> tuple:  # noqa: ANN001 -- a windows.ChannelMeter
    """A meter's state as loop.c holds it (st_p / st_r): -1 for a seq not seen yet."""
    return (m.max_seq, m.inversions, m.lag_max_ns, -1 if m.seq_min is None else m.seq_min,
            -1 if m.seq_max is None else m.seq_max, m.delivered)


class NativeLoop:
    """loop.c's state for one pipeline; see the module docstring."""

    def __init__(self, pipe: "Pipeline") -> None:
        self.pipe = pipe
        names = slot_names()
        self.ix = {n: i for i, n in enumerate(names)}
        self.L = np.zeros(len(names), np.int64)
        self._at = addr(self.L)
        self._results = slice(self.ix["n_p"], self.ix["waits"] + 1)
        self._lib = lib()
        ring = pipe.ring
        ix, L = self.ix, self.L
        L[ix["ring_data"]], L[ix["ring_mask"]] = ring._data_addr, ring.mask
        L[ix["ring_cons"]], L[ix["ring_prod"]], L[ix["ring_cap"]] = ring._cons_addr, ring._prod_addr, ring.size
        L[ix["epfd"]], L[ix["wake_epfd"]] = pipe._ep.fileno(), pipe._wake_ep.fileno()
        L[ix["nbins"]] = _NBINS
        from migrator.dataplane.pipeline import MIN_STEP_S, PRODUCER_CEILING_BPS, TRICKLE

        L[ix["trickle"]], L[ix["ceiling_bps"]], L[ix["min_step_ns"]] = TRICKLE, PRODUCER_CEILING_BPS, MIN_STEP_S * 1e9
        L[ix["sleep_bit"]] = WORD_READER_SLEEPS
        mode_map = getattr(pipe.source, "mode_map", None)
        if mode_map is not None:
            L[ix["mode_fd"]], L[ix["mode_size"]] = mode_map()
        self._st = np.zeros((2, 6), np.int64)  # the meters' state (windows.py ChannelMeter), per channel
        L[ix["st_p"]], L[ix["st_r"]] = addr(self._st[0]), addr(self._st[1])
        L[ix["epoch_p"]], L[ix["epoch_r"]] = addr(pipe._by_epoch["perf"]), addr(pipe._by_epoch["ring"])
        self._evidence = np.zeros(_EVIDENCE, np.int64)
        L[ix["evidence"]] = addr(self._evidence)
        self._buf_r = np.empty(ring.size, np.uint8)
        L[ix["buf_r"]], L[ix["buf_cap_r"]] = addr(self._buf_r), ring.size
        self._perf = None
        self._cuts_of: tuple | None = None
        self._kinds_of: int | None = None
        self._wakes_of: frozenset | None = None
        self._table_of = None
        self._announce = L[ix["mode_fd"]] > 0  # the sleep bit can be announced: there is a mode map
        self._scalar_ix = np.asarray([ix[n] for n in self._SCALARS], np.intp)
        self._hists: tuple = (None, None)
        self._synced: tuple | None = None  # _python_state() as last written to C (None: never)
        # calls into C's loop, the drains they made (drain() included) and their epoll waits
        self.runs = self.drains = self.waits = 0

    # -- what C reads --------------------------------------------------------------------------
    def _bind_perf(self) -> None:
        """The perf consumer's buffers (again after a re-size), and drain buffers for both channels."""
        perf, ring, ix, L = self.pipe.perf, self.pipe.ring, self.ix, self.L
        self._perf = perf
        L[ix["perf_pages"]], L[ix["perf_off"]] = perf._pages_addr, perf._offs_addr
        L[ix["perf_size"]], L[ix["perf_heads"]] = perf._sizes_addr, perf._heads_addr
        L[ix["ncpu"]], L[ix["perf_cap"]] = len(perf.fds()), perf.capacity_per_cpu()
        perf_bytes = len(perf.fds()) * perf.capacity_per_cpu()
        rows = max(perf_bytes // MIN_SAMPLE, ring.size // MIN_RECORD) + 1
        self._buf_p = np.empty(perf_bytes, np.uint8)
        self._hdr = (np.empty(rows, HDR_DTYPE), np.empty(rows, HDR_DTYPE))
        self._off = (np.empty(rows, np.int64), np.empty(rows, np.int64))
        self._scratch = np.empty(rows, np.uint8)
        L[ix["buf_p"]], L[ix["rows_cap"]], L[ix["scratch"]] = addr(self._buf_p), rows, addr(self._scratch)
        L[ix["hdr_p"]], L[ix["hdr_r"]] = addr(self._hdr[0]), addr(self._hdr[1])
        L[ix["off_p"]], L[ix["off_r"]] = addr(self._off[0]), addr(self._off[1])

    def _bind_router(self) -> None:
        """The handover's cuts, the registry's kinds and the comparison's table, when they changed."""
        router, ix, L = self.pipe.router, self.ix, self.L
        if router is None:  # measure only: nobody acts, nothing is compared or checked
            L[ix["ncuts"]] = L[ix["nkinds"]] = L[ix["tmask"]] = 0
            if self._cuts_of is None:
                self._owners = np.array([1], np.uint8)
                L[ix["owners"]] = addr(self._owners)
                self._cuts_of = ()
            return
        h = router.handover
        if self._cuts_of != (len(h.cuts), h.owners[-1]):
            self._cuts = np.asarray(h.cuts, np.uint64)
            self._owners = np.asarray([_CODES[o] for o in h.owners], np.uint8)
            L[ix["ncuts"]], L[ix["cuts"]], L[ix["owners"]] = len(self._cuts), addr(self._cuts), addr(self._owners)
            self._cuts_of = (len(h.cuts), h.owners[-1])
        reg = router.registry
        n = sum(len(t.versions) for t in reg.types.values())
        if n != self._kinds_of:
            kinds = [(tid | v << 16, t.min_size(v)) for tid, t in reg.types.items() for v in t.versions]
            self._kinds = np.asarray([k for k, _ in kinds], np.uint32)
            self._mins = np.asarray([m for _, m in kinds], np.uint32)
            L[ix["nkinds"]], L[ix["kinds"]], L[ix["min_sizes"]] = len(kinds), addr(self._kinds), addr(self._mins)
            self._kinds_of = n
        cmp = router.compare
        if cmp._side is None:
            # C cannot allocate it mid-drain, and a DUAL record may come at any time. Zeroed pages are
            # mapped on first touch: a feed that never sees one pays address space, not memory.
            cmp._alloc()
        if self._table_of is not cmp._side:
            L[ix["tseq"]], L[ix["tdig"]], L[ix["tside"]] = addr(cmp._seq), addr(cmp._dig), addr(cmp._side)
            L[ix["tmask"]] = cmp.capacity - 1
            self._table_of = cmp._side
        L[ix["max_evidence"]] = max(0, min(_EVIDENCE, cmp.EVIDENCE - len(cmp.counts.mismatch_seqs)))
        L[ix["deliver"]] = int(router.delivers)

    def _sync_in(self) -> None:
        p, ix, L = self.pipe, self.ix, self.L
        if p._pending:  # batches the Python path drained: measured first, in order
            p.flush_measure()
        if p.perf is not self._perf:
            self._bind_perf()
        self._bind_router()
        if self._wakes_of != p._wake_fds:
            self._wakes = np.asarray(sorted(p._wake_fds), np.int32)
            L[ix["nwake"]], L[ix["wake_fds"]] = len(self._wakes), addr(self._wakes)
            self._wakes_of = frozenset(p._wake_fds)
        state = self._python_state()
        if state == self._synced:
            return  # what C holds is what Python holds: the usual call (nothing but C changed it)
        self._synced = state
        self._st[0], self._st[1] = state[0], state[1]
        hists = (p.meters["perf"].hist, p.meters["ring"].hist)
        if hists[0] is not self._hists[0] or hists[1] is not self._hists[1]:
            self._hists = hists  # held here: their ids in the state cannot be reused meanwhile
            L[ix["hist_p"]], L[ix["hist_r"]] = addr(hists[0]), addr(hists[1])
        L[self._scalar_ix] = state[4:]

    # The pipeline's settings and state C reads, in the order of _python_state()'s scalars.
    _SCALARS = ("batch_ns", "records_wake", "drain_on_wake", "announce_sleep", "timer_until", "stall_until",
                "watch_p", "watch_r", "idle", "last_drain", "rate_p", "rate_r")

    def _python_state(self) -> tuple:
        """What C reads of the pipeline and its meters, as Python holds it now (the meters' state,
        their histograms' ids, then _SCALARS)."""
        p = self.pipe
        mp, mr = p.meters["perf"], p.meters["ring"]
        watch, first = p.watch_first, p.first_after
        return (_meter_state(mp), _meter_state(mr), id(mp.hist), id(mr.hist),
                int(p.batch_interval * 1e9), p._records_wake, p.drain_on_wake,
                p.announce_sleep and self._announce, int(p._timer_until * 1e9), int(p.stall_ring_until * 1e9),
                watch.get("perf") is not None and first.get("perf") is None,
                watch.get("ring") is not None and first.get("ring") is None,
                p._idle, int(p._last_drain * 1e9), p._rate["perf"], p._rate["ring"])

    # -- what C counted --------------------------------------------------------------------------
    def _sync_out(self) -> int:
        p, ix, L = self.pipe, self.ix, self.L
        if not L[ix["drains"]]:  # a quiet call: nothing was taken, only waits counted
            self.waits += int(L[ix["waits"]])
            L[ix["waits"]] = 0
            return 0
        r = L.tolist()
        p._idle, p._last_drain = bool(r[ix["idle"]]), r[ix["last_drain"]] / 1e9
        p._rate = {"perf": float(r[ix["rate_p"]]), "ring": float(r[ix["rate_r"]])}
        st = self._st.tolist()
        n = 0
        for row, ch, cons, sfx in ((0, "perf", p.perf, "_p"), (1, "ring", p.ring, "_r")):
            m = p.meters[ch]
            m.max_seq, m.inversions, m.lag_max_ns, lo, hi, m.delivered = st[row]
            m.seq_min, m.seq_max = (lo, hi) if lo >= 0 else (None, None)
            m.cpu_s += r[ix["cpu" + sfx]] / 1e9
            got = r[ix["n" + sfx]]
            n += got
            if got:
                cons.consumed += got
                p.delivered_total[ch] += got
            cons.consumed_bytes += r[ix["bytes" + sfx]]
            cons.parse_errors += r[ix["err" + sfx]]
            cons.peak_bytes = max(cons.peak_bytes, r[ix["peak" + sfx]])
            if r[ix["first" + sfx]] and p.first_after.get(ch) is None and p.watch_first.get(ch) is not None:
                p.first_after[ch] = r[ix["first" + sfx]] / 1e9
        p.perf.lost_reported += r[ix["lost"]]
        router = p.router
        if router is not None:
            router.acted["perf"] += r[ix["acted_p"]]
            router.acted["ring"] += r[ix["acted_r"]]
            router.ring_held += r[ix["held"]]
            router.count_measured(r[ix["parse_p"]], r[ix["parse_r"]], r[ix["filled"]])
            cmp = router.compare
            c = cmp.counts
            c.compared += r[ix["compared"]]
            c.mismatches += r[ix["mismatches"]]
            c.skipped += r[ix["skipped"]]
            cmp.unpaired_evicted += r[ix["evicted"]]
            if r[ix["found"]]:
                c.mismatch_seqs += tuple(self._evidence[:r[ix["found"]]].tolist())
        self.drains += r[ix["drains"]]
        self.waits += r[ix["waits"]]
        self.L[self._results] = 0
        self._synced = None  # C moved the state on: the next call writes it again (cheap next to a drain)
        return n

    def _deliver(self) -> None:
        """Hand the last drain's batches (still in this loop's buffers) to the router's delivery, once."""
        ix, L = self.ix, self.L
        if not L[ix["deliver"]]:
            return
        for row, ch, buf, sfx in ((0, "perf", self._buf_p, "_p"), (1, "ring", self._buf_r, "_r")):
            n = int(L[ix["last_n" + sfx]])
            if n:
                L[ix["last_n" + sfx]] = 0
                frames = frames_of(buf, self._hdr[row], self._off[row], n, int(L[ix["last_stride" + sfx]]),
                                   int(L[ix["last_first" + sfx]]))
                self.pipe.router.deliver(ch, frames, owned=int(L[ix["last_acted" + sfx]]))

    # -- the calls ---------------------------------------------------------------------------------
    def drain(self) -> int:
        """One drain of both channels, measured (and delivered, when someone acts here)."""
        self._sync_in()
        self._lib.mg_loop_drain(self._at)
        n = self._sync_out()
        self._deliver()
        return n

    def run(self, timeout: float) -> int:
        """Wait and drain for up to `timeout` s (less: a wake fd, a signal, a batch to deliver);
        returns the records drained."""
        self._sync_in()
        self.runs += 1
        rc = self._lib.mg_loop_run(self._at, int(timeout * 1e9))
        n = self._sync_out()
        self._deliver()  # C returns after any drain that holds records for the owner (L[deliver])
        if rc == RUN_WAKE:
            self.pipe._clear_wakes(self.pipe._ep.poll(0))
        return n


__all__ = ["NativeLoop", "slot_names", "RUN_TIMEOUT", "RUN_WAKE", "RUN_SIGNAL", "RUN_DELIVER"]
