"""Exactly once downstream: an operator-style program with mixed record sizes, switched
PERF -> DUAL -> RING -> PERF -> RING under load, delivers every event once through the library."""
from __future__ import annotations

import ctypes as ct
import io
import time

import numpy as np
import pytest

from kernel_util import needs_root
from migrator import attach, load
from migrator.dataplane.loadgen import LoadGen
from migrator.shared.resources import bpf_dir

pytestmark = [pytest.mark.kernel, needs_root]

RATE = 200_000
N = 400_000
SWITCHES = ("DUAL", "RING", "PERF", "RING")


def test_mixed_sizes_switched_under_load_are_delivered_exactly_once():
    # bpf/mixed.bpf.c: an operator-style program with its own struct and id counter, sizes 24..4096
    bpf = load(src_file=str(bpf_dir() / "mixed.bpf.c"), cflags=[f"-DRING_BYTES={1 << 26}"])
    feed = attach(bpf, "events", mode="PERF", perf_pages=4096)  # 16 MiB per CPU: ~200 ms of this stream
    seen: list[int] = []
    sizes_ok = [0]

    def handle(cpu, data, size):  # bcc's callback shape, payload pointer and size
        head = ct.cast(data, ct.POINTER(ct.c_uint64 * 2)).contents
        seen.append(head[0])
        sizes_ok[0] += (head[1] & 0xFFFFFFFF) == size

    feed.open_perf_buffer(handle)
    try:
        gen = LoadGen(N, rate=RATE)
        bpf["target_tgid"][ct.c_int(0)] = ct.c_uint32(gen.pid)
        gen.start()
        t0 = time.monotonic()
        cuts = []
        for k, mode in enumerate(SWITCHES, start=1):
            while time.monotonic() < t0 + 0.35 * k:
                feed.poll(5)
            feed.set_mode(mode)
            cuts.append((mode, feed.channel.next_seq))
        while gen.running():
            feed.poll(5)
        assert gen.wait(timeout=10) == 0
        deadline = time.monotonic() + 10
        while len(seen) < N and time.monotonic() < deadline:
            feed.poll(5)
        feed.consume()
        counters = feed.channel.counters()
        windows = feed.close_window()
    finally:
        feed.close()
        bpf.cleanup()
    # the kernel refused nothing on either channel (buffers sized for the rate), so downstream
    # must have every event: each id once, none missing
    for ch in ("perf", "ring"):
        assert (counters[ch].full, counters[ch].other) == (0, 0), ch
    ids = np.asarray(seen, dtype=np.int64)
    assert len(ids) == N
    assert np.array_equal(np.sort(ids), np.arange(N))
    assert sizes_ok[0] == N  # the size handed to the callback is the payload's own size
    # every switch of the acting channel passed through DUAL and cut at a seq
    assert [m for m, _ in cuts] == list(SWITCHES)
    assert feed.handover.owners == ["perf", "ring", "perf", "ring"]
    assert feed.acted["perf"] + feed.acted["ring"] == N
    assert 0 < feed.acted["ring"] < N
    assert {w.channel for w in windows} == {"perf", "ring"}
    out = io.StringIO()
    feed.report(out)  # the standalone comparison an operator can print at exit
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["host", "win", "chan", "mode"]
    assert lines[-1] == f"local: acted on {feed.acted['perf']} events from perf and {feed.acted['ring']} from ring"
