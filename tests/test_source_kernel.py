"""[source] kind = "bcc" against the real kernel: `migrator plan` compiles the operator's program
and reports what is wrong; the agent's OperatorProgram attaches and detaches only its own tc
filter; `migrator agent` refuses kind = "command"; the migrated flowlog script counts every packet."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root
from migrator.cli import app
from migrator.config import load_config

pytestmark = [pytest.mark.kernel, needs_root]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flowlog"
PREFIX = f"sk{os.getpid() % 1000}t"
runner = CliRunner()


def plan(path: Path):
    return runner.invoke(app, ["plan", "-c", str(path)])


def write_plan(tmp_path, source: str) -> Path:
    p = tmp_path / "canary.toml"
    p.write_text(f'hosts = ["a"]\nslices = [1]\n[source]\nkind = "bcc"\nsink = "sink:handle"\n'
                 f'sink_path = "{EXAMPLE}"\n' + source)
    return p


def test_plan_compiles_the_example_and_shows_its_payload(tmp_path):
    res = plan(EXAMPLE / "canary.toml")
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"source: bcc program {EXAMPLE / 'flowlog.bpf.c'}" in out
    assert f"sink sink:handle: def found in {EXAMPLE / 'sink.py'}" in out
    assert "compiled: channel 'events' found (maps events, events__perf, events__ring" in out
    assert "payload type: 84 bytes, variable size from 20 bytes: saddr, daddr, sport, dport, proto" in out
    assert "tc_flowlog: loads as tc (verifier passed)" in out
    assert "schema fingerprint r1:" in out


def test_plan_reports_a_missing_channel_a_compile_error_and_a_missing_sink(tmp_path):
    res = plan(write_plan(tmp_path, f'file = "{EXAMPLE / "flowlog.bpf.c"}"\nchannel = "flows"\n'))
    assert res.exit_code == 1
    assert "flows channel: the program has no map 'flows': it is not a migrator channel" in res.output
    (tmp_path / "broken.bpf.c").write_text("#include <migrator.h>\nMIGRATOR_CHANNEL(events, 4096);\nint f( {\n")
    res = plan(write_plan(tmp_path, 'file = "broken.bpf.c"\n'))
    assert res.exit_code == 1 and "compilation FAILED: Failed to load probe" in res.output
    p = write_plan(tmp_path, f'file = "{EXAMPLE / "flowlog.bpf.c"}"\n')
    p.write_text(p.read_text().replace('sink = "sink:handle"', 'sink = "sink:handel"'))
    res = plan(p)
    assert res.exit_code == 1
    assert f"{EXAMPLE / 'sink.py'} defines no 'handel' at top level (fix: def handel(batch): ...)" in res.output


def test_attach_and_detach_only_our_tc_filter():
    from migrator.dataplane.operator import OperatorProgram
    from migrator.tools.lab import lab_down, lab_status, lab_up

    lab_down(PREFIX)
    try:
        host = lab_up(1, PREFIX)[0]
        src = load_config(EXAMPLE / "canary.toml").source
        prog = OperatorProgram.load(src, host.name)
        try:
            prog.attach()
            assert lab_status(PREFIX)[0].filters == {"ingress": ["tc_flowlog"]}
        finally:
            prog.close()
        assert lab_status(PREFIX)[0].filters == {}
    finally:
        lab_down(PREFIX)


def test_agent_hands_a_command_source_to_wrap_or_refuses_without_it(tmp_path, monkeypatch):
    from migrator.cli.agent import run_command
    from migrator.errors import MigratorError

    p = tmp_path / "canary.toml"
    p.write_text('hosts = ["a"]\nslices = [1]\n[source]\nkind = "command"\ncommand = ["python3", "nosuchtool.py"]\n')
    assert runner.invoke(app, ["init", str(p)]).exit_code == 0
    # with wrap: `migrator agent` runs the command through it (here wrap finds no such tool)
    res = subprocess.run([sys.executable, "-m", "migrator", "agent", "--host", "a", "-c", str(p), "--seconds", "1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "nosuchtool.py" in res.stderr, res.stderr
    # without wrap: a clear refusal
    monkeypatch.setitem(sys.modules, "migrator.agent.wrap", None)
    with pytest.raises(MigratorError, match=r'\[source\] kind = "command" \(python3 nosuchtool.py\) runs through '
                                            r"`migrator wrap`, which this installation does not have"):
        run_command(("python3", "nosuchtool.py"), p, "a")


def test_flowlog_scripts_count_every_packet(tmp_path):
    """Both forms of the example, as an operator runs them, against one lab host."""
    from migrator.tools.lab import lab_down, lab_up, start_traffic

    lab_down(PREFIX)
    try:
        host = lab_up(1, PREFIX)[0]
        for script in ("flowlog_perf.py", "flowlog.py"):
            out = tmp_path / f"{script}.json"
            proc = subprocess.Popen([sys.executable, str(EXAMPLE / script), "--device", host.host_if,
                                     "--netns", host.netns, "--seconds", "3", "--out", str(out)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(1.5)  # compiled and attached (bcc takes well under a second here)
            sent = start_traffic(host, "steady", pps=1000, seconds=1.0).wait().sent
            log, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, log
            table = json.loads(out.read_text())
            assert table["packets"] == sent > 900, (script, log)
            assert table["flows"][0]["proto"] == "udp" and table["bad_captures"] == 0
            assert "flowlog: +" in log  # the per-second line
    finally:
        lab_down(PREFIX)
