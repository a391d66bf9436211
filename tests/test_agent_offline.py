"""Agent logic that needs neither root nor the kernel: window merging across a reload, and the
refusal of a host the migration does not list (before any probe is loaded)."""
from __future__ import annotations

import signal

from sqlalchemy import func, select
from typer.testing import CliRunner

from migrator.cli import app
from migrator.shared.records import ChannelWindow, merge_windows
from migrator.store import api
from migrator.store.models import Window



def test_merge_windows_adds_counts_and_keeps_the_worse_lag():
    a = ChannelWindow(host="h", channel="ring", index=-1, start=0.0, end=0.4, mode="DUAL", attempts=100,
                      delivered=90, dropped_full=4, in_flight=6, lag_p99_ms=5.0, residual=0)
    b = ChannelWindow(host="h", channel="ring", index=7, start=0.4, end=1.0, mode="DUAL", attempts=200,
                      delivered=200, lag_p99_ms=2.0, residual=0)
    m = merge_windows([a, b])
    assert (m.index, m.start, m.end, m.attempts, m.delivered, m.dropped_full) == (7, 0.0, 1.0, 300, 290, 4)
    assert (m.lost, m.in_flight, m.lag_p99_ms, m.residual) == (6, 0, 5.0, 0)  # a's waiting records died with its maps
    assert m.extra["lost_in_reload"] == 6


def test_merge_windows_side_by_side_adds_in_flight_and_weighs_the_emit_cost_by_attempts():
    a = ChannelWindow(host="h", channel="ring", index=3, start=0.0, end=1.0, mode="DUAL", attempts=300,
                      delivered=290, in_flight=10, bpf_run_ns=500, bpf_run_cnt=9, producer_ns=100.0, peak_bytes=64)
    b = ChannelWindow(host="h", channel="ring", index=3, start=0.1, end=1.1, mode="RING", attempts=100,
                      delivered=96, in_flight=4, bpf_run_ns=700, bpf_run_cnt=8, producer_ns=500.0, peak_bytes=32)
    m = merge_windows([a, b], side_by_side=True)
    assert (m.index, m.mode, m.start, m.end, m.attempts, m.delivered, m.in_flight, m.lost) == (
        3, "DUAL", 0.0, 1.1, 400, 386, 14, 0)
    assert (m.bpf_run_ns, m.bpf_run_cnt, m.producer_ns, m.peak_bytes) == (700, 9, 200.0, 64)
    r = merge_windows([a, b])  # in time: a's waiting records died, run time adds up
    assert (r.mode, r.lost, r.in_flight, r.bpf_run_ns, r.bpf_run_cnt, r.producer_ns) == ("RING", 10, 4, 1200, 17, 200.0)


def test_agent_refuses_a_host_the_migration_does_not_list(started, tmp_path):
    cfg, sf, mid = started
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        res = CliRunner().invoke(app, ["agent", "--host", "nosuch", "-c", str(tmp_path / "canary.toml")])
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # the command installs its own handler
    assert (res.exit_code, res.stdout) == (1, "")
    assert res.stderr == (f"Error: host 'nosuch' is not part of migration {mid} (fix: use a host name from its "
                          "plan: h1; a host it does not list needs a new migration planned with it)\n")
    with sf() as s:  # refused before it loaded anything or wrote a row
        assert s.scalar(select(func.count()).select_from(Window)) == 0
        assert [(h["name"], h["applied_mode"], h["last_heartbeat"]) for h in api.hosts(s, mid)] == [("h1", None, None)]
