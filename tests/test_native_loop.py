"""The hot loop in C (loop.c) against its Python reference: the same stream, the same books.

Each case runs one real stream twice, once through the native loop and once through the Python
path of Pipeline.poll/drain (native=False), and compares every count a window's books hold: what
the kernel wrote, what was delivered and acted on, what was compared, the seq range, the
ordering. Lags differ run to run; counts may not.
"""
import os
import select
import threading
import time

import pytest

from kernel_util import collect, needs_root
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.native_loop import slot_names
from migrator.dataplane.pipeline import Pipeline
from migrator.dataplane.router import Router
from migrator.dataplane.schema import demo_registry

pytestmark = [pytest.mark.kernel, needs_root]
N = 30_000


def _books(native: bool, switch_at: int | None = None, callback: bool = False, planted: int = 0,
           rate: float = 300_000) -> dict:
    """Run N synthetic events in DUAL (perf acting; with switch_at, cut over to the ring after that
    many); return the closed window's counts per channel and what the callback saw. planted: that
    many seqs from 0 wait in the comparison's table as ring copies with a wrong digest, so their
    perf copies mismatch."""
    seen: list[int] = []
    with Probe("synthetic") as probe:
        router = Router(demo_registry())
        pipe = Pipeline(probe, perf_pages=256, router=router, native=native)
        if callback:
            import ctypes as ct

            router.deliver_to(lambda cpu, data, size: seen.append(ct.c_uint64.from_address(data - 16).value))
        if planted:
            cmp = router.compare
            cmp._alloc()
            slots = [q & (cmp.capacity - 1) for q in range(planted)]
            cmp._seq[slots], cmp._dig[slots], cmp._side[slots] = list(range(planted)), 12345, 2
            # the ring is read only once perf has delivered everything: a ring copy read first would
            # take its planted slot (timing), so every perf copy finds its planted pair
            pipe.stall_ring_until = time.monotonic() + 60
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(N, rate=rate)
            probe.set_target(gen.pid)
            gen.start()
            if switch_at is not None:
                collect(pipe, lambda: probe.counters()["perf"].attempts >= switch_at)
                router.handover.cut(probe.channel.next_seq, "ring")
            collect(pipe, lambda: not gen.running())
            assert gen.wait(timeout=10) == 0
            if planted:
                collect(pipe, lambda: pipe.delivered_total["perf"] + probe.counters()["perf"].full == N)
                pipe.stall_ring_until = 0.0

            def drained():
                c = probe.counters()
                return all(pipe.delivered_total[ch] + c[ch].full + c[ch].other == N for ch in c)

            collect(pipe, drained)
            ws = {w.channel: w for w in pipe.close_window()}
            acted = dict(router.acted)
        finally:
            pipe.close()
    out = {}
    for ch, w in ws.items():
        out[ch] = {"attempts": w.attempts, "delivered": w.delivered, "dropped": w.dropped, "lost": w.lost,
                   "in_flight": w.in_flight, "residual": w.residual, "parse_errors": w.parse_errors,
                   "mismatches": w.payload_mismatches, "inversions": w.inversions,
                   "seq": (w.extra["seq_min"], w.extra["seq_max"]), "acted": acted[ch],
                   "compared+skipped": w.extra.get("payload_compared", 0) + w.extra.get("payload_skipped", 0),
                   "evidence": w.extra.get("payload_mismatch_seqs")}
    out["callback"] = sorted(seen)
    return out


def test_native_loop_keeps_the_books_of_the_python_path():
    native, python = _books(True), _books(False)
    # perf has no order across CPUs: its inversions depend on where the generator ran; what was
    # compared or skipped depends on whether a drain found a buffer a quarter full (timing)
    for books in (native, python):
        assert books["ring"]["inversions"] == 0
        books["perf"].pop("inversions")
        assert books["ring"].pop("compared+skipped") > 0
        books["perf"].pop("compared+skipped")
    assert native == python
    for ch in ("perf", "ring"):
        assert native[ch]["attempts"] == native[ch]["delivered"] == N
        assert native[ch]["residual"] == native[ch]["mismatches"] == native[ch]["parse_errors"] == 0
    assert (native["perf"]["acted"], native["ring"]["acted"]) == (N, 0)


def test_native_pairing_finds_what_the_python_path_finds():
    # a slower stream: the first drain has room to compare (a consumer behind only counts skips)
    native, python = _books(True, planted=20, rate=50_000), _books(False, planted=20, rate=50_000)
    assert native["ring"]["mismatches"] == python["ring"]["mismatches"] == 20
    assert native["ring"]["evidence"] == python["ring"]["evidence"] == list(range(8))


def test_native_loop_delivers_each_event_once_across_a_cut():
    native = _books(True, switch_at=N // 3, callback=True)
    python = _books(False, switch_at=N // 3, callback=True)
    assert native["callback"] == list(range(N)) == python["callback"]
    assert native["perf"]["acted"] + native["ring"]["acted"] == N
    assert python["perf"]["acted"] + python["ring"]["acted"] == N


def test_one_call_drains_many_times_without_python():
    """A pipeline nobody acts on in-process stays in C for the whole timeout: one call, many drains."""
    with Probe("synthetic") as probe:
        pipe = Pipeline(probe, batch_interval=0.005)
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(N, rate=50_000)  # 0.6 s of events
            probe.set_target(gen.pid)
            gen.start()
            collect(pipe, lambda: pipe.delivered_total["perf"] > 0)  # the stream flows
            runs, drains = pipe._native.runs, pipe._native.drains
            got = pipe.poll(timeout=0.3)
            runs, drains = pipe._native.runs - runs, pipe._native.drains - drains
        finally:
            gen.wait(timeout=10)
            pipe.close()
    assert runs == 1  # one call into C...
    assert drains > 1 and got > 0  # ...which drained several times on the batch clock


def test_slot_names_are_unique():
    names = slot_names()
    assert len(names) == len(set(names)) and {"n_p", "drains", "last_first_r"} <= set(names)


def test_a_wake_fd_ends_the_wait_while_records_flow():
    """A new desired mode must not wait for the caller's timeout while records keep the loop busy."""
    with Probe("synthetic") as probe:
        pipe = Pipeline(probe, batch_interval=0.005)
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        pipe.add_wake_fd(fd)
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(400_000, rate=100_000)  # 4 s of records: longer than the bound below
            probe.set_target(gen.pid)
            gen.start()
            collect(pipe, lambda: pipe.delivered_total["perf"] > 0)
            written: list[float] = []

            def write() -> None:
                written.append(time.monotonic())
                os.eventfd_write(fd, 1)

            timer = threading.Timer(0.2, write)
            timer.start()
            deadline = time.monotonic() + 10
            # until a poll has read the write (a poll may also end early: records after a quiet spell)
            while not written or select.select([fd], [], [], 0)[0]:
                assert time.monotonic() < deadline
                pipe.poll(timeout=5.0)
            waited = time.monotonic() - written[0]
            timer.join()
        finally:
            gen.kill()
            pipe.close()
            os.close(fd)
    assert waited < 1.0  # woken by the write (room for a busy machine), not by the 5 s timeout or the stream's end
