"""The flowlog example (an operator's own tc program with variable-size records, and its own
consumer) migrated across a 2-host lab by agents running [source] kind = "bcc": the consumer's
per-host count against the packets sent. Slow (~20 s each)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from kernel_util import needs_root
from migrator.config import load_config
from migrator.store import open_store
from migrator.store.models import Window
from migrator.tools.lab.run import run_lab_migration

pytestmark = [pytest.mark.kernel, pytest.mark.slow, needs_root]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flowlog"
PREFIX = f"fl{os.getpid() % 1000}x"
PLAN = f"""
window_seconds = 1.0
slices = [1, "100%"]
rollback_after = 3
[phases.dual_instrument]
min_clean_windows = 2
[phases.shadow]
min_clean_windows = 2
[phases.canary]
min_clean_windows = 2
[lab]
hosts = 2
pps = 1000
[source]
kind = "bcc"
file = "{EXAMPLE / 'flowlog.bpf.c'}"
sink = "sink:handle"
sink_path = "{EXAMPLE}"
CFLAGS
[[source.attach]]
type = "tc"
function = "tc_flowlog"
device = "{{host}}-n"
netns = "{{host}}"
"""


def base(tmp_path, cflags: str = ""):
    p = tmp_path / "base.toml"
    p.write_text(PLAN.replace("CFLAGS", cflags))
    return load_config(p)


def windows_of(res):
    sf = open_store(res.database_url)
    with sf() as s:
        return s.scalars(select(Window).where(Window.migration_id == res.migration_id).order_by(Window.index)).all()


def assert_books_balance(res, ws) -> None:
    """Every window balances on its own (settled, residual 0), and each channel's whole stream does:
    attempts = delivered + delivered late (records of an earlier window still in flight at its close)
    + dropped + lost + what is still in flight at the end."""
    assert [(w.host, w.channel, w.index) for w in ws if not w.settled or w.residual != 0] == []
    for h in res.hosts:
        for ch in ("perf", "ring"):
            mine = [w for w in ws if (w.host, w.channel) == (h, ch)]
            out = sum(w.delivered + json.loads(w.extra).get("late", 0) + w.dropped_full + w.dropped_other + w.lost
                      for w in mine)
            assert sum(w.attempts for w in mine) - out == json.loads(mine[-1].extra)["pending"] == 0, (h, ch)


def test_flowlog_reaches_complete_and_the_consumer_acts_on_every_packet(tmp_path):
    res = run_lab_migration(base(tmp_path), tmp_path / "run", prefix=PREFIX, say=lambda _: None, timeout=60)
    assert res.phase == "COMPLETE"
    assert res.final_modes == {h: "RING" for h in res.hosts}
    for h in res.hosts:
        b = res.consumer[h]
        assert b["sent"] > 3000, b
        assert (b["acted"], b["drops"], b["ok"]) == (b["sent"], 0, True), (h, b)  # every packet once
        assert b["sink_total"] == b["acted"] and b["sink_errors"] == 0
        assert b["by_channel"]["perf"] > 0 and b["by_channel"]["ring"] > 0  # acted on across the switch
        assert b["by_channel"]["perf"] + b["by_channel"]["ring"] == b["acted"]
        # the sink's own table, written when its agent exited, says the same
        table = json.loads((res.run_dir / f"flowlog-{h}.json").read_text())
        assert table["packets"] == b["sent"] and table["bad_captures"] == 0
        assert [f["proto"] for f in table["flows"]] == ["udp"]
        # variable-size records: 16..63 captured bytes each, never the whole buffer
        assert 16 * b["sent"] <= table["captured"] <= 63 * b["sent"] and table["captured"] % b["sent"]
    ws = windows_of(res)
    assert_books_balance(res, ws)
    assert sum(w.parse_errors for w in ws) == 0  # short records decode (variable tail), never errors
    assert {json.loads(w.extra)["schema_fingerprint"] for w in ws} == {res.history[0]["reason"].split()[-1][:-1]}


def test_flowlog_stalled_ring_rolls_back_and_the_consumer_loses_only_counted_drops(tmp_path):
    # A 64 KiB ring: stalled, it fills in under a second, so the kernel refuses (and counts) records
    cfg = base(tmp_path, 'cflags = ["-DRING_BYTES=65536"]')
    res = run_lab_migration(cfg, tmp_path / "run", prefix=PREFIX, fault="stall-ring", say=lambda _: None,
                            timeout=60, after_final_windows=2)
    assert res.phase == "ROLLED_BACK"
    rb = res.history[-1]
    # the stalled host protected itself (agent/selfprotect.py): its reason is the rollback's
    assert (rb["from"], rb["to"], rb["actor"], len(rb["window_ids"])) == (
        "CANARY", "ROLLED_BACK", f"host {res.fault_host}", 3)
    assert res.final_modes == {h: "PERF" for h in res.hosts}
    for h in res.hosts:
        b = res.consumer[h]
        assert b["sent"] > 3000, b
        assert b["acted"] == b["sent"] - b["drops"], (h, b)  # nothing lost the kernel did not count
        assert b["ok"] and b["sink_errors"] == 0
    stalled, other = res.consumer[res.fault_host], res.consumer[next(h for h in res.hosts if h != res.fault_host)]
    assert stalled["drops"] > 0 and stalled["by_channel"]["ring"] > 0  # ring acted on, then refused while stalled
    assert (other["drops"], other["acted"], other["by_channel"]["ring"]) == (0, other["sent"], 0)  # stayed on perf
    assert_books_balance(res, windows_of(res))
    # the report tells the same account from the database alone (the packets sent are the lab's to know)
    from migrator.tools.report import collect, render_html, summary

    sf = open_store(res.database_url)
    with sf() as s:
        data = collect(s, res.migration_id)
    sf.dispose()
    got = summary(data)["consumer"]
    assert {h: (b["acted"], b["by_channel"], b["drops"], b["switches"], b["sink_total"]) for h, b in got.items()} == {
        h: (b["acted"], b["by_channel"], b["drops"], b["switches"], b["sink_total"]) for h, b in res.consumer.items()}
    assert all(b["sent"] is None and b["ok"] is None for b in got.values())
    page = render_html(data)
    assert 'id="consumer-account"' in page and f"<td>{res.fault_host}</td><td>{stalled['acted']}</td>" in page
