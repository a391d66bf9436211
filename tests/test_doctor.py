"""`migrator doctor` against the real machine, plus the checks pointed at files we write."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kernel_util import needs_root
from typer.testing import CliRunner

from migrator.tools import doctor as core
from migrator.cli import app

EXPECTED_NAMES = {
    "privileges", "kernel", "btf", "ringbuf", "perf_event_array", "tracefs", "bpffs",
    "kernel_headers", "bcc", "lockdown", "memlock", "kprobes", "bpf_sources",
}



def _rows(output: str) -> dict[str, str]:
    """CHECK name -> its whole table line."""
    rows = {}
    for line in output.splitlines():
        first = line.split(" ", 1)[0]
        if first in EXPECTED_NAMES:
            rows[first] = line
    return rows


def _status(line: str) -> str:
    return line.split()[1]


def _tracefs_mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, options) of every tracefs mount in this process's mount namespace."""
    return [(src, mp, opts) for src, mp, typ, opts in core.read_mounts() if typ == "tracefs"]


# Runs under `unshare -m --propagation private`: unmounts every tracefs of that private mount
# namespace only (the host's mounts are never touched), runs doctor there and prints what it saw.
IN_PRIVATE_NS = r"""
import json, os, subprocess, sys, time
if os.readlink("/proc/self/ns/mnt") == sys.argv[1]:
    sys.exit("refusing to unmount: still in the host's mount namespace")
from typer.testing import CliRunner
from migrator.cli import app
from migrator.tools import doctor as core

def tracefs():
    return [mp for _src, mp, typ, _opts in core.read_mounts() if typ == "tracefs"]

before = tracefs()
for mp in reversed(before):  # innermost first
    for attempt in range(10):  # tracefs can be briefly busy
        proc = subprocess.run(["umount", mp], capture_output=True, text=True)
        if proc.returncode == 0:
            break
        time.sleep(0.2)
    else:
        sys.exit(f"umount {mp} failed: {proc.stderr.strip()}")
after = tracefs()
text = CliRunner().invoke(app, ["doctor"])
js = CliRunner().invoke(app, ["doctor", "--json"])
print(json.dumps({"before": before, "after": after, "text_exit": text.exit_code, "text": text.output,
                  "json_exit": js.exit_code, "json": js.stdout}))
"""


def doctor_without_tracefs() -> dict:
    """What doctor reports from a private mount namespace in which every tracefs is unmounted."""
    host_ns = os.readlink("/proc/self/ns/mnt")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", IN_PRIVATE_NS, host_ns],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.kernel
@needs_root
def test_doctor_passes_here():
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert set(rows) == EXPECTED_NAMES, result.output
    assert {name: _status(line) for name, line in rows.items()} == {n: "OK" for n in EXPECTED_NAMES}
    assert "All required checks pass." in result.output


@pytest.mark.kernel
@needs_root
def test_doctor_json():
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    assert {c["name"] for c in data["checks"]} == EXPECTED_NAMES
    assert len(data["checks"]) == len(EXPECTED_NAMES)
    for c in data["checks"]:
        assert {"name", "ok", "value", "fix"} <= set(c)
        assert c["ok"] is True, c
        assert c["value"]


@pytest.mark.kernel
@needs_root
def test_doctor_names_the_tracefs_fix_when_unmounted():
    host_before = _tracefs_mounts()
    assert "/sys/kernel/tracing" in [mp for _s, mp, _o in host_before]
    seen = doctor_without_tracefs()
    # The host's mounts are exactly as they were: the unmount happened in the private namespace.
    assert _tracefs_mounts() == host_before
    assert subprocess.run(["mountpoint", "-q", "/sys/kernel/tracing"]).returncode == 0

    assert (seen["before"], seen["after"]) == ([mp for _s, mp, _o in host_before], [])
    assert seen["text_exit"] == 1, seen["text"]
    rows = _rows(seen["text"])
    assert {name: _status(line) for name, line in rows.items()} == {
        n: ("FAIL" if n == "tracefs" else "OK") for n in EXPECTED_NAMES}
    assert "nothing mounted at /sys/kernel/tracing" in rows["tracefs"]
    assert "mount -t tracefs nodev /sys/kernel/tracing" in rows["tracefs"]

    assert seen["json_exit"] == 1
    data = json.loads(seen["json"])
    assert data["ok"] is False
    failed = {c["name"]: c for c in data["checks"] if not c["ok"]}
    assert set(failed) == {"tracefs"}
    assert (failed["tracefs"]["value"], failed["tracefs"]["fix"], failed["tracefs"]["status"]) == (
        "nothing mounted at /sys/kernel/tracing",
        "mount -t tracefs nodev /sys/kernel/tracing (or: bash scripts/setup.sh)", "FAIL")


# The checks below read files we write, through the same path parameters doctor uses.

def test_tracefs_wrong_type_and_missing_events(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"debugfs {tmp_path} debugfs rw 0 0\n")
    c = core.check_tracefs(str(tmp_path), str(mounts))
    assert (c.status, c.value) == ("FAIL", f"{tmp_path} is debugfs, not tracefs")
    mounts.write_text(f"nodev {tmp_path} tracefs rw 0 0\n")
    c = core.check_tracefs(str(tmp_path), str(mounts))
    assert c.status == "FAIL" and "no events/" in c.value
    (tmp_path / "events").mkdir()
    assert core.check_tracefs(str(tmp_path), str(mounts)).ok


def test_lockdown_modes(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"securityfs {tmp_path} securityfs rw 0 0\n")
    f = tmp_path / "lockdown"
    f.write_text("none integrity [confidentiality]\n")
    c = core.check_lockdown(str(f), str(mounts))
    assert c.status == "FAIL" and c.value.startswith("confidentiality")
    f.write_text("none [integrity] confidentiality\n")
    assert core.check_lockdown(str(f), str(mounts)) == core.Check("lockdown", True, "integrity")
    # securityfs not mounted: unknown, a WARN that does not fail doctor.
    mounts.write_text("")
    c = core.check_lockdown(str(tmp_path / "absent" / "lockdown"), str(mounts))
    assert c.status == "WARN" and not c.blocking
    assert "securityfs not mounted" in c.value and c.fix.startswith("mount -t securityfs securityfs")
    assert core.all_ok([c])


def test_memlock_matters_only_before_5_11():
    assert core.check_memlock("6.18.44", 8 << 20).ok
    old = core.check_memlock("5.10.0", 8 << 20)
    assert old.status == "FAIL" and "ulimit -l" in old.fix
    assert core.check_memlock("5.10.0", 64 << 20).ok


def test_kernel_version_and_privileges(tmp_path):
    assert core.check_kernel("5.7.19").status == "FAIL"
    assert core.check_kernel("5.8.0").ok
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    assert not core.check_privileges(str(status)).ok
    status.write_text(f"CapEff:\t{(1 << 39 | 1 << 38):016x}\n")  # CAP_BPF + CAP_PERFMON, no SYS_ADMIN
    assert core.check_privileges(str(status)).ok




def then(deb) -> str:
    return f"migrator then finds Debian's in {deb} under any python3"


def fake_bcc(where, body: str):
    """A package `bcc` under directory `where` whose __init__.py is `body`; returns `where`."""
    (where / "bcc").mkdir(parents=True)
    (where / "bcc" / "__init__.py").write_text(body)
    return where


@pytest.fixture
def bcc_dirs(tmp_path):
    """Import-path entries to point check_bcc at: Debian's dist-packages, a venv, fakes of the rest."""
    t = tmp_path.resolve()
    (t / "empty").mkdir()
    return {
        "debian": fake_bcc(t / "debian", "class BPF:\n    pass\n"),
        "empty": t / "empty",
        "nolib": fake_bcc(t / "nolib", "raise OSError('libbcc.so.0: cannot open shared object file')\n"),
        "pypi": fake_bcc(t / "pypi", "# PyPI's bcc: an unrelated project\n__version__ = '0.0.1'\n"),
        "local": fake_bcc(t / "local", "class BPF:\n    pass\n"),
        "venv": t / "venv",
    }


def test_bcc_not_importable(bcc_dirs):
    deb = bcc_dirs["debian"]
    c = core.check_bcc(str(deb), search_path=[str(bcc_dirs["empty"])])
    assert (c.ok, c.status, c.value, c.fix) == (
        False, "FAIL", "import bcc failed: ModuleNotFoundError: No module named 'bcc'",
        f"apt-get install python3-bpfcc ({then(deb)})")
    # libbcc.so missing: the import raises OSError; the same branch, the same fix
    c = core.check_bcc(str(deb), search_path=[str(bcc_dirs["nolib"])])
    assert (c.ok, c.value, c.fix) == (
        False, "import bcc failed: OSError: libbcc.so.0: cannot open shared object file",
        f"apt-get install python3-bpfcc ({then(deb)})")


def test_bcc_from_pypi_has_no_bpf(bcc_dirs):
    deb, pypi = bcc_dirs["debian"], bcc_dirs["pypi"]
    c = core.check_bcc(str(deb), search_path=[str(pypi)])
    assert (c.ok, c.status, c.value, c.fix) == (
        False, "FAIL", f"{pypi}/bcc has no bcc.BPF (PyPI's unrelated 'bcc'?)",
        f"pip uninstall bcc (PyPI's 'bcc' is another project; {then(deb)})")


def test_bcc_not_from_the_debian_dir(bcc_dirs):
    deb, local, venv = bcc_dirs["debian"], bcc_dirs["local"], bcc_dirs["venv"]
    c = core.check_bcc(str(deb), search_path=[str(local)])
    assert (c.ok, c.status, c.value, c.fix) == (
        False, "FAIL", f"{local}/bcc is not under {deb} (not Debian's python3-bpfcc)",
        f"remove the bcc in {local} from the import path ({then(deb)})")
    # linked into the venv, but the link points at a source build, not at Debian's
    venv.mkdir()
    (venv / "bcc").symlink_to(local / "bcc")
    c = core.check_bcc(str(deb), search_path=[str(venv)])
    assert (c.ok, c.value, c.fix) == (
        False, f"{local}/bcc (via link {venv}/bcc) is not under {deb} (not Debian's python3-bpfcc)",
        f"remove the bcc in {venv} from the import path ({then(deb)})")


def test_bcc_failure_branches_have_distinct_fixes(bcc_dirs):
    deb = str(bcc_dirs["debian"])
    fixes = [core.check_bcc(deb, search_path=[str(bcc_dirs[k])]).fix for k in ("empty", "pypi", "local")]
    assert len(set(fixes)) == 3, fixes
    assert [f.split(" ")[:2] for f in fixes] == [["apt-get", "install"], ["pip", "uninstall"], ["remove", "the"]]


def test_bcc_ok_from_the_debian_dir(bcc_dirs):
    deb, venv = bcc_dirs["debian"], bcc_dirs["venv"]
    loaded = sys.modules.get("bcc")
    assert core.check_bcc(str(deb), search_path=[str(deb)]) == core.Check("bcc", True, f"bcc.BPF from {deb}/bcc")
    venv.mkdir()
    (venv / "bcc").symlink_to(deb / "bcc")
    assert core.check_bcc(str(deb), search_path=[str(venv)]) == core.Check(
        "bcc", True, f"bcc.BPF from {deb}/bcc (linked into the venv)")
    assert sys.modules.get("bcc") is loaded  # the fakes were never registered as the process's bcc


def test_real_bcc_judged_against_another_debian_dir(tmp_path):
    """The default import (no search_path): this machine's bcc is not under tmp_path, whatever it is."""
    try:
        import bcc
    except Exception as exc:  # noqa: BLE001 - a machine without bcc must get the install fix
        expected = (False, f"import bcc failed: {type(exc).__name__}: {exc}",
                    f"apt-get install python3-bpfcc ({then(tmp_path)})")
    else:
        where = bcc.__file__
        real = os.path.realpath(where)
        shown = os.path.dirname(real) + ("" if real == where else f" (via link {os.path.dirname(where)})")
        expected = (False, f"{shown} is not under {tmp_path} (not Debian's python3-bpfcc)",
                    f"remove the bcc in {os.path.dirname(os.path.dirname(where))} from the import path "
                    f"({then(tmp_path)})")
    c = core.check_bcc(debian_dir=str(tmp_path))
    assert (c.ok, c.value, c.fix) == expected


def test_a_python3_without_bcc_finds_debians_through_migrator(tmp_path):
    """A migrator installed into any interpreter's environment (here: this venv's python in isolated
    mode, its site-packages and Debian's dist-packages off the path) imports Debian's python3-bpfcc:
    shared/resources.DebianBcc resolves `bcc` when nothing else does."""
    from migrator.shared.resources import DEBIAN_BCC_DIR

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    if not os.path.isdir(os.path.join(DEBIAN_BCC_DIR, "bcc")):
        pytest.fail(f"python3-bpfcc is not installed ({DEBIAN_BCC_DIR}/bcc): scripts/setup.sh installs it")
    code = ("import sys; sys.path[:] = [p for p in sys.path if 'packages' not in p]; sys.path.insert(0, %r)\n"
            "try:\n    import bcc\nexcept ImportError:\n    print('none')\nelse:\n    print('already', bcc.__file__)\n"
            "import migrator, bcc, bcc.table\nprint(bcc.__file__, hasattr(bcc, 'BPF'))") % root
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["none", f"{DEBIAN_BCC_DIR}/bcc/__init__.py True"]
