#!/usr/bin/env python3
"""A bursty bcc tool written the way operators write them, unmodified by migrator.

It forks a child that makes COUNT getpid() calls in a tight loop, traces them with a
TRACEPOINT_PROBE that `perf_submit`s one small record per call, reads them with bcc's
`open_perf_buffer(callback, page_cnt=PAGES, lost_cb=...)` and `perf_buffer_poll`, and prints
one line when the child is done and the buffers are quiet:

    bursty: delivered 50000 lost 0 seq_errors 0

`migrator bench parity` runs it plainly and under `migrator wrap` in each mode and compares the
delivered counts; the tests run it too. Usage: bursty_tool.py [--count N] [--pages P] [--json]
"""
import argparse
import json
import os
import sys

from bcc import BPF

TEXT = r"""
struct event_t {
    u32 pid;
    u32 n;
    u64 ts;
};
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(calls, u32, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getpid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_PID)
        return 0;
    int k = 0;
    u32 *c = calls.lookup(&k);
    if (!c)
        return 0;
    struct event_t e = {};
    e.pid = TARGET_PID;
    e.n = (bpf_get_smp_processor_id() << 24) | *c;  /* unique: a per-CPU count with the CPU on top */
    *c += 1;
    e.ts = bpf_ktime_get_ns();
    events.perf_submit(args, &e, sizeof(e));
    return 0;
}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50_000, help="getpid() calls the child makes")
    ap.add_argument("--pages", type=int, default=64, help="page_cnt of open_perf_buffer")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args()

    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # the traced workload: wait for the tracer, then burst
        os.close(go_w)
        os.read(go_r, 1)
        getpid = os.getpid
        for _ in range(a.count):
            getpid()
        os._exit(0)
    os.close(go_r)

    b = BPF(text=TEXT.replace("TARGET_PID", str(child)))
    got = {"n": 0, "lost": 0, "seq_errors": 0}
    seen = set()

    def on_event(cpu, data, size):
        n = b["events"].event(data).n
        if n in seen:
            got["seq_errors"] += 1  # delivered twice
        seen.add(n)
        got["n"] += 1

    def on_lost(count):
        got["lost"] += count

    b["events"].open_perf_buffer(on_event, page_cnt=a.pages, lost_cb=on_lost)
    os.write(go_w, b"g")
    os.close(go_w)
    done, quiet, before = False, 0, -1
    while quiet < 3:
        b.perf_buffer_poll(100)
        if not done:
            done = os.waitpid(child, os.WNOHANG)[0] == child
        if done:
            quiet = quiet + 1 if got["n"] == before else 0
            before = got["n"]
    out = {"delivered": got["n"], "lost": got["lost"], "seq_errors": got["seq_errors"], "count": a.count}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"bursty: delivered {out['delivered']} lost {out['lost']} seq_errors {out['seq_errors']}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
