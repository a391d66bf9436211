"""`migrator doctor` against the real machine, plus the checks pointed at files we write."""
from __future__ import annotations

import json
import subprocess
import time

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
    """(source, mountpoint, options) of every tracefs mount, in mount order."""
    return [(src, mp, opts) for src, mp, typ, opts in core.read_mounts() if typ == "tracefs"]


def _run(*cmd: str) -> None:
    # tracefs can be briefly busy (another process reading a format file); retry before failing.
    for attempt in range(10):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


@pytest.fixture
def tracefs_unmounted():
    """Unmount every tracefs mount (e.g. also /sys/kernel/debug/tracing); restore them all after."""
    before = _tracefs_mounts()
    unmounted: list[tuple[str, str, str]] = []
    try:
        for src, mp, opts in reversed(before):  # innermost first
            _run("umount", mp)
            unmounted.append((src, mp, opts))
        assert _tracefs_mounts() == [], "tracefs still mounted after umount"
        yield before
    finally:
        for src, mp, opts in reversed(unmounted):  # original order, same source and options
            # debugfs may have automounted its tracing dir again on access.
            if mp not in {m for _s, m, _o in _tracefs_mounts()}:
                _run("mount", "-t", "tracefs", "-o", opts, src, mp)
        assert sorted(_tracefs_mounts()) == sorted(before), "tracefs mounts were not restored as found"


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
def test_doctor_names_the_tracefs_fix_when_unmounted(tracefs_unmounted):
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1, result.output
    row = _rows(result.output)["tracefs"]
    assert _status(row) == "FAIL", row
    assert "mount -t tracefs nodev /sys/kernel/tracing" in row

    data = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)
    assert data["ok"] is False
    failed = {c["name"]: c for c in data["checks"] if not c["ok"]}
    assert set(failed) == {"tracefs"}
    assert "mount -t tracefs nodev /sys/kernel/tracing" in failed["tracefs"]["fix"]


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


def test_bcc_outside_debian_dir_fails(tmp_path):
    c = core.check_bcc(debian_dir=str(tmp_path))
    assert c.status == "FAIL" and "python3-bpfcc" in c.fix
