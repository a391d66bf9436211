"""Traffic generator for lab hosts: UDP datagrams from the root namespace to a host's address.

Runs as its own process (`python -m migrator.tools.lab.traffic ...`) so the agent or controller is not
slowed. It binds the receiving socket inside the host's namespace itself, so datagrams reach a
listener (no ICMP port-unreachable replies add packets) and it can report what arrived. Every
run is bounded twice: by `count` and by `seconds` (plus an alarm as a backstop); it always stops
by itself and prints one JSON line: {"sent", "received", "elapsed"}.

Profiles: `steady` sends `pps` datagrams per second for `seconds` (or until `count`);
`burst` sends `count` datagrams as fast as the socket takes them (within `seconds`).

    python -m migrator.tools.lab.traffic --netns mig1 --src 10.213.1.1 --dst 10.213.1.2 --profile burst --count 1000
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from migrator.errors import LabConfigError, LabError

PROFILES = ("steady", "burst")
DEFAULT_PORT = 47000
MAX_SECONDS = 3600.0
MAX_COUNT = 10_000_000
GRACE = 0.5  # after the last send: time for the last datagrams to cross the veth


@dataclass(frozen=True)
class TrafficResult:
    """What one generator run did: datagrams sent and received, wall time, exit code."""

    sent: int
    received: int
    elapsed: float
    returncode: int


def check_args(profile: str, pps: float, seconds: float, count: int | None) -> int:
    """Validate a profile and return the datagram count bound it implies."""
    if profile not in PROFILES:
        raise LabConfigError("profile", profile, f"choose one of {', '.join(PROFILES)}")
    if not 0 < seconds <= MAX_SECONDS:
        raise LabConfigError("seconds", seconds, f"choose 0 < seconds <= {MAX_SECONDS:g}")
    if profile == "steady":
        if not 0 < pps <= 1_000_000:
            raise LabConfigError("pps", pps, "choose 0 < pps <= 1000000 for the steady profile")
        if count is None:
            count = math.ceil(pps * seconds)
    if count is None:
        raise LabConfigError("count", count, "the burst profile needs --count N")
    if not 1 <= count <= MAX_COUNT:
        raise LabConfigError("count", count, f"choose 1 <= count <= {MAX_COUNT}")
    return count


class TrafficProcess:
    """Handle on a running generator child: wait() for its result, stop() to end it early."""

    def __init__(self, argv: list[str], bound_s: float) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.bound_s = bound_s

    @property
    def pid(self) -> int:
        """The generator child's pid, to find or signal it from outside."""
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> TrafficResult:
        """Reap the child (default timeout: its own bound plus slack) and parse its report."""
        out, err = self.proc.communicate(timeout=self.bound_s + 5 if timeout is None else timeout)
        try:
            rep = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise LabError(f"traffic generator exited {self.proc.returncode} without a report: {err.strip()}") from None
        return TrafficResult(rep["sent"], rep["received"], rep["elapsed"], self.proc.returncode)

    def stop(self) -> TrafficResult:
        """Ask the child to stop now (SIGTERM); it still reports what it sent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()


def start_traffic(host, profile: str = "steady", pps: float = 1000, seconds: float = 1.0,
                  count: int | None = None, port: int = DEFAULT_PORT, size: int = 64) -> TrafficProcess:
    """Start a generator child towards a LabHost (see the module doc for the profiles)."""
    count = check_args(profile, pps, seconds, count)
    if not host.root_addr or not host.host_addr:
        raise LabError(f"lab host {host.name} has no addresses; repair it with `migrator lab up`")
    argv = [sys.executable, "-m", "migrator.tools.lab.traffic", "--netns", host.netns, "--src", host.root_addr,
            "--dst", host.host_addr, "--port", str(port), "--profile", profile, "--pps", str(pps),
            "--seconds", str(seconds), "--count", str(count), "--size", str(size), "--parent-pid", str(os.getpid())]
    return TrafficProcess(argv, seconds + GRACE)


# -- the child ----------------------------------------------------------------------------------
_stop = False


def _on_term(signum, frame) -> None:
    global _stop
    _stop = True


def _receiver(netns_name: str, dst: str, port: int) -> socket.socket:
    from migrator.dataplane.netns import entered

    with entered(netns_name):  # a socket keeps the namespace it was made in
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind((dst, port))
    rx.setblocking(False)
    return rx


def _drain(rx: socket.socket) -> int:
    n = 0
    while True:
        try:
            rx.recv(65536)
        except BlockingIOError:
            return n
        n += 1


def run(netns_name: str, src: str, dst: str, port: int, profile: str, pps: float, seconds: float,
        count: int, size: int) -> dict:
    """Send within both bounds and return the report (the body of the child process)."""
    signal.signal(signal.SIGTERM, _on_term)
    signal.alarm(int(math.ceil(seconds + GRACE)) + 5)  # backstop: the default action ends us
    rx = _receiver(netns_name, dst, port)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind((src, 0))
    tx.connect((dst, port))
    payload = b"\x00" * size
    sent = received = 0
    t0 = time.monotonic()
    t_end = t0 + seconds
    interval = 1.0 / pps if profile == "steady" else 0.0
    while sent < count and not _stop:
        now = time.monotonic()
        if now >= t_end:
            break
        if interval:
            ahead = t0 + sent * interval - now
            if ahead > 0:
                time.sleep(min(ahead, t_end - now))
                continue
        try:
            tx.send(payload)
            sent += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            time.sleep(0.0005)  # the device queue is full: back off; nothing was sent
        if sent % 256 == 0:
            received += _drain(rx)
    deadline = time.monotonic() + GRACE
    while received < sent and time.monotonic() < deadline and not _stop:
        received += _drain(rx)
        time.sleep(0.002)
    received += _drain(rx)
    return {"sent": sent, "received": received, "elapsed": round(time.monotonic() - t0, 6)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the generator child: check the bounds, send, print the one-line JSON report."""
    ap = argparse.ArgumentParser(prog="python -m migrator.tools.lab.traffic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--netns", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--profile", choices=PROFILES, default="steady")
    ap.add_argument("--pps", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--parent-pid", type=int, default=None,
                    help="die (SIGKILL) with this parent; exit at once if it is already gone")
    a = ap.parse_args(argv)
    if a.parent_pid is not None:
        from migrator.dataplane.loadgen import die_with_parent

        die_with_parent(a.parent_pid)
    count = check_args(a.profile, a.pps, a.seconds, a.count)
    rep = run(a.netns, a.src, a.dst, a.port, a.profile, a.pps, a.seconds, count, a.size)
    print(json.dumps(rep), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
