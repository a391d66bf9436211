"""flowlog's consumer work, shared by its three forms (flowlog_perf.py, flowlog.py, sink.py):
per-flow packet and byte counts, logged every second and written to a JSON file at exit.

A record is `struct flow_event` (flowlog.bpf.c): the flow key, the packet length, and cap_len
bytes of the packet (16 to 63: records vary in size; payload[] beyond cap_len is not data).
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time

import numpy as np

PROTOS = {1: "icmp", 6: "tcp", 17: "udp"}
KEY = ("saddr", "daddr", "sport", "dport", "proto")


def ip(addr: int) -> str:
    """A u32 read from the packet (network byte order, stored little endian) as dotted text."""
    return socket.inet_ntoa(struct.pack("<I", addr))


class FlowTable:
    """Per-flow counts: packets, bytes (skb->len) and bytes captured into records."""

    def __init__(self, out_path: str, log=print, every: float = 1.0) -> None:
        self.out_path, self.log, self.every = out_path, log, every
        self.flows: dict[tuple, list[int]] = {}
        self.packets = self.bytes = self.captured = self.bad = 0
        self._last = time.monotonic()
        self._last_packets = self._last_bytes = 0

    def add(self, saddr: int, daddr: int, sport: int, dport: int, proto: int, pkt_len: int, payload: bytes) -> None:
        """One event (bcc's callback form)."""
        f = self.flows.setdefault((saddr, daddr, sport, dport, proto), [0, 0, 0])
        f[0] += 1
        f[1] += pkt_len
        f[2] += len(payload)
        self.packets += 1
        self.bytes += pkt_len
        self.captured += len(payload)
        # the captured bytes start at the Ethernet header: the EtherType must be IPv4
        if len(payload) >= 14 and payload[12:14] != b"\x08\x00":
            self.bad += 1

    def add_batch(self, rows: np.ndarray) -> None:
        """A decoded numpy batch (the sink form): one np.unique over the flow keys."""
        if not len(rows):
            return
        keys, inv = np.unique(rows[list(KEY)], return_inverse=True)
        pk = np.bincount(inv, minlength=len(keys))
        by = np.bincount(inv, weights=rows["pkt_len"], minlength=len(keys))
        cap = np.bincount(inv, weights=rows["cap_len"], minlength=len(keys))
        for k, p, b, c in zip(keys.tolist(), pk.tolist(), by.tolist(), cap.tolist()):
            f = self.flows.setdefault(tuple(int(x) for x in k), [0, 0, 0])
            f[0] += p
            f[1] += int(b)
            f[2] += int(c)
        self.packets += len(rows)
        self.bytes += int(rows["pkt_len"].sum())
        self.captured += int(rows["cap_len"].sum())
        ethertype = rows["payload"][:, 12:14]
        self.bad += int(((rows["cap_len"] >= 14) & ((ethertype[:, 0] != 8) | (ethertype[:, 1] != 0))).sum())

    def tick(self) -> None:
        """Log what arrived since the last line, at most once per `every` seconds."""
        now = time.monotonic()
        if now - self._last < self.every:
            return
        dp, db = self.packets - self._last_packets, self.bytes - self._last_bytes
        self.log(f"flowlog: +{dp} packets +{db} bytes in {now - self._last:.1f} s; "
                 f"{self.packets} packets in {len(self.flows)} flows, {self.captured} bytes captured")
        self._last, self._last_packets, self._last_bytes = now, self.packets, self.bytes

    def to_dict(self) -> dict:
        flows = [{"src": f"{ip(k[0])}:{k[2]}", "dst": f"{ip(k[1])}:{k[3]}", "proto": PROTOS.get(k[4], str(k[4])),
                  "packets": v[0], "bytes": v[1], "captured": v[2]}
                 for k, v in sorted(self.flows.items(), key=lambda kv: -kv[1][0])]
        return {"packets": self.packets, "bytes": self.bytes, "captured": self.captured,
                "bad_captures": self.bad, "flows": flows, "written_at": time.time()}

    def dump(self) -> None:
        """Write the table as JSON (atomically: a reader never sees half a file)."""
        tmp = f"{self.out_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, self.out_path)
        self.log(f"flowlog: {self.packets} packets in {len(self.flows)} flows written to {self.out_path}")


def tc_ingress(fn, device: str, netns: str | None = None):
    """Attach a SCHED_CLS program to a device's clsact ingress (pyroute2); returns a detach function."""
    from pyroute2 import IPRoute

    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    idx = ipr.link_lookup(ifname=device)[0]
    try:
        ipr.tc("add", "clsact", idx)
    except Exception:  # already there
        pass
    ipr.tc("replace-filter", "bpf", idx, handle=1, fd=fn.fd, name=fn.name.decode(), parent=0xFFFFFFF2,
           classid=1, direct_action=True)

    def detach() -> None:
        try:
            for f in ipr.get_filters(index=idx, parent=0xFFFFFFF2):
                if f.get("TCA_KIND") == "bpf" and f["handle"] == 1:
                    ipr.tc("del-filter", "bpf", idx, handle=1, parent=0xFFFFFFF2, info=f["info"])
        except Exception:  # the device (or its namespace) is gone already
            pass
        ipr.close()

    return detach
