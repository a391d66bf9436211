"""`migrator bench overhead` on the real kernel: our agent loop and the libbpf C reference consumer,
each in its own process, on the same rate-limited stream; exact counts, no timing asserts."""
from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from kernel_util import needs_root, unavailable
from migrator.cli import app
from migrator.config import Buffers, load_config
from migrator.errors import ConfigError
from migrator.errors import BenchError
from migrator.tools.bench.overhead import REF_ENV, ref_binary

RATES = (0, 20_000)
SECONDS = 1.0


def _ref_or_skip() -> None:
    try:
        ref_binary()
    except BenchError as exc:
        unavailable(str(exc))


@pytest.mark.kernel
@pytest.mark.slow
@needs_root
def test_bench_overhead_json_counts_every_record_exactly():
    _ref_or_skip()
    args = ["bench", "overhead", "--seconds", str(SECONDS), "--repeat", "2", "--json"]
    for r in RATES:
        args += ["--rate", str(r)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # progress on stderr, one JSON object on stdout
    assert set(doc) == {"rates", "targets", "notes"}
    assert [row["rate"] for row in doc["rates"]] == list(RATES)
    assert doc["notes"]["max_delay_ms"] == Buffers().max_delay_ms
    assert doc["notes"]["c_interval_ms"] == Buffers().max_delay_ms
    assert doc["notes"]["repeat"] == 2
    for row in doc["rates"]:
        assert set(row) == {"rate", "ours", "c", "ratio", "ratio_per_record", "exact", "runs"}
        # two pairs; the row is the pair of the lower median ratio, with its own figures
        assert len(row["runs"]) == 2
        shown = {"ours_cpu_pct": row["ours"]["cpu_pct"], "c_cpu_pct": row["c"]["cpu_pct"], "ratio": row["ratio"]}
        assert shown in row["runs"]
        if all(x["ratio"] is not None for x in row["runs"]):
            assert row["ratio"] == min(x["ratio"] for x in row["runs"])
        events = round(row["rate"] * SECONDS)
        for name in ("ours", "c"):
            r = row[name]
            assert set(r) == {"wall_s", "cpu_s", "cpu_pct", "events", "consumed", "written", "report", "cpu_us_per_record"}
            assert r["cpu_s"] >= 0 and r["wall_s"] > 0
            # Every getppid() call of the generator is one event, written to both channels (DUAL).
            assert r["events"] == events, (name, r)
            # Exact books: what the consumer counted is what the kernel's counters say was written.
            assert r["consumed"] == r["written"], (name, r)
            assert row["exact"][name] is True
        c = row["c"]["report"]
        assert (c["ring_records"], c["perf_records"]) == (row["c"]["written"]["ring"], row["c"]["written"]["perf"])
        # 20 k events/s in 64 pages per CPU and a 16 MiB ring: nothing refused, so all of them arrived.
        assert row["c"]["written"] == {"perf": events, "ring": events}
        assert c["perf_lost"] == 0
        ours = row["ours"]["report"]
        assert ours["delivered"] == {"perf": events, "ring": events}
        assert ours["acted"] == {"perf": events, "ring": 0}  # DUAL acts on perf
        assert ours["residuals"] == [0]
    assert doc["rates"][0]["ratio_per_record"] is None  # idle: no record to divide by
    assert doc["rates"][1]["ours"]["cpu_us_per_record"] == round(
        doc["rates"][1]["ours"]["cpu_s"] / (2 * RATES[1] * SECONDS) * 1e6, 4)
    assert set(doc["targets"]) == {
        "idle <= 0.3 % of a core",
        *(f"{n} consumed every record written at {r:,} events/s" for r in RATES for n in ("ours", "c"))}
    assert all(ok for k, ok in doc["targets"].items() if "consumed every record" in k)


def test_bench_overhead_without_the_reference_consumer_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(REF_ENV, str(tmp_path / "missing"))
    result = CliRunner().invoke(app, ["bench", "overhead", "--rate", "0", "--seconds", "1"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: bench overhead: the libbpf reference consumer {tmp_path / 'missing'} "
                                    "is not built (fix: run `sudo bash scripts/setup.sh`")


def test_bench_overhead_refuses_a_negative_rate():
    result = CliRunner().invoke(app, ["bench", "overhead", "--rate", "-1"])
    assert result.exit_code == 2


@pytest.mark.parametrize("value, problem", [
    (0, "buffers.max_delay_ms: must be > 0, got 0"),
    (1001, "buffers.max_delay_ms: must be <= 1000, got 1001"),
    ('"5"', "buffers.max_delay_ms: must be a number, got string '5'"),
])
def test_max_delay_ms_is_validated(tmp_path, value, problem):
    p = tmp_path / "canary.toml"
    p.write_text(f"[buffers]\nmax_delay_ms = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert problem in str(err.value)


def test_max_delay_ms_default_and_value(tmp_path):
    p = tmp_path / "canary.toml"
    p.write_text("[buffers]\nmax_delay_ms = 2.5\n")
    assert load_config(p).buffers.max_delay_ms == 2.5
    p.write_text("")
    assert load_config(p).buffers.max_delay_ms == Buffers.max_delay_ms == 10.0


def test_reference_consumer_source_ships_with_the_package():
    from migrator.tools.bench import overhead

    src = os.path.join(os.path.dirname(overhead.__file__), "c", "refconsumer.c")
    text = open(src).read()
    for call in ("ring_buffer__new", "perf_buffer__new_raw", "ring_buffer__consume", "perf_buffer__consume"):
        assert call in text
