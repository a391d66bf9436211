"""canary.toml: defaults, resolution of hosts/slices/database, hash, and exact validation messages."""
from __future__ import annotations

from pathlib import Path

import pytest

from migrator.config import Config, load_config, parse_config
from migrator.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_canary_toml_is_the_defaults():
    cfg = load_config(ROOT / "canary.toml")
    assert cfg.to_dict() == Config().to_dict()
    assert cfg.host_names == ("mig1", "mig2", "mig3", "mig4")
    assert cfg.slice_hosts == (("mig1",), ("mig1", "mig2"), ("mig1", "mig2", "mig3", "mig4"))
    assert cfg.database_url == f"sqlite:///{ROOT / 'migrator.db'}"


def test_hash_is_canonical(toml_file):
    a = load_config(toml_file("rollback_after = 3\n[lab]\nhosts = 4\n", "a.toml"))
    b = load_config(toml_file("# rollback_after left at its default, 3\n[lab]\nhosts=4\n", "b.toml"))
    c = load_config(toml_file("rollback_after = 4\n", "c.toml"))
    assert a.hash == b.hash != c.hash
    assert parse_config(a.to_dict()).hash == a.hash


def test_slices_resolve_cumulatively():
    cfg = parse_config({"hosts": ["a", "b", "c", "d"], "slices": [["c"], "50%", 3, "100%"]})
    assert cfg.slice_hosts == (("c",), ("c", "a"), ("c", "a", "b"), ("c", "a", "b", "d"))


def test_database_url_passes_through():
    assert parse_config({"database": "postgresql://x@db/m"}).database_url == "postgresql://x@db/m"


BAD = [
    ("unknown top-level key", "rollback_afterr = 3\n",
     "rollback_afterr: unknown key, did you mean rollback_after? (fix: rename it rollback_after, or remove it; "
     "known keys here: database, database_file, window_seconds, hosts, slices, "
     "rollback_after, no_data, phases, thresholds, probe, buffers, lab, source, agents, notify, store)"),
    ("unknown nested key", "[thresholds]\nmax_loss = 0.1\n",
     "thresholds.max_loss: unknown key, did you mean max_loss_rate? (fix: rename it max_loss_rate, or remove it; "
     "known keys here: max_loss_rate, max_lag_p99_ms, "
     "max_loss_delta, max_lag_ratio, max_cpu_ratio, max_inversions, min_events, max_parse_errors, "
     "max_payload_mismatch, max_producer_ratio, max_producer_ns)"),
    ("wrong type", 'rollback_after = "3"\n',
     "rollback_after: must be an integer, got string '3' (fix: write e.g. rollback_after = 3)"),
    ("N = 0", "rollback_after = 0\n", "rollback_after: must be >= 1, got 0 (fix: use a value >= 1)"),
    ("negative threshold", "[thresholds]\nmax_loss_rate = -0.5\n",
     "thresholds.max_loss_rate: must be >= 0, got -0.5 (fix: thresholds cannot be negative)"),
    ("rate above 1", "[thresholds]\nmax_loss_rate = 2\n",
     "thresholds.max_loss_rate: must be <= 1.0, got 2 (fix: a rate is a fraction between 0 and 1.0)"),
    ("empty slices", "slices = []\n",
     """slices: must be a non-empty array, got [] (fix: write e.g. slices = [1, "50%", "100%"])"""),
    ("slices not ending at all hosts", 'slices = [1, "50%"]\n',
     'slices: last slice covers 2 of 4 hosts (fix: end the list with "100%" (or 4, the number of hosts))'),
    ("slices shrinking", 'slices = [2, 1, 4]\n',
     "slices[1]: must grow: 1 host(s) after 2 in the previous slice (fix: make every slice larger than the one before)"),
    ("bad no_data", 'no_data = "ignore"\n',
     """no_data: must be one of hold, breach, reset, got 'ignore' (fix: write e.g. no_data = "hold")"""),
    ("ring_bytes not power of two", "[buffers]\nring_bytes = 12288\n",
     "buffers.ring_bytes: must be a power of two of at least 4096 bytes (one page), got 12288 (fix: use e.g. 16384)"),
    ("perf_pages not power of two", "[buffers]\nperf_pages = 3\n",
     "buffers.perf_pages: must be a power of two, got 3 (fix: use e.g. 4)"),
    ("bool as number", "window_seconds = true\n",
     "window_seconds: must be a number, got boolean True (fix: write e.g. window_seconds = 1.0)"),
    ("zero window", "window_seconds = 0\n", "window_seconds: must be > 0, got 0 (fix: use a positive number)"),
    ("unknown probe", '[probe]\nname = "kprobe"\n',
     """probe.name: must be one of tc, synthetic, proc, got 'kprobe' (fix: write e.g. name = "tc")"""),
    ("manual_gate not bool", '[phases.shadow]\nmanual_gate = "yes"\n',
     "phases.shadow.manual_gate: must be true or false, got string 'yes' (fix: write manual_gate = true or manual_gate = false)"),
    ("unknown slice host", 'hosts = ["a", "b"]\nslices = [["z"], 2]\n',
     "slices[0]: names unknown hosts ['z'] (fix: use hosts from: a, b)"),
    ("duplicate host", 'hosts = ["a", "a"]\n', "hosts: host 'a' is listed twice (fix: list each host once)"),
    ("section not a table", "thresholds = 3\n", "thresholds: must be a table, got integer (fix: write it as [thresholds])"),
    ("rollback_after above its maximum", "rollback_after = 10001\n",
     "rollback_after: must be between 1 and 10000, got 10001 (fix: use a value from 1 to 10000)"),
    ("lab.hosts above lab up's 64", "[lab]\nhosts = 65\n", "lab.hosts: must be between 1 and 64, got 65 (fix: use a value from 1 to 64)"),
    ("slice names a host twice", 'hosts = ["a", "b"]\nslices = [["a", "a"], 2]\n',
     "slices[0]: names host 'a' twice (fix: list each host once in a slice)"),
]


@pytest.mark.parametrize("body,expected", [(b, e) for _, b, e in BAD], ids=[n for n, _, _ in BAD])
def test_bad_config_messages(toml_file, body, expected):
    path = toml_file(body)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: {expected}"
    assert exc.value.exit_code == 1


def test_syntax_error(toml_file):
    path = toml_file("rollback_after = = 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == (f"{path}: is not valid TOML: Invalid value (at line 1, column 18) "
                              "(fix: correct the TOML syntax there)")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)  # a directory: cannot be read even as root
    assert str(exc.value) == f"{tmp_path}: cannot be read: Is a directory (fix: give the path of a readable canary.toml)"
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.toml")
    assert str(exc.value) == (f"{tmp_path / 'nope.toml'}: does not exist (fix: check the path, or write the commented "
                              f"default there with `migrator init --example > {tmp_path / 'nope.toml'}`)")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe rollback")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(tmp_path / "bin.toml")
