"""The lab on real namespaces: names, idempotent repair, tear-down after SIGKILL, exact TC counts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app
from migrator.errors import LabNameCollision
from migrator.tools.lab import attach_probe, detach_probe, lab_down, lab_status, lab_up, start_traffic

pytestmark = [pytest.mark.kernel, needs_root]
PREFIX = f"mt{os.getpid() % 1000}t"  # never the operator's "mig"; unique per test run
ETH_P_IP_BE = 0x0008  # skb->protocol is network order: 0x0800 read as a little-endian u32
runner = CliRunner()


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip netns list").splitlines() if line.startswith(PREFIX)}


def link_names() -> set[str]:
    return {line.split()[1].split("@")[0].rstrip(":") for line in sh("ip -o link").splitlines()
            if line.split()[1].startswith(PREFIX)}


@pytest.fixture
def lab():
    """Tear the test lab down whatever the test did."""
    lab_down(PREFIX)
    yield PREFIX
    lab_down(PREFIX)
    assert not netns_names() and not link_names()


def test_up_status_down_exact_names(lab):
    hosts = lab_up(3, lab)
    assert [h.name for h in hosts] == [f"{lab}1", f"{lab}2", f"{lab}3"]
    assert netns_names() == {f"{lab}{i}" for i in (1, 2, 3)}
    assert link_names() == {f"{lab}{i}-h" for i in (1, 2, 3)}
    for h in hosts:
        inside = sh(f"ip netns exec {h.netns} ip -o link")
        assert f"{h.host_if}@" in inside and " UP " in sh(f"ip netns exec {h.netns} ip -br link show {h.host_if}")
        assert f"qdisc clsact ffff: dev {h.host_if}" in sh(f"ip netns exec {h.netns} tc qdisc show")
        assert f"{h.host_addr}/30" in sh(f"ip netns exec {h.netns} ip -br addr show {h.host_if}")
        assert f"{h.root_addr}/30" in sh(f"ip -br addr show {h.root_if}")
    assert len({h.root_addr for h in hosts}) == 3
    assert lab_status(lab) == hosts

    removed = lab_down(lab)
    assert sorted(removed["netns"]) == sorted(h.netns for h in hosts)
    assert len(removed["qdiscs"]) == 3
    assert not netns_names() and not link_names()
    assert lab_down(lab) == {"qdiscs": [], "links": [], "netns": []}


def test_up_is_idempotent_and_repairs(lab):
    hosts = lab_up(2, lab)
    sh(f"ip link del {lab}2-h")  # takes the host end with it
    sh(f"ip netns exec {lab}1 tc qdisc del dev {lab}1-n clsact")
    assert lab_up(2, lab) == hosts  # same addresses found again by name
    assert f"qdisc clsact ffff: dev {lab}1-n" in sh(f"ip netns exec {lab}1 tc qdisc show")
    assert link_names() == {f"{lab}1-h", f"{lab}2-h"}


def test_down_after_sigkill_mid_up(lab):
    code = ("import sys, time\nfrom migrator.tools.lab import lab_up\n"
            f"lab_up(40, {lab!r}, progress=lambda h: print(h.name, flush=True))\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == f"{lab}1"
        assert child.stdout.readline().strip() == f"{lab}2"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    assert child.returncode == -signal.SIGKILL
    left_ns, left_links = netns_names(), link_names()
    assert {f"{lab}1", f"{lab}2"} <= left_ns and {f"{lab}1-h", f"{lab}2-h"} <= left_links
    removed = lab_down(lab)
    assert set(removed["netns"]) == left_ns
    assert not netns_names() and not link_names()


def test_cli_up_status_down_and_errors(lab):
    res = runner.invoke(app, ["lab", "up", "--hosts", "2", "--prefix", lab])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["lab", "status", "--prefix", lab, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["name"], r["qdisc"], r["filters"]) for r in rows] == [(f"{lab}1", True, {}), (f"{lab}2", True, {})]
    res = runner.invoke(app, ["lab", "traffic", f"{lab}1", "--profile", "burst", "--count", "50"])
    assert res.exit_code == 0, res.output
    assert f"{lab}1: sent 50, received 50" in res.stdout

    res = runner.invoke(app, ["lab", "up", "--hosts", "0", "--prefix", lab])
    assert res.exit_code == 1 and res.stderr.startswith("Error: lab: hosts=0 is not valid (fix: choose 1 to 64")
    res = runner.invoke(app, ["lab", "traffic", f"{lab}9", "--profile", "burst", "--count", "5"])
    assert res.exit_code == 1 and f"lab host '{lab}9' not found" in res.stderr

    res = runner.invoke(app, ["lab", "down", "--prefix", lab])
    assert res.exit_code == 0 and "removed 2 netns" in res.stdout
    assert not netns_names() and not link_names()


def test_name_collision_with_non_lab_link(lab):
    sh(f"ip link add {lab}1-h type bridge")
    try:
        with pytest.raises(LabNameCollision, match="is a bridge link"):
            lab_up(1, lab)
        assert not netns_names()  # refused before touching anything
        lab_down(lab)
        assert link_names() == {f"{lab}1-h"}  # down never removes what the lab did not make
    finally:
        sh(f"ip link del {lab}1-h")


def test_tc_probe_counts_sent_packets_exactly(lab):
    from migrator.dataplane.demo_probes import Probe
    from migrator.dataplane.readers import RingConsumer
    from migrator.dataplane.schema import DEMO_TYPE, demo_registry

    host = lab_up(1, lab)[0]
    with Probe("tc", ring_bytes=1 << 20) as probe:
        probe.set_mode("RING")
        ring = RingConsumer(probe.ring_map_fd, probe.ring_bytes)
        try:
            # The fd is ours; pyroute2 0.9 only forks to open the namespaced socket, so it is valid here.
            attach_probe(host, probe.tc_fn.fd)
            assert lab_status(lab)[0].filters == {"ingress": ["tc_packet"]}
            time.sleep(0.2)
            assert len(ring.consume()) == 0  # IPv6 off, static neighbours: a silent link
            burst = start_traffic(host, profile="burst", count=700, seconds=3).wait()
            steady = start_traffic(host, profile="steady", pps=1000, seconds=0.3).wait()
            sent = burst.sent + steady.sent
            assert (burst.sent, steady.sent) == (700, 300)
            assert (burst.received, steady.received) == (700, 300)
            frames = ring.consume()
            assert len(frames) == sent
            events = demo_registry().decode(frames)[DEMO_TYPE]
            assert set(events["aux"].tolist()) == {ETH_P_IP_BE}
            assert set(events["len"].tolist()) == {14 + 20 + 8 + 64}
            assert np.all(np.diff(events["seq"].astype(np.int64)) == 1)
            c = probe.counters()["ring"]
            assert (c.attempts, c.ok, c.full, c.other) == (sent, sent, 0, 0)
            assert probe.counters()["perf"].attempts == 0
            assert detach_probe(host) == 1
            assert lab_status(lab)[0].filters == {}
            start_traffic(host, profile="burst", count=100, seconds=2).wait()
            assert probe.counters()["ring"].attempts == sent  # detached: no more events
        finally:
            ring.close()


def test_traffic_stops_by_itself_within_bound(lab):
    host = lab_up(1, lab)[0]
    t0 = time.monotonic()
    proc = start_traffic(host, profile="steady", pps=2000, seconds=0.5, count=10_000_000)
    res = proc.wait(timeout=3)
    took = time.monotonic() - t0
    assert res.returncode == 0 and res.elapsed < 0.5 + 0.6  # seconds bound plus the receive grace
    assert 0.8 * 1000 <= res.sent <= 1000 and res.received == res.sent
    assert took < 2.5
    res = start_traffic(host, profile="burst", count=2000, seconds=2).wait(timeout=5)
    assert res.sent == 2000 and res.elapsed < 2.6
    stopped = start_traffic(host, profile="steady", pps=100, seconds=30)
    time.sleep(0.5)
    early = stopped.stop()
    assert early.returncode == 0 and 10 <= early.sent <= 100
