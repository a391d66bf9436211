"""Payload checks on the real kernel, through to the controller: ring payloads that differ from
perf's in DUAL, and records of a (type, version) the registry does not know.

One small operator program on syscalls:sys_enter_getppid of this process writes a 40-byte event
per call (MIGRATOR_OUTPUT, or MIGRATOR_OUTPUT_TYPED with a chosen type_version). A Feed reads it
in DUAL or RING; windows are closed by hand, WINDOWS of them with PER_WINDOW events each. The
mismatch is made in userspace: the ring consumer's batches get one payload byte flipped per
record before the Feed sees them, which is what a ring path that corrupts records looks like.
Those windows then go through the agents' write path (api.record_windows) into a real SQLite
store, and the controller judges them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import select

from conftest import T0, RecordingApplier, record
from kernel_util import needs_root
from migrator import load
from migrator.agent.feed import Feed
from migrator.config import load_config
from migrator.control.controller import Controller
from migrator.control.phases import DbApplier, Phase, transition
from migrator.dataplane.schema import Registry
from migrator.store import api, open_store
from migrator.store.models import Migration, Transition, Verdict

pytestmark = [pytest.mark.kernel, needs_root]

PER_WINDOW = 200
WINDOWS = 3  # == rollback_after of the plan below
N = PER_WINDOW * WINDOWS
FAR = 1e9  # window_seconds: the Feed never closes a window by itself here; the tests do

PROGRAM = r"""
#include <migrator.h>

MIGRATOR_CHANNEL(events, 1 << 20);

struct evt { u64 i; u32 tgid; u32 pid; u8 fill[24]; };
BPF_ARRAY(calls, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)(id >> 32) != TARGET_TGID)
        return 0;
    int z = 0;
    u64 *c = calls.lookup(&z);
    if (!c)
        return 0;
    struct evt e = {};
    e.i = __sync_fetch_and_add(c, 1);
    e.tgid = id >> 32;
    e.pid = (u32)id;
    for (int k = 0; k < 24; k++)
        e.fill[k] = (u8)(e.i + k);
    OUTPUT;
    return 0;
}
"""
EVT = np.dtype([("i", "<u8"), ("tgid", "<u4"), ("pid", "<u4"), ("fill", "u1", 24)])
UNTYPED = "MIGRATOR_OUTPUT(events, args, &e, sizeof(e))"


def typed(version: int) -> str:
    return f"MIGRATOR_OUTPUT_TYPED(events, args, &e, sizeof(e), 1, {version})"


def run(output: str, mode: str, *, registry: Registry | None = None, corrupt_ring: bool = False):
    """Load the program, read it with a Feed in `mode`, drive WINDOWS windows of PER_WINDOW events;
    returns (windows, events the feed handed on per channel)."""
    bpf = load(text=PROGRAM.replace("OUTPUT;", output + ";"), cflags=[f"-DTARGET_TGID={os.getpid()}"])
    try:
        feed = Feed(bpf, "events", host="h1", mode=mode, registry=registry, window_seconds=FAR)
        try:
            if corrupt_ring:
                # The fault is made in the ring reader's batches, which only the Python path hands
                # out (the native loop pairs inside C; tests/test_native_loop.py holds it to this path).
                feed.pipe.native = False
                consume = feed.pipe.ring.consume

                def corrupted():
                    frames = consume()
                    frames.buf[frames.off[frames.hdr["len"] > 0]] ^= 0xFF  # first payload byte of each record
                    return frames

                feed.pipe.ring.consume = corrupted
            channels = ("perf", "ring") if mode == "DUAL" else ("ring",)
            for index in range(WINDOWS):
                before = {ch: feed.pipe.delivered_total[ch] for ch in channels}
                for _ in range(PER_WINDOW):
                    os.getppid()
                deadline = time.monotonic() + 10
                while any(feed.pipe.delivered_total[ch] - before[ch] < PER_WINDOW for ch in channels):
                    assert time.monotonic() < deadline, "timed out waiting for the events"
                    feed.poll(10)
                feed.close_window(index)
            return list(feed.windows), dict(feed.acted)
        finally:
            feed.close()
    finally:
        bpf.cleanup()


def by_channel(windows, channel):
    return [w for w in windows if w.channel == channel]


@pytest.fixture(scope="module")
def corrupted_dual():
    """DUAL, the ring's copy of every record corrupted in userspace."""
    return run(UNTYPED, "DUAL", corrupt_ring=True)


@pytest.fixture(scope="module")
def unknown_version_dual():
    """DUAL, every record of type 1 version 99 while the registry knows type 1 version 1 only."""
    reg = Registry()
    reg.register(1, 1, EVT, name="evt")
    return run(typed(99), "DUAL", registry=reg)


# -- (a) payload comparison ------------------------------------------------------------------------

def test_ring_payloads_corrupted_in_userspace_count_one_mismatch_per_event(corrupted_dual):
    windows, acted = corrupted_dual
    ring, perf = by_channel(windows, "ring"), by_channel(windows, "perf")
    assert [w.index for w in ring] == list(range(WINDOWS))
    assert [w.payload_mismatches for w in ring] == [PER_WINDOW] * WINDOWS
    assert sum(w.payload_mismatches for w in ring) == N
    assert [w.extra["payload_compared"] for w in ring] == [PER_WINDOW] * WINDOWS
    assert [w.payload_mismatches for w in perf] == [0] * WINDOWS  # counted on the ring window only
    assert ring[0].extra["payload_mismatch_seqs"] == list(range(8))  # the evidence: the first seqs
    # nothing else is wrong: every event reached the operator once, from perf, nothing lost
    assert acted == {"perf": N, "ring": 0}
    assert all((w.attempts, w.delivered, w.lost, w.dropped, w.parse_errors) == (PER_WINDOW, PER_WINDOW, 0, 0, 0)
               for w in windows)


def test_untouched_dual_payloads_all_match():
    windows, _ = run(UNTYPED, "DUAL")
    ring = by_channel(windows, "ring")
    assert [(w.payload_mismatches, w.extra["payload_compared"]) for w in ring] == [(0, PER_WINDOW)] * WINDOWS


# -- (b) unknown type_version ------------------------------------------------------------------------

def test_unknown_type_version_counts_parse_errors_on_the_acting_channel_and_the_measured_ring(unknown_version_dual):
    windows, acted = unknown_version_dual
    assert acted == {"perf": N, "ring": 0}  # perf acts in DUAL: its records were handed on, unreadable
    assert [w.parse_errors for w in by_channel(windows, "perf")] == [PER_WINDOW] * WINDOWS
    # the ring is only measured in DUAL, and its windows are the ones the policy judges
    assert [w.parse_errors for w in by_channel(windows, "ring")] == [PER_WINDOW] * WINDOWS
    assert all(w.payload_mismatches == 0 for w in windows)


def test_unknown_type_version_in_ring_mode_counts_on_the_ring():
    reg = Registry()
    reg.register(1, 1, EVT, name="evt")
    windows, acted = run(typed(99), "RING", registry=reg)
    assert acted == {"perf": 0, "ring": N}
    assert [w.parse_errors for w in by_channel(windows, "ring")] == [PER_WINDOW] * WINDOWS
    assert [w.parse_errors for w in by_channel(windows, "perf")] == [0] * WINDOWS


def test_known_type_version_counts_no_parse_errors():
    reg = Registry()
    reg.register(1, 1, EVT, name="evt")
    windows, _ = run(typed(1), "DUAL", registry=reg)
    assert [w.parse_errors for w in windows] == [0] * (2 * WINDOWS)


# -- (c) through the controller --------------------------------------------------------------------

def migration(toml_file, phases):
    cfg = load_config(toml_file(f'hosts = ["h1"]\nslices = [1]\nrollback_after = {WINDOWS}\n'))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp", now=T0).id
    for phase in phases:
        transition(sf, mid, phase, applier=DbApplier(), clock=lambda: T0)
    return sf, mid, Controller(sf, mid, applier=RecordingApplier(), clock=lambda: T0)


def feed_windows(sf, mid, ctl, windows):
    """Record each index's kernel windows (moved onto the test clock) and judge it; returns the
    ring window ids and the step results."""
    ring_ids, results = [], []
    for i in range(WINDOWS):
        with sf() as s, s.begin():
            for w in windows:
                if w.index == i:
                    # emit cost is timed for real: on a loaded machine the ring's may pass 4x perf's
                    # and breach producer_cost too; these tests judge the payload rules alone
                    wid = record(s, mid, replace(w, start=T0 + 10 + i, end=T0 + 11 + i, producer_ns=None))
                    if w.channel == "ring":
                        ring_ids.append(wid)
        with sf() as s, s.begin():
            results.append(ctl.step(s, T0 + 1000))
    return ring_ids, results


def test_parse_errors_from_the_kernel_roll_back_after_exactly_rollback_after_windows(toml_file, unknown_version_dual):
    windows, _ = unknown_version_dual
    sf, mid, ctl = migration(toml_file, [Phase.DUAL_INSTRUMENT])
    ring_ids, res = feed_windows(sf, mid, ctl, windows)
    assert [[(g.verdict, g.rule) for g in r.judged] for r in res] == [[("breach", "h1: parse_errors")]] * WINDOWS
    assert [r.target for r in res] == [None] * (WINDOWS - 1) + ["ROLLED_BACK"]
    with sf() as s:
        t = s.get(Transition, res[-1].transition_id)
        assert (t.status, t.actor, t.from_phase, t.to_phase) == ("intent", "auto", "DUAL_INSTRUMENT", "ROLLED_BACK")
        assert json.loads(t.window_ids) == ring_ids and len(ring_ids) == WINDOWS
        assert t.reason == f"{WINDOWS} consecutive breaching windows in DUAL_INSTRUMENT; last: h1: parse_errors"
        hv = s.scalars(select(Verdict).where(Verdict.migration_id == mid, Verdict.scope == "host")
                       .order_by(Verdict.index)).all()
        assert [(v.window_id, v.rule, json.loads(v.values)["parse_errors"]) for v in hv] == \
            [(i, "parse_errors", PER_WINDOW) for i in ring_ids]
    ctl.finish()
    with sf() as s:
        assert s.get(Migration, mid).phase == "ROLLED_BACK"
        assert [h["to"] for h in api.history(s, mid)] == ["DUAL_INSTRUMENT", "ROLLED_BACK"]


def test_payload_mismatches_from_the_kernel_breach_shadow_with_rule_payload_mismatch(toml_file, corrupted_dual):
    windows, _ = corrupted_dual
    sf, mid, ctl = migration(toml_file, [Phase.DUAL_INSTRUMENT, Phase.SHADOW])
    ring_ids, res = feed_windows(sf, mid, ctl, windows)
    assert [[(g.verdict, g.rule) for g in r.judged] for r in res] == [[("breach", "h1: payload_mismatch")]] * WINDOWS
    assert [r.target for r in res] == [None] * (WINDOWS - 1) + ["ROLLED_BACK"]
    with sf() as s:
        t = s.get(Transition, res[-1].transition_id)
        assert (t.from_phase, t.to_phase, json.loads(t.window_ids)) == ("SHADOW", "ROLLED_BACK", ring_ids)
        hv = s.scalars(select(Verdict).where(Verdict.migration_id == mid, Verdict.scope == "host")
                       .order_by(Verdict.index)).all()
        assert [(v.rule, json.loads(v.values)["payload_mismatches"]) for v in hv] == \
            [("payload_mismatch", PER_WINDOW)] * WINDOWS
