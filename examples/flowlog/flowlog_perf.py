#!/usr/bin/env python3
"""flowlog: per-flow packet and byte counts of the IPv4 packets arriving on a device.

A tc ingress program (flowlog_perf.bpf.c) sends one variable-size record per packet through
the perf buffer; this process counts packets and bytes per flow, logs every second and writes
the table as JSON at exit. Plain bcc: BPF_PERF_OUTPUT, open_perf_buffer, perf_buffer_poll.

    sudo python3 flowlog_perf.py --device mig1-n --netns mig1 --seconds 10 --out flows.json
"""
import argparse
import os
import time

from bcc import BPF

from flowlog_common import FlowTable, tc_ingress

HERE = os.path.dirname(os.path.abspath(__file__))

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--device", required=True, help="device whose ingress is logged")
ap.add_argument("--netns", default=None, help="network namespace of the device")
ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
ap.add_argument("--out", default="flows.json", help="JSON file written at exit")
args = ap.parse_args()

table = FlowTable(args.out)
bpf = BPF(src_file=os.path.join(HERE, "flowlog_perf.bpf.c"))
fn = bpf.load_func("tc_flowlog", BPF.SCHED_CLS)


def on_event(cpu, data, size):
    ev = bpf["events"].event(data)
    table.add(ev.saddr, ev.daddr, ev.sport, ev.dport, ev.proto, ev.pkt_len, bytes(ev.payload[:ev.cap_len]))


bpf["events"].open_perf_buffer(on_event, page_cnt=64)
detach = tc_ingress(fn, args.device, args.netns)
end = time.monotonic() + args.seconds if args.seconds else None
try:
    while end is None or time.monotonic() < end:
        bpf.perf_buffer_poll(100)
        table.tick()
except KeyboardInterrupt:
    pass
finally:
    detach()
    table.dump()
