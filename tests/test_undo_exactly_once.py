"""The library's exactly-once test through `undo`: a process serving its host in a COMPLETE
migration (RING) is put back on PERF by `migrator undo` while events flow, and delivers every
event once across the switch (the channel header still writes perf after COMPLETE)."""
from __future__ import annotations

import ctypes as ct
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator import attach, load
from migrator.cli import app
from migrator.control.moves import manual_move
from migrator.control.phases import DbApplier
from migrator.dataplane.loadgen import LoadGen
from migrator.shared.resources import bpf_dir
from migrator.store import open_store
from migrator.store.models import Host, Transition

pytestmark = [pytest.mark.kernel, needs_root]

RATE = 100_000
N = 300_000
PLAN = ('hosts = ["h1"]\nslices = [1]\nwindow_seconds = 0.5\n'
        "[phases.dual_instrument]\nmin_clean_windows = 0\n[phases.shadow]\nmin_clean_windows = 0\n"
        "[phases.canary]\nmin_clean_windows = 0\n")


def test_undo_from_complete_switches_a_ring_host_to_perf_exactly_once(tmp_path):
    cfg = tmp_path / "canary.toml"
    cfg.write_text(PLAN)
    assert CliRunner().invoke(app, ["init", str(cfg)]).exit_code == 0
    sf = open_store(f"sqlite:///{tmp_path / 'migrator.db'}")
    for _ in range(4):  # DUAL_INSTRUMENT, SHADOW, CANARY 1/1, COMPLETE: h1 desired RING
        manual_move(sf, 1, "advance", applier=DbApplier(), schema_fingerprint="fp")
    with sf() as s:
        assert s.get(Host, 1).desired_mode == "RING"

    bpf = load(src_file=str(bpf_dir() / "mixed.bpf.c"), cflags=[f"-DRING_BYTES={1 << 26}"])
    feed = attach(bpf, "events", config=cfg, host="h1", migration_id=1, perf_pages=4096)
    seen: list[int] = []

    def handle(cpu, data, size):
        seen.append(ct.cast(data, ct.POINTER(ct.c_uint64 * 2)).contents[0])

    feed.open_perf_buffer(handle)
    try:
        deadline = time.monotonic() + 10
        while feed.mode != "RING":  # COMPLETE: the host follows the database to RING
            feed.poll(5)
            assert time.monotonic() < deadline, feed.mode
        gen = LoadGen(N, rate=RATE)
        bpf["target_tgid"][ct.c_int(0)] = ct.c_uint32(gen.pid)
        gen.start()
        t0 = time.monotonic()
        while time.monotonic() < t0 + 1.0:  # a second of events on the ring
            feed.poll(5)
        t = manual_move(sf, 1, "undo", reason="ring regressed after rollout", applier=DbApplier())
        assert (t["from"], t["to"], t["actor"]) == ("COMPLETE", "ROLLED_BACK", "manual")
        deadline = time.monotonic() + 10
        while feed.mode != "PERF":
            feed.poll(5)
            assert time.monotonic() < deadline, feed.mode
        while gen.running():
            feed.poll(5)
        assert gen.wait(timeout=10) == 0
        deadline = time.monotonic() + 10
        while len(seen) < N and time.monotonic() < deadline:
            feed.poll(5)
        feed.consume()
        counters = feed.channel.counters()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the host's report of PERF reaches the database
            feed.poll(5)
            with sf() as s:
                if s.get(Host, 1).applied_mode == "PERF":
                    break
    finally:
        feed.close()
        bpf.cleanup()
    for ch in ("perf", "ring"):
        assert (counters[ch].full, counters[ch].other) == (0, 0), ch
    ids = np.asarray(seen, dtype=np.int64)
    assert len(ids) == N
    assert np.array_equal(np.sort(ids), np.arange(N))  # each event once, none missing, across undo
    assert feed.handover.owners[-2:] == ["ring", "perf"]
    assert 0 < feed.acted["ring"] < N and feed.acted["perf"] > 0
    with sf() as s:
        h = s.get(Host, 1)
        assert (h.desired_mode, h.applied_mode) == ("PERF", "PERF")
        row = s.get(Transition, t["id"])
        assert (row.from_phase, row.to_phase, row.actor, row.reason, row.status) == (
            "COMPLETE", "ROLLED_BACK", "manual", "ring regressed after rollout", "confirmed")
