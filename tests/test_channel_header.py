"""bpf/migrator.h on the real kernel: two channels in one program, read with bcc's own readers.

Program A: `var` (MIGRATOR_OUTPUT, run-time size 8 + i % 200 from a per-CPU buffer) and `fix`
(MIGRATOR_RESERVE / SUBMIT of a fixed struct, every 10th call discarded), both on
syscalls:sys_enter_getppid of this process. Program B (-DMIGRATOR_MAX_PAYLOAD=64): `tiny` and
`small`, 4096-byte rings, for full rings, the DUAL fallback and truncation.
"""
from __future__ import annotations

import dataclasses

import os
import time

import pytest

from kernel_util import needs_root
from migrator.dataplane.channel import (COUNTERS, FLAG_RESERVED, FLAG_TRUNCATED, HDR_SIZE, N_COUNTERS, Channel,
                                        header, load, map_max_entries, payload, payload_ptr)
from migrator.dataplane.counters import Counters, PercpuSums
from migrator.errors import BPFLoadError, ChannelError, OptionError
from migrator.shared.vocab import MODE_VALUES

pytestmark = [pytest.mark.kernel, needs_root]

N = 600
PERF_PAGES = 128  # per CPU: room for every record of a phase, so nothing is lost on perf

PROG_A = r"""
#include <migrator.h>

MIGRATOR_CHANNEL(var, 1 << 20);
MIGRATOR_CHANNEL(fix, 1 << 20);

struct var_evt { u64 i; u8 fill[200]; };
struct fix_evt { u64 i; u32 tgid; u32 pid; char comm[16]; };

BPF_PERCPU_ARRAY(vbuf, struct var_evt, 1);
BPF_ARRAY(calls, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)(id >> 32) != TARGET_TGID)
        return 0;
    int z = 0;
    u64 *c = calls.lookup(&z);
    struct var_evt *v = vbuf.lookup(&z);
    if (!c || !v)
        return 0;
    u64 i = __sync_fetch_and_add(c, 1);
    v->i = i;
    for (int k = 0; k < 200; k++)
        v->fill[k] = (u8)(i + k);
    MIGRATOR_OUTPUT(var, args, v, 8 + (i % 200));

    MIGRATOR_RESERVE(fix, struct fix_evt, e);
    if (!e)
        return 0;
    e->i = i;
    e->tgid = id >> 32;
    e->pid = (u32)id;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    if (i % 10 == 9) {
        MIGRATOR_DISCARD(fix, e);
        return 0;
    }
    MIGRATOR_SUBMIT(fix, args, e);
    return 0;
}
"""

PROG_B = r"""
#include <migrator.h>

MIGRATOR_CHANNEL(tiny, 4096);
MIGRATOR_CHANNEL(small, 4096);

struct tiny_evt { u64 i; u64 a; u64 b; u64 c; };
struct small_buf { u8 b[128]; };

BPF_PERCPU_ARRAY(sbuf, struct small_buf, 1);
BPF_ARRAY(calls, u64, 1);
BPF_ARRAY(enable, u32, 1);  /* bit 0: tiny, bit 1: small */

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)(id >> 32) != TARGET_TGID)
        return 0;
    int z = 0;
    u64 *c = calls.lookup(&z);
    u32 *en = enable.lookup(&z);
    struct small_buf *s = sbuf.lookup(&z);
    if (!c || !en || !s)
        return 0;
    u64 i = __sync_fetch_and_add(c, 1);
    if (*en & 2) {
        for (int k = 0; k < 128; k++)
            s->b[k] = (u8)(i + k);
        MIGRATOR_OUTPUT_TYPED(small, args, s->b, 8 + (i % 100), 7, 3);
    }
    if (*en & 1) {
        MIGRATOR_RESERVE(tiny, struct tiny_evt, t);
        if (!t)
            return 0;
        t->i = i;
        t->a = 1;
        t->b = 2;
        t->c = 3;
        MIGRATOR_SUBMIT(tiny, args, t);
    }
    return 0;
}
"""


class Reader:
    """Every record of some channels, from bcc's own perf and ring readers."""

    def __init__(self, bpf, names):
        self.bpf = bpf
        self.got = {(n, k): [] for n in names for k in ("perf", "ring")}
        self.lost = 0
        for n in names:
            bpf[n + "__perf"].open_perf_buffer(self._cb(n, "perf"), page_cnt=PERF_PAGES, lost_cb=self._lost)
            bpf[n + "__ring"].open_ring_buffer(self._ring_cb(n))

    def _cb(self, name, kind):
        def cb(cpu, data, size):
            self.got[(name, kind)].append(self._record(name, data, size))
        return cb

    def _ring_cb(self, name):
        def cb(ctx, data, size):
            self.got[(name, "ring")].append(self._record(name, data, size))
            return 0
        return cb

    def _lost(self, n):
        self.lost += n

    def _record(self, name, data, size):
        h = header(data)
        ev = self.bpf[name].event(payload_ptr(data))  # the anchor decodes the operator's struct
        fields = {f: getattr(ev, f) for f, _ in ev._fields_ if f != "fill"}
        return h, size, payload(data, size), fields

    def poll_once(self):
        self.bpf.perf_buffer_poll(timeout=10)
        self.bpf.ring_buffer_consume()

    def drain(self):
        for _ in range(3):
            self.poll_once()
        for v in self.got.values():
            v.clear()
        self.lost = 0

    def wait_for(self, want: dict, timeout=10.0):
        """Poll until every (channel, kind) has at least its wanted count, poll once more (so any
        surplus shows), and return the counts."""
        deadline = time.monotonic() + timeout
        while any(len(self.got[k]) < n for k, n in want.items()):
            assert time.monotonic() < deadline, {k: len(v) for k, v in self.got.items()}
            self.poll_once()
        self.poll_once()
        return {k: len(self.got[k]) for k in want}


def counts(c: Counters) -> Counters:
    """The emit counts alone (the timed emits' ns and number are checked on their own)."""
    return dataclasses.replace(c, ns=0, timed=0)


def counters_delta(ch: Channel, before) -> dict:
    now = ch.counters()
    return {k: now[k] - before[k] for k in now}


def close(bpf, channels: dict) -> None:
    """Drop our table references first: bcc's cleanup() frees perf buffers in the tables' __del__,
    which fails (an ignored KeyError) if the tables outlive the map fds it closes."""
    channels.clear()
    bpf.cleanup()


@pytest.fixture(scope="module")
def prog_a():
    bpf = load(text=PROG_A, cflags=[f"-DTARGET_TGID={os.getpid()}"])
    reader = Reader(bpf, ["var", "fix"])
    channels = {n: Channel(bpf, n) for n in ("var", "fix")}
    yield bpf, channels, reader
    close(bpf, channels)


@pytest.fixture(scope="module")
def prog_b():
    bpf = load(text=PROG_B, cflags=[f"-DTARGET_TGID={os.getpid()}", "-DMIGRATOR_MAX_PAYLOAD=64"])
    reader = Reader(bpf, ["tiny", "small"])
    channels = {n: Channel(bpf, n) for n in ("tiny", "small")}
    yield bpf, channels, reader
    close(bpf, channels)


def calls(bpf) -> int:
    t = bpf["calls"]
    return t[t.Key(0)].value


def set_enable(bpf, bits: int) -> None:
    t = bpf["enable"]
    t[t.Key(0)] = t.Leaf(bits)


def getppid_n(n: int) -> None:
    for _ in range(n):
        os.getppid()


def comm() -> bytes:
    with open("/proc/self/task/%d/comm" % os.getpid(), "rb") as f:
        return f.read().strip()[:15]


@pytest.mark.parametrize("mode", ["PERF", "DUAL", "RING"])
def test_two_channels_exact_per_mode(prog_a, mode):
    bpf, ch, reader = prog_a
    reader.drain()
    for c in ch.values():
        c.set_mode(mode)
        assert c.mode == mode
    i0, seq0 = calls(bpf), {n: c.next_seq for n, c in ch.items()}
    before = {n: c.counters() for n, c in ch.items()}
    extra0 = ch["fix"].extra_counters()
    getppid_n(N)

    is_, discarded = range(i0, i0 + N), {i for i in range(i0, i0 + N) if i % 10 == 9}
    on_perf, on_ring = mode != "RING", mode != "PERF"
    want = {("var", "perf"): N * on_perf, ("var", "ring"): N * on_ring,
            ("fix", "perf"): (N - len(discarded)) * on_perf, ("fix", "ring"): (N - len(discarded)) * on_ring}
    assert reader.wait_for(want) == want
    assert reader.lost == 0
    assert calls(bpf) == i0 + N

    # counters: every attempt took, exactly on the channels the mode writes to
    for name, n in (("var", N), ("fix", N - len(discarded))):
        d = counters_delta(ch[name], before[name])
        assert counts(d["perf"]) == Counters(n * on_perf, n * on_perf, 0, 0), (name, d)
        assert counts(d["ring"]) == Counters(n * on_ring, n * on_ring, 0, 0), (name, d)
    assert ch["fix"].extra_counters()["discard"] - extra0["discard"] == len(discarded)
    assert ch["var"].extra_counters() == {"truncated": 0, "copy_fail": 0, "no_scratch": 0, "discard": 0}
    # each channel has its own sequence, one number per record (discarded reservations too)
    assert {n: c.next_seq - seq0[n] for n, c in ch.items()} == {"var": N, "fix": N}

    ncpu = os.cpu_count()
    seqs = {}
    for (name, kind), recs in reader.got.items():
        if not recs:
            continue
        seqs[(name, kind)] = {h.seq for h, _, _, _ in recs}
        assert len(seqs[(name, kind)]) == len(recs)  # no duplicates
        for h, size, data, ev in recs:
            assert (h.hdr_version, h.type, h.type_version) == (1, 0, 0)
            assert h.mode == mode and h.cpu < ncpu and h.ktime_ns > 0
            assert size == HDR_SIZE + h.len if kind == "ring" else size >= HDR_SIZE + h.len
            if name == "var":
                i = ev["i"]
                assert h.flags == MODE_VALUES[mode]
                assert h.len == 8 + i % 200 == len(data)
                assert data[8:] == bytes((i + k) & 0xFF for k in range(h.len - 8))
            else:
                assert h.flags == MODE_VALUES[mode] | FLAG_RESERVED
                assert h.len == 32 == len(data)
                assert ev["tgid"] == os.getpid() and ev["pid"] == os.getpid() and ev["comm"] == comm()
        got_i = sorted(ev["i"] for _, _, _, ev in recs)
        assert got_i == (list(is_) if name == "var" else sorted(set(is_) - discarded))
    assert seqs.get(("var", "perf"), seqs.get(("var", "ring"))) == set(range(seq0["var"], seq0["var"] + N))
    if mode == "DUAL":
        assert seqs[("var", "perf")] == seqs[("var", "ring")]
        assert seqs[("fix", "perf")] == seqs[("fix", "ring")]


def test_channel_maps_and_sizes(prog_a):
    bpf, ch, _ = prog_a
    var = ch["var"]
    assert var.perf_map is bpf["var__perf"] and var.ring_map is bpf["var__ring"]
    assert var.ring_bytes == 1 << 20 == map_max_entries(var.ring_map_fd)
    mode = bpf["var__mode"]
    mode[mode.Key(0)] = mode.Leaf(7)  # out of range counts as RING, like the BPF side
    assert var.mode == "RING"
    var.set_mode("PERF")
    assert var.mode == "PERF"
    with pytest.raises(OptionError, match="mode"):
        var.set_mode("BOTH")
    with pytest.raises(ChannelError, match="no map 'vbuf__perf'"):
        Channel(bpf, "vbuf")


def test_tiny_ring_burst_balances(prog_b):
    bpf, ch, reader = prog_b
    for name, bit in (("tiny", 1), ("small", 2)):
        reader.drain()
        set_enable(bpf, bit)
        c = ch[name]
        c.set_mode("RING")
        before = c.counters()
        n = 2000
        getppid_n(n)  # nothing reads during the burst
        reader.poll_once()
        reader.poll_once()
        d = counters_delta(c, before)
        delivered = len(reader.got[(name, "ring")])
        assert d["ring"].attempts == n
        assert d["ring"].attempts == d["ring"].ok + d["ring"].full + d["ring"].other
        assert d["ring"].ok == delivered and d["ring"].full > 0 and d["ring"].other == 0
        assert counts(d["perf"]) == Counters()
        if name == "tiny":  # 8 (ring) + 32 (header) + 32 (payload) bytes per record
            assert delivered == 4096 // 72
    set_enable(bpf, 0)


def test_counters_read_in_one_batch_equal_each_slot_looked_up(prog_b):
    bpf, ch, reader = prog_b
    reader.drain()
    set_enable(bpf, 1)
    c = ch["tiny"]
    c.set_mode("DUAL")
    getppid_n(500)  # the tiny ring fills: ok and full both count
    set_enable(bpf, 0)  # nothing counts between the two reads below
    reader.poll_once()
    t = bpf["tiny__cnt"]
    by_slot = [int(sum(t[t.Key(i)])) for i in range(2 * N_COUNTERS)]
    assert PercpuSums(t.map_fd, 2 * N_COUNTERS, t.total_cpu).read() == by_slot
    ring = {n: sum(by_slot[p * N_COUNTERS + COUNTERS.index(n)] for p in (0, 1)) for n in COUNTERS}
    assert ring["ring_attempts"] >= 500 and ring["ring_full"] > 0 and ring["ring_ok"] > 0
    assert c.raw_counters() == ring
    for parity in (0, 1):
        assert c.raw_counters(parity) == {n: by_slot[parity * N_COUNTERS + COUNTERS.index(n)] for n in COUNTERS}


def test_dual_ring_reservation_failure_still_reaches_perf(prog_b):
    bpf, ch, reader = prog_b
    reader.drain()
    set_enable(bpf, 1)
    tiny = ch["tiny"]
    tiny.set_mode("DUAL")
    before, seq0 = tiny.counters(), tiny.next_seq
    n = 1000
    getppid_n(n)  # the ring (4096 bytes) is not read: most reservations fail
    set_enable(bpf, 0)
    reader.wait_for({("tiny", "perf"): n})
    d = counters_delta(tiny, before)
    ring_recs = reader.got[("tiny", "ring")]
    assert counts(d["perf"]) == Counters(n, n, 0, 0)
    assert d["ring"].attempts == n and d["ring"].ok == len(ring_recs) == 4096 // 72
    assert d["ring"].full == n - len(ring_recs) and d["ring"].other == 0
    perf_seqs = {h.seq for h, _, _, _ in reader.got[("tiny", "perf")]}
    assert perf_seqs == set(range(seq0, seq0 + n))
    assert {h.seq for h, _, _, _ in ring_recs} <= perf_seqs
    for h, _, data, ev in reader.got[("tiny", "perf")]:
        assert h.flags == MODE_VALUES["DUAL"] | FLAG_RESERVED and h.len == 32
        assert (ev["a"], ev["b"], ev["c"]) == (1, 2, 3)


def test_truncation_is_flagged_and_counted(prog_b):
    bpf, ch, reader = prog_b
    reader.drain()
    small = ch["small"]
    small.set_mode("PERF")
    set_enable(bpf, 2)
    i0 = calls(bpf)
    before, extra0 = small.counters(), small.extra_counters()
    n = 300
    getppid_n(n)
    set_enable(bpf, 0)
    reader.wait_for({("small", "perf"): n})
    sizes = {i: 8 + i % 100 for i in range(i0, i0 + n)}
    over = sum(1 for s in sizes.values() if s > 64)
    assert over > 0
    assert counts(counters_delta(small, before)["perf"]) == Counters(n, n, 0, 0)
    assert small.extra_counters()["truncated"] - extra0["truncated"] == over
    seen = []
    for h, _, data, _ in reader.got[("small", "perf")]:
        assert (h.type, h.type_version) == (7, 3)
        seen.append(h)
        assert h.len == len(data) <= 64
        assert data == bytes((data[0] + k) & 0xFF for k in range(h.len))
    by_len = sorted((h.len, bool(h.flags & FLAG_TRUNCATED)) for h in seen)
    assert by_len == sorted((min(s, 64), s > 64) for s in sizes.values())
    assert all(h.flags & ~FLAG_TRUNCATED == MODE_VALUES["PERF"] for h in seen)


def test_unprepared_or_broken_text_fails_to_load():
    with pytest.raises(BPFLoadError):
        load(text="#include <migrator.h>\nMIGRATOR_CHANNEL_MAPS(x, 4096);\nint f(void *ctx) { return nosuch; }\n")
