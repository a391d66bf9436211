"""`migrator wrap`: stock bcc tools, unmodified, run inside the migration print what they print alone.

The kernel tests start every process at once (the compiles dominate and run in parallel): each
tool unwrapped (`python /usr/sbin/TOOL`) and wrapped (`python -m migrator wrap -- /usr/sbin/TOOL`),
and tcpstates wrapped once more serving host h1 of a started migration. When all of them printed
their header, ONE localhost TCP workload runs on a port of our own (20 connections, each sending
3000 bytes and receiving 5000, then closing), so every copy sees the same kernel events. Their
event lines for that port must be equal, as multisets, byte for byte up to the last column (the
time span, which each copy measures with its own clock reads; pids, comms and socket addresses
are the same since the copies see the same events), and number exactly what the workload makes.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("tcpstates", "tcplife")
CONNECTIONS = 20
# Lines for the workload's port: tcpstates sees 10 state changes per connection (5 on each side:
# CLOSE->SYN_SENT->ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE for the client, which closes first;
# LISTEN->SYN_RECV->ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE for the server's socket) plus the
# listener's CLOSE->LISTEN and LISTEN->CLOSE; tcplife prints one line per closed socket.
EXPECTED = {"tcpstates": 10 * CONNECTIONS + 2, "tcplife": 2 * CONNECTIONS}
SEND, REPLY = 3000, 5000
PLAN = 'hosts = ["h1"]\nslices = [1]\nwindow_seconds = 0.5\n'

runner = CliRunner()


def tool(name: str) -> str:
    return f"/usr/sbin/{name}-bpfcc"


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell may start background jobs with SIGINT ignored


class Proc:
    """A tool (or `migrator wrap` of one) with its stdout and stderr read by threads."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.argv = argv
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=_sigint_default)
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self._threads = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, buf) -> None:
        for line in iter(stream.readline, b""):
            buf.append(line)

    @property
    def stdout(self) -> bytes:
        return b"".join(self.out)

    @property
    def stderr(self) -> str:
        return b"".join(self.err).decode(errors="replace")

    def lines(self) -> list[str]:
        return [x.decode() for x in list(self.out)]

    def stop(self, timeout: float = 30.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        for t in self._threads:
            t.join(5)
        return rc


def wait_for(cond, timeout: float, what: str, procs=()) -> None:
    end = time.monotonic() + timeout
    while not cond():
        dead = [p for p in procs if p.p.poll() is not None]
        assert not dead, f"{dead[0].argv} ended early (rc {dead[0].p.returncode}): {dead[0].stderr[-2000:]}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def workload(srv: socket.socket, n: int) -> None:
    """n localhost connections to `srv` (bound, not yet listening): send SEND bytes, get REPLY, close."""
    srv.listen(64)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(n):
            c, _ = srv.accept()
            with c:
                got = 0
                while got < SEND:
                    got += len(c.recv(65536))
                c.sendall(b"r" * REPLY)
                while c.recv(65536):  # until the client closed: the client side closes first
                    pass

    t = threading.Thread(target=serve)
    t.start()
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"q" * SEND)
            got = 0
            while got < REPLY:
                got += len(s.recv(65536))
    t.join(10)
    srv.close()


def port_columns(line: str, port: int) -> str | None:
    """The line as printed up to its last column (the time span), if it is an event on `port`."""
    cols = line.split()
    lport, rport = (-7, -5) if "->" in cols else (-6, -4)  # tcpstates, tcplife (a comm may hold spaces)
    if len(cols) < 9 or str(port) not in (cols[lport], cols[rport]):
        return None
    return line.rstrip("\n").rsplit(None, 1)[0]


def events(lines: list[str], port: int) -> collections.Counter:
    return collections.Counter(c for c in (port_columns(x, port) for x in lines) if c is not None)


def applied_modes(cfg: Path) -> dict[str, str]:
    from migrator.store import api, open_store

    sf = open_store(f"sqlite:///{cfg.parent / 'migrator.db'}", readonly=True)
    try:
        with sf() as s:
            return {h["name"]: h["applied_mode"] for h in api.hosts(s, 1)}
    finally:
        sf.dispose()


@dataclass
class Runs:
    port: int
    procs: dict[str, Proc]
    rc: dict[str, int] = field(default_factory=dict)
    cfg: Path | None = None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wrap")
    cfg = tmp / "canary.toml"
    cfg.write_text(PLAN)
    for args in (["init", str(cfg)], ["start", "-c", str(cfg), "--no-run", "--schema-fingerprint", "fp"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))  # a port of our own; the listener's events start at listen()
    wrap = [sys.executable, "-m", "migrator", "wrap"]
    argv = {}
    for t in TOOLS:
        argv[f"{t}/unwrapped"] = [sys.executable, tool(t)]
    argv["tcpstates/wrapped"] = [*wrap, "--json", "--", tool("tcpstates")]
    argv["tcplife/wrapped"] = [*wrap, "--", tool("tcplife")]
    argv["tcpstates/h1"] = [*wrap, "-c", str(cfg), "--host", "h1", "--", tool("tcpstates")]
    procs = {k: Proc(v, cwd=ROOT) for k, v in argv.items()}
    out = Runs(srv.getsockname()[1], procs, cfg=cfg)
    try:
        wait_for(lambda: all(p.out for p in procs.values()), 60, "every tool's header", procs.values())
        wait_for(lambda: applied_modes(cfg) == {"h1": "DUAL"}, 10, "h1 to report DUAL", procs.values())
        time.sleep(0.3)  # the unwrapped tools open their perf buffers right after the header
        workload(srv, CONNECTIONS)
        for k, p in procs.items():
            want = EXPECTED[k.split("/")[0]]
            wait_for(lambda p=p, want=want: sum(events(p.lines(), out.port).values()) >= want, 10,
                     f"{k}: {want} events", procs.values())
        time.sleep(0.6)  # anything extra would show; the h1 feed closes a window with the events
    finally:
        for k, p in procs.items():
            out.rc[k] = p.stop()
        srv.close()
    return out


@pytest.mark.parametrize("name", TOOLS)
class TestStockTools:
    pytestmark = [pytest.mark.kernel, needs_root]

    def test_wrapped_prints_exactly_what_unwrapped_prints(self, runs, name):
        plain, wrapped = runs.procs[f"{name}/unwrapped"], runs.procs[f"{name}/wrapped"]
        assert (runs.rc[f"{name}/unwrapped"], runs.rc[f"{name}/wrapped"]) == (0, 0), wrapped.stderr
        assert plain.out[0] == wrapped.out[0]  # the header, byte for byte
        a, b = events(plain.lines(), runs.port), events(wrapped.lines(), runs.port)
        assert sum(a.values()) == EXPECTED[name]
        assert a == b

    def test_every_acted_event_was_also_on_the_ring(self, runs, name):
        wrapped = runs.procs[f"{name}/wrapped"]
        printed = len(wrapped.out) - 1  # one line per event after the header
        if name == "tcpstates":  # --json: one object on stderr
            rep = json.loads(wrapped.stderr.strip().splitlines()[-1])
            s = rep["summary"]
            assert (rep["ended_by"], rep["exit_code"], rep["mode"]) == ("exit", 0, "DUAL")
            assert [c["name"] for c in rep["channels"]] == ["ipv4_events", "ipv6_events"]
            assert s["acted"] == s["acted_seen_on_ring"] == printed >= EXPECTED[name]
            assert (s["not_on_ring"], s["ring_dropped"], s["perf_lost"], s["every_acted_event_on_ring"]) == (
                0, 0, 0, True)
            assert s["ring_delivered"] >= s["acted"]
            v4 = rep["channels"][0]
            assert v4["perf"]["attempts"] == v4["perf"]["delivered"] == v4["ring"]["delivered"] >= printed
            assert all(w["residual"] == 0 for w in v4["windows"])
        else:
            err = wrapped.stderr.splitlines()
            head = next(x for x in err if x.startswith("wrap: "))
            assert head.startswith("wrap: tcplife-bpfcc: mode DUAL, 2 channels (ipv4_events, ipv6_events), windows "
                                   "of 1 s, ended by exit (exit 0)")
            # the buffers the tool asked bcc for (tcplife: open_perf_buffer(..., page_cnt=64)) and what they pin
            ncpu = os.cpu_count()
            assert f"channel ipv4_events: perf 64 pages x {ncpu} CPUs = {64 * ncpu * 4} KiB (the tool's page_cnt), " \
                   "ring 4 MiB (one buffer for every CPU)" in err
            assert any(x.startswith("host ") for x in err)
            assert err[-1] == (f"what this tool would see on the ring buffer: {printed} events acted on, ring "
                               f"delivered {printed} dropped 0, perf lost 0; every acted event also seen on ring: yes")


@pytest.mark.kernel
@needs_root
def test_config_windows_reach_the_database_in_the_hosts_mode(runs):
    from migrator.store import open_store
    from migrator.store.models import Window

    p = runs.procs["tcpstates/h1"]
    assert runs.rc["tcpstates/h1"] == 0, p.stderr
    assert events(p.lines(), runs.port) == events(runs.procs["tcpstates/unwrapped"].lines(), runs.port)
    assert applied_modes(runs.cfg) == {"h1": "DUAL"}
    sf = open_store(f"sqlite:///{runs.cfg.parent / 'migrator.db'}", readonly=True)
    with sf() as s:
        ws = s.scalars(select(Window).where(Window.migration_id == 1).order_by(Window.index, Window.channel)).all()
    assert ws and {w.host for w in ws} == {"h1"}
    busy = [w for w in ws if w.attempts]
    assert busy and {w.mode for w in busy} == {"DUAL"}
    for ch in ("perf", "ring"):  # both migrator channels of the tool, merged into one row per window
        mine = [w for w in busy if w.channel == ch]
        assert sum(w.delivered for w in mine) >= EXPECTED["tcpstates"]
        assert sum(w.dropped_full + w.dropped_other + w.lost for w in mine) == 0
        assert all(set(json.loads(w.extra)["channels"]) == {"ipv4_events", "ipv6_events"} for w in mine)
    notes = p.stderr.splitlines()[-1]  # wrap: schema fingerprint F; N windows sent to the database
    assert notes.startswith("wrap: schema fingerprint c2:") and notes.endswith(f"; {len(ws)} windows sent to the database")
    assert {json.loads(w.extra)["schema_fingerprint"] for w in ws} == {notes.split()[3].rstrip(";")}


# A bcc tool of our own that drives itself: one event per getppid() of its own process; its
# callback raises on one event (bcc's ctypes callback prints that and goes on); it prints the
# callback's size (bcc's perf raw size, padded), leaves a `with BPF()` block (cleanup) and exits 4.
SELF_DRIVEN = r'''#!/usr/bin/python3
import os, sys
from bcc import BPF
n = int(sys.argv[1])
text = """
struct ev_t { u32 pid; u64 n; char comm[16]; };
BPF_ARRAY(count, u64, 1);
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    int k = 0;
    u64 *c = count.lookup(&k);
    if (!c) return 0;
    struct ev_t ev = {.pid = pid, .n = __sync_fetch_and_add(c, 1)};
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    events.perf_submit(args, &ev, sizeof(ev));
    return 0;
}
""".replace("PID", str(os.getpid()))
got = []
def on(cpu, data, size):
    e = b["events"].event(data)
    got.append(e.n)
    if e.n == 1:
        raise ValueError("the tool's own bug")
    print("event", e.n, size, e.comm.decode())
with BPF(text=text) as b:
    b["events"].open_perf_buffer(on)
    for _ in range(n):
        os.getppid()
    while len(got) < n:
        b.perf_buffer_poll(1000)
print("done", sorted(got) == list(range(n)))
sys.exit(4)
'''


@pytest.mark.kernel
@needs_root
def test_a_self_driven_tool_prints_the_same_in_perf_and_ring_mode(tmp_path):
    script = tmp_path / "selfdriven.py"
    script.write_text(SELF_DRIVEN)
    n = 50
    argv = {"alone": [sys.executable, str(script), str(n)]}
    for mode in ("PERF", "RING"):  # DUAL: the stock tools above
        argv[mode] = [sys.executable, "-m", "migrator", "wrap", "--json", "--mode", mode, "--", "python3", str(script),
                      str(n)]
    procs = {k: subprocess.Popen(v, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, v in argv.items()}
    done = {k: p.communicate(timeout=60) for k, p in procs.items()}
    out, err = done["alone"]
    assert procs["alone"].returncode == 4, err
    assert out.splitlines()[0].startswith("event 0 36 python") and out.splitlines()[-1] == "done True"
    assert len(out.splitlines()) == n  # n - 1 events printed (one raised), then "done"
    for mode in ("PERF", "RING"):
        wout, werr = done[mode]
        assert (procs[mode].returncode, wout) == (4, out), werr
        assert werr.count("Exception ignored on calling ctypes callback function") == 1
        rep = json.loads(werr.strip().splitlines()[-1])
        s = rep["summary"]
        assert (rep["mode"], rep["exit_code"], s["acted"], s["unread"]) == (mode, 4, n, 0)
        assert s["every_acted_event_on_ring"] is (mode != "PERF")
        assert s["ring_delivered"] == (0 if mode == "PERF" else n)
        assert s["emitted_in_perf_mode"] == (n if mode == "PERF" else 0)
        ch = rep["channels"][0]
        assert (ch["name"], ch["callback_errors"], ch["perf"]["delivered"]) == ("events", 1, 0 if mode == "RING" else n)


# ---- without the kernel -----------------------------------------------------------------------

def test_a_command_that_is_not_a_python_script_is_refused():
    r = runner.invoke(app, ["wrap", "--", "/bin/true"])
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr.startswith("Error: cannot wrap '/bin/true': it is an ELF executable, not a Python script")
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("argv, why", [
    (["{sh}"], "it is a script for '/bin/sh', not a Python script"),
    (["{txt}"], "it has no python shebang line"),
    (["no-such-tool-here"], "no such command on PATH"),
    (["python3"], "the interpreter is given without a script"),
    (["python3", "-u", "{txt}"], "interpreter options (-u) are not supported"),
    (["python3", "{missing}"], "no such file"),
])
def test_other_refusals_name_the_command_and_why(tmp_path, argv, why):
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "notes.txt").write_text("print('hi')\n")
    files = {"sh": tmp_path / "tool.sh", "txt": tmp_path / "notes.txt", "missing": tmp_path / "missing.py"}
    r = runner.invoke(app, ["wrap", "--", *(a.format(**files) for a in argv)])
    assert r.exit_code == 1 and r.stderr.startswith("Error: cannot wrap '") and why in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_a_tool_without_bpf_keeps_its_stdout_and_exit_code(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("import sys\nprint('args', sys.argv[1:], __name__)\nsys.exit(3)\n")
    argv = list(sys.argv)
    r = runner.invoke(app, ["wrap", "--", "python3", str(script), "-x", "y"])
    assert (r.exit_code, r.stdout) == (3, "args ['-x', 'y'] __main__\n")
    assert "wrap: nothing was migrated" in r.stderr
    assert sys.argv == argv  # restored


def test_sigterm_ends_the_tool_as_it_would_end_alone(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("#!/usr/bin/env python3\nimport time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    script.chmod(0o755)
    p = subprocess.Popen([sys.executable, "-m", "migrator", "wrap", "--json", "--", str(script)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (-signal.SIGTERM, "")
    rep = json.loads(err.strip().splitlines()[-1])
    assert (rep["ended_by"], rep["channels"]) == ("SIGTERM", [])


def test_mode_and_config_together_is_a_usage_error(tmp_path):
    r = runner.invoke(app, ["wrap", "-c", str(tmp_path / "c.toml"), "--host", "h1", "--mode", "RING", "--", "x"])
    assert r.exit_code == 2 and "--mode" in r.stderr
