"""Survive the faults: children die with their parent, privilege errors name the capability,
`shadow --rate 0` runs as fast as possible."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root, unavailable
from migrator.cli import app
from migrator.dataplane.channel import (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, check_bpf_privileges,
                                        missing_bpf_caps)
from migrator.errors import MigratorError, PrivilegeError
from migrator.tools.doctor import check_tracefs
from migrator.tools.shadow import UNBOUNDED_EVENTS, shadow_event_count

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill_parent_and_watch_child(script: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        time.sleep(0.3)  # the child is past its start-up (prctl) and running
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), f"child {child} outlived its SIGKILLed parent"


def test_loadgen_child_dies_with_its_parent():
    _kill_parent_and_watch_child(
        "import time; from migrator.dataplane.loadgen import LoadGen\n"
        "g = LoadGen(10**9, 1000); g.start(); print(g.pid, flush=True); time.sleep(60)")


def test_unstarted_loadgen_child_dies_with_its_parent():
    _kill_parent_and_watch_child(
        "import time; from migrator.dataplane.loadgen import LoadGen\n"
        "g = LoadGen(10**9, 1000); print(g.pid, flush=True); time.sleep(60)")


def test_traffic_child_dies_with_its_parent():
    # A sender towards a namespace that does not exist would fail at once; the child here is the
    # real module's start-up path (--parent-pid) followed by a long sleep in place of sending.
    _kill_parent_and_watch_child(
        "import os, subprocess, sys, time\n"
        "code = 'import sys, time; from migrator.dataplane.loadgen import die_with_parent; '"
        " + 'die_with_parent(int(sys.argv[1])); time.sleep(60)'\n"
        "p = subprocess.Popen([sys.executable, '-c', code, str(os.getpid())]); print(p.pid, flush=True); time.sleep(60)")


def test_traffic_argv_carries_the_parent_pid():
    from migrator.tools.lab import traffic

    class Host:
        name, netns, root_addr, host_addr = "x1", "nonexistent-ns-x1", "10.255.0.1", "10.255.0.2"

    tp = traffic.start_traffic(Host(), profile="burst", count=1, seconds=0.1)
    try:
        assert "--parent-pid" in tp.proc.args and str(os.getpid()) in tp.proc.args
    finally:
        tp.proc.kill()
        tp.proc.communicate()


def test_child_whose_parent_is_already_gone_exits():
    # die_with_parent(parent_pid) exits at once when getppid() is no longer that parent.
    r = subprocess.run([sys.executable, "-c", "from migrator.dataplane.loadgen import die_with_parent; "
                        "die_with_parent(1 if __import__('os').getppid() != 1 else 2); print('alive')"],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 1 and "alive" not in r.stdout


# -- privileges ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mask,missing", [
    (0, ["CAP_BPF", "CAP_PERFMON"]),
    (1 << CAP_BPF, ["CAP_PERFMON"]),
    (1 << CAP_PERFMON, ["CAP_BPF"]),
    ((1 << CAP_BPF) | (1 << CAP_PERFMON), []),
    (1 << CAP_SYS_ADMIN, []),
    ((1 << 41) - 1, []),  # root's full set
    (0x00000000a80425fb, ["CAP_BPF", "CAP_PERFMON"]),  # docker's default set
])
def test_missing_bpf_caps(mask, missing):
    assert missing_bpf_caps(mask) == missing


def test_privilege_error_names_capabilities_and_fix():
    with pytest.raises(PrivilegeError) as ei:
        check_bpf_privileges("probe synthetic", cap_eff=1 << CAP_BPF, euid=65534)
    msg = str(ei.value)
    assert isinstance(ei.value, MigratorError)
    assert "CAP_PERFMON" in msg and "euid 65534" in msg and "run as root" in msg and "CAP_BPF+CAP_PERFMON" in msg
    check_bpf_privileges("probe synthetic", cap_eff=1 << CAP_SYS_ADMIN, euid=0)  # no error


def _as_nobody(readable: bool) -> list[str]:
    """A prefix running a command as `nobody`. The venv's interpreter may live under a 0700 /root:
    then (readable=False) nobody keeps CAP_DAC_READ_SEARCH only, which grants nothing BPF needs."""
    if readable and shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    if shutil.which("setpriv"):
        caps = "-all" if readable else "-all,+dac_read_search"
        extra = [] if readable else ["--ambient-caps=+dac_read_search"]
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", f"--inh-caps={caps}", *extra]
    unavailable("neither runuser nor setpriv")


def _interpreter_readable_by_others() -> bool:
    path = Path(os.path.realpath(sys.executable))
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [*path.parents])


def _run_as_nobody(args: list[str], python: str = sys.executable,
                   pythonpath: Path = ROOT) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        unavailable("needs root to switch to nobody")
    readable = python != sys.executable or _interpreter_readable_by_others()
    return subprocess.run([*_as_nobody(readable), python, *args], capture_output=True, text=True, timeout=120,
                          cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(pythonpath),
                                        "HOME": "/nonexistent"})


def _readable_copy_of_migrator(where: Path) -> Path:
    """A copy of the migrator package that any user can read, in `where` (made world-readable):
    the checkout may sit under a directory `nobody` cannot enter (a clone under a 0700 home)."""
    if not all(os.stat(p).st_mode & 0o001 for p in where.parents):
        unavailable(f"no directory other users can reach to hold a copy of migrator ({where.parent} is closed)")
    def not_source(d: str, names: list[str]) -> list[str]:  # its Python modules only (no caches, links, builds)
        return [n for n in names if n == "__pycache__" or os.path.islink(os.path.join(d, n))
                or (not n.endswith(".py") and not os.path.isdir(os.path.join(d, n)))]

    shutil.copytree(ROOT / "migrator", where / "migrator", ignore=not_source)
    for d, _, files in os.walk(where):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    return where


def _nobody_can_run_python() -> None:
    r = _run_as_nobody(["-c", "import os, migrator.cli; assert os.geteuid() != 0"])
    if r.returncode:
        unavailable(f"nobody cannot import migrator from {ROOT}: {r.stderr.strip()[-200:]}")


def test_shadow_as_nobody_names_the_capability():
    _nobody_can_run_python()
    r = _run_as_nobody(["-m", "migrator", "shadow", "--seconds", "1"])
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    assert "CAP_BPF" in errors[0] and "CAP_PERFMON" in errors[0] and "root" in errors[0]
    assert "Traceback" not in r.stderr and r.stdout == ""  # refused before the table header


def test_library_load_as_nobody_names_the_capability():
    _nobody_can_run_python()
    code = ("import migrator\n"
            "try:\n migrator.load(text='int f(void *ctx) { return 0; }')\n"
            "except migrator.errors.PrivilegeError as e:\n print('PRIV', e)\n")
    r = _run_as_nobody(["-c", code])
    assert "PRIV" in r.stdout and "CAP_BPF" in r.stdout, r.stdout + r.stderr


def test_doctor_tells_an_unreadable_tracefs_from_a_missing_one(tmp_path, monkeypatch):
    mnt = tmp_path / "tracing"
    (mnt / "events").mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"tracefs {mnt} tracefs rw,relatime,mode=700 0 0\n")
    assert check_tracefs(str(mnt), str(mounts)).ok
    monkeypatch.setattr("migrator.tools.doctor.os.access", lambda *a, **k: False)
    c = check_tracefs(str(mnt), str(mounts))
    assert not c.ok and "unreadable" in c.value and "mounted" in c.value and "root" in c.fix
    missing = check_tracefs(str(tmp_path / "nowhere"), str(mounts))
    assert not missing.ok and "nothing mounted" in missing.value


def test_doctor_tracefs_as_nobody():
    if not Path("/sys/kernel/tracing/events").exists() or (os.stat("/sys/kernel/tracing").st_mode & 0o005):
        unavailable("needs a tracefs at /sys/kernel/tracing closed to other users")
    # Plain nobody (no capability at all): the system python, which any user can run; the check
    # needs nothing outside the standard library. It imports migrator from a world-readable copy,
    # so the test does not depend on where the checkout sits (nobody may not read it).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        unavailable("no /usr/bin/python3")
    with tempfile.TemporaryDirectory(prefix="migrator-nobody-", dir="/tmp" if os.path.isdir("/tmp") else None) as d:
        r = _run_as_nobody(["-c", "import migrator.tools.doctor as d; print(d.__file__); print(d.check_tracefs().value)"],
                           python=python, pythonpath=_readable_copy_of_migrator(Path(d)))
    assert r.stdout.startswith(d), r.stdout + r.stderr  # the copy, not a checkout on some path
    assert "mounted at /sys/kernel/tracing but unreadable to euid" in r.stdout, r.stdout + r.stderr


# -- shadow --rate 0 ----------------------------------------------------------------------------
def test_rate_0_is_unbounded():
    assert shadow_event_count(0, 1) == UNBOUNDED_EVENTS
    assert shadow_event_count(50_000, 2) == 100_000
    assert shadow_event_count(0.5, 1) == 1


@pytest.mark.kernel
@needs_root
def test_shadow_rate_0_delivers_events_with_balanced_books():
    res = runner.invoke(app, ["shadow", "--seconds", "1", "--window", "500ms", "--rate", "0", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    windows = [x for x in lines if x["type"] == "window"]
    summary = lines[-1]
    assert summary["type"] == "summary"
    for ch in ("perf", "ring"):
        t = summary["channels"][ch]
        assert t["attempts"] > 0
        assert t["delivered"] + t["dropped_full"] + t["dropped_other"] + t["lost"] == t["attempts"]
        assert (t["residual"], t["unbalanced_windows"], t["parse_errors"]) == (0, 0, 0)
        assert sum(w["attempts"] for w in windows if w["channel"] == ch) == t["attempts"]
    assert summary["channels"]["perf"]["attempts"] == summary["channels"]["ring"]["attempts"]
