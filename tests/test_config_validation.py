"""Survive the faults, item 6: every malformed canary.toml is refused by `plan` and by `init` with one
`Error:` line naming the file, the field and the fix, exit 1, and nothing written.

The database checks are real: a path under a regular file, a missing directory, a read-only
tmpfs mount (when this process may mount one), a driver that is not installed. Validation is
linear in the number of hosts (a million hosts are checked for correctness here; the timing is
measured outside the test suite).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest
from typer.testing import CliRunner

from kernel_util import unavailable
from migrator import config as C
from migrator.cli import app
from migrator.config import parse_config
from migrator.errors import ConfigError

runner = CliRunner()
PLAN = 'hosts = ["h1", "h2"]\nslices = [1, 2]\n'


def write(tmp_path, body: str):
    p = tmp_path / "canary.toml"
    p.write_text(body)
    return p


def refused(cmd: str, p, field: str) -> str:
    """Run `cmd` on canary.toml `p`: exit 1, one `Error: <file>: <field>: ... (fix: ...)` line."""
    args = [cmd, "-c", str(p)] if cmd == "plan" else [cmd, str(p)]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    assert isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"Error: {p}: {field}: "), lines[0]
    assert "(fix: " in lines[0], lines[0]
    return lines[0]


def missing_driver_url() -> str | None:
    """A URL whose dialect exists but whose DBAPI module is not installed here."""
    for url, module in (("postgresql+psycopg://u@db/x", "psycopg"), ("postgresql+psycopg2://u@db/x", "psycopg2"),
                        ("mysql+mysqldb://u@db/x", "MySQLdb"), ("mysql+pymysql://u@db/x", "pymysql"),
                        ("oracle+oracledb://u@db/x", "oracledb")):
        if importlib.util.find_spec(module) is None:
            return url
    return None


# ---- the database: caught by plan, and by init before anything is written -----------------------

@pytest.mark.parametrize("cmd", ["plan", "init"])
@pytest.mark.parametrize("database,says", [
    ("nosuch://x", "unknown database scheme 'nosuch'"),
    ("://x", "is not a valid database URL"),
    ("postgresql://u:secret@db.example:port/x", "is not a valid database URL"),
    ("sqlite://", "in-memory SQLite database"),
    ("sqlite:///:memory:", "in-memory SQLite database"),
], ids=["unknown-scheme", "unparsable", "bad-port", "sqlite-memory", "sqlite-colon-memory"])
def test_database_url_refused(tmp_path, cmd, database, says):
    p = write(tmp_path, f"database = {database!r}\n" + PLAN)
    line = refused(cmd, p, "database")
    assert says in line and "secret" not in line
    assert os.listdir(tmp_path) == ["canary.toml"]


@pytest.mark.parametrize("cmd", ["plan", "init"])
def test_driver_not_installed(tmp_path, cmd):
    url = missing_driver_url()
    if url is None:
        pytest.skip("every candidate driver is installed here")
    p = write(tmp_path, f"database = {url!r}\n" + PLAN)
    line = refused(cmd, p, "database")
    assert "its database driver is not installed" in line and "pip install" in line


@pytest.mark.parametrize("cmd", ["plan", "init"])
def test_sqlite_under_a_regular_file(tmp_path, cmd):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory\n")
    db = blocker / "sub" / "m.db"
    p = write(tmp_path, f"database = {str(db)!r}\n" + PLAN)
    line = refused(cmd, p, "database")
    assert f"directory {db.parent} cannot exist: {blocker} is a file, not a directory" in line
    assert sorted(os.listdir(tmp_path)) == ["canary.toml", "file.txt"]


@pytest.mark.parametrize("cmd", ["plan", "init"])
def test_sqlite_directory_missing_is_not_created(tmp_path, cmd):
    db = tmp_path / "no" / "such" / "m.db"
    p = write(tmp_path, f"database = {str(db)!r}\n" + PLAN)
    line = refused(cmd, p, "database")
    assert line == (f"Error: {p}: database: sqlite:///{db}: directory {db.parent} does not exist (migrator does not "
                    f"create it) (fix: create {db.parent} first (mkdir -p {db.parent}), or point database at an "
                    "existing directory)")
    assert os.listdir(tmp_path) == ["canary.toml"]


def test_sqlite_relative_path_in_the_configs_own_directory_works(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    p = write(tmp_path, 'database = "m.db"\n' + PLAN)
    r = runner.invoke(app, ["init", str(p)])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "m.db").is_file()


@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        os.chmod(d, 0o555)
        yield d
        os.chmod(d, 0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        unavailable(f"cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("cmd", ["plan", "init"])
def test_sqlite_directory_not_writable(tmp_path, readonly_dir, cmd):
    db = readonly_dir / "m.db"
    p = write(tmp_path, f"database = {str(db)!r}\n" + PLAN)
    line = refused(cmd, p, "database")
    assert f"directory {readonly_dir} is" in line and ("read-only filesystem" in line or "not writable" in line)
    assert f"make {readonly_dir} writable" in line
    assert not db.exists()


# ---- slices -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["plan", "init"])
def test_slice_naming_a_host_twice(tmp_path, cmd):
    p = write(tmp_path, 'hosts = ["a", "b", "c"]\nslices = [["a"], ["a", "b", "b"], 3]\n')
    line = refused(cmd, p, "slices[1]")
    assert line == f"Error: {p}: slices[1]: names host 'b' twice (fix: list each host once in a slice)"
    assert os.listdir(tmp_path) == ["canary.toml"]


def test_too_many_slices(toml_file):
    hosts = [f"h{i}" for i in range(1, 202)]
    with pytest.raises(ConfigError) as exc:
        parse_config({"hosts": hosts, "slices": list(range(1, 202))})
    assert (exc.value.field, exc.value.exit_code) == ("slices", 1)
    assert "between 1 and 100 slices, got 201" in exc.value.problem


# ---- documented maxima --------------------------------------------------------------------------

MAXIMA = [
    ("rollback_after", "rollback_after = 10001\n", "must be between 1 and 10000, got 10001",
     "use a value from 1 to 10000"),
    ("window_seconds", "window_seconds = 3601\n", "must be <= 3600, got 3601",
     "use a window from more than 0 to 3600 seconds"),
    ("phases.canary.min_clean_windows", "[phases.canary]\nmin_clean_windows = 1000000001\n",
     "must be between 0 and 1000000000, got 1000000001", "use a value from 0 to 1000000000"),
    ("lab.hosts", "[lab]\nhosts = 65\n", "must be between 1 and 64, got 65", "use a value from 1 to 64"),
    ("lab.pps", "[lab]\npps = 1000001\n", "must be between 1 and 1000000, got 1000001", "use a value from 1 to 1000000"),
    ("probe.rate", "[probe]\nrate = 10000001\n", "must be between 1 and 10000000, got 10000001",
     "use a value from 1 to 10000000"),
    ("buffers.perf_pages", "[buffers]\nperf_pages = 32768\n", "must be between 1 and 16384, got 32768",
     "use a value from 1 to 16384"),
    ("buffers.ring_bytes", "[buffers]\nring_bytes = 2147483648\n", "must be between 4096 and 1073741824, got 2147483648",
     "use a value from 4096 to 1073741824"),
    ("thresholds.min_events", "[thresholds]\nmin_events = 1000000001\n",
     "must be between 1 and 1000000000, got 1000000001", "use a value from 1 to 1000000000"),
    ("thresholds.max_inversions", "[thresholds]\nmax_inversions = 1000000001\n",
     "must be between 0 and 1000000000, got 1000000001", "use a value from 0 to 1000000000"),
    ("thresholds.max_parse_errors", "[thresholds]\nmax_parse_errors = 9223372036854775807\n",
     "must be between 0 and 1000000000, got 9223372036854775807", "use a value from 0 to 1000000000"),
    ("thresholds.max_payload_mismatch", "[thresholds]\nmax_payload_mismatch = 1000000001\n",
     "must be between 0 and 1000000000, got 1000000001", "use a value from 0 to 1000000000"),
    ("thresholds.max_lag_p99_ms", "[thresholds]\nmax_lag_p99_ms = 3600001\n", "must be <= 3.6e+06, got 3600001",
     "use a limit from more than 0 to 3.6e+06 ms"),
    ("thresholds.max_lag_ratio", "[thresholds]\nmax_lag_ratio = 1e7\n", "must be <= 1e+06, got 10000000.0",
     "use a ratio from more than 0 to 1e+06"),
    ("agents.lost_after_windows", "[agents]\nlost_after_windows = 10001\n", "must be between 1 and 10000, got 10001",
     "use a value from 1 to 10000"),
]


@pytest.mark.parametrize("cmd", ["plan", "init"])
@pytest.mark.parametrize("field,body,problem,fix", MAXIMA, ids=[m[0] for m in MAXIMA])
def test_value_above_its_maximum(tmp_path, cmd, field, body, problem, fix):
    p = write(tmp_path, 'hosts = ["h1", "h2"]\nslices = [1, 2]\n' + body)
    line = refused(cmd, p, field)
    assert line == f"Error: {p}: {field}: {problem} (fix: {fix})"
    assert os.listdir(tmp_path) == ["canary.toml"]


@pytest.mark.parametrize("field,body,problem,fix", MAXIMA, ids=[m[0] for m in MAXIMA])
def test_maximum_itself_is_accepted(field, body, problem, fix):
    import tomllib

    data = tomllib.loads(body)
    sect, _, key = field.rpartition(".")
    node = data
    for part in sect.split(".") if sect else []:
        node = node[part]
    top = {"lab.hosts": C.MAX_LAB_HOSTS, "lab.pps": C.MAX_LAB_PPS, "probe.rate": C.MAX_PROBE_RATE,
           "buffers.perf_pages": C.MAX_PERF_PAGES, "buffers.ring_bytes": C.MAX_RING_BYTES,
           "rollback_after": C.MAX_ROLLBACK_AFTER, "window_seconds": C.MAX_WINDOW_SECONDS,
           "phases.canary.min_clean_windows": C.MAX_CLEAN_WINDOWS, "thresholds.max_lag_p99_ms": C.MAX_LAG_MS,
           "thresholds.max_lag_ratio": C.MAX_RATIO, "agents.lost_after_windows": C.MAX_LOST_AFTER_WINDOWS}.get(field, C.MAX_WINDOW_COUNT)
    node[key] = top
    parse_config(data)  # no error at the bound


def test_lab_maximum_is_lab_ups():
    from migrator.tools.lab.names import MAX_HOSTS

    assert C.MAX_LAB_HOSTS == MAX_HOSTS


def test_shipped_canary_toml_documents_the_ranges():
    from migrator.shared.resources import example_config

    text = example_config()
    for s in ("3600", "1..10000", "0..1000000000", "1..64", "1..1000000", "1..10000000", "1073741824 (1 GiB)",
              "1..16384", "3600000", "At most 100 slices", "create it first"):
        assert s in text, s


# ---- a million hosts: linear validation -----------------------------------------------------------

N = 1_000_000


@pytest.fixture(scope="module")
def million():
    return [f"h{i}" for i in range(1, N + 1)]


def test_a_million_hosts_with_counts_and_percentages(million):
    cfg = parse_config({"hosts": million, "slices": [1, "50%", "100%"]})
    assert cfg.host_names == tuple(million)
    assert [len(s) for s in cfg.slice_hosts] == [1, N // 2, N]
    assert cfg.slice_hosts[1][-1] == f"h{N // 2}" and cfg.slice_hosts[2] == tuple(million)


def test_a_million_hosts_with_host_lists(million):
    tail = list(reversed(million[1:]))
    cfg = parse_config({"hosts": million, "slices": [["h1"], ["h1", *tail[: N // 2]], "75%", ["h1", *tail]]})
    assert [len(s) for s in cfg.slice_hosts] == [1, N // 2 + 1, 3 * N // 4, N]
    # "75%" takes the next hosts in canary order that the host list left out: h2, h3, ...
    assert cfg.slice_hosts[2][N // 2 + 1:N // 2 + 3] == ("h2", "h3")
    assert len(set(cfg.slice_hosts[2])) == 3 * N // 4


def test_a_million_hosts_errors_at_the_end(million):
    with pytest.raises(ConfigError) as exc:
        parse_config({"hosts": million + ["h7"]})
    assert (exc.value.field, exc.value.problem) == ("hosts", "host 'h7' is listed twice")
    with pytest.raises(ConfigError) as exc:
        parse_config({"hosts": million, "slices": [1, million + ["h9"]]})
    assert (exc.value.field, exc.value.problem) == ("slices[1]", "names host 'h9' twice")
    with pytest.raises(ConfigError) as exc:
        parse_config({"hosts": million, "slices": [["h5"], million[5:], "100%"]})
    assert (exc.value.field, exc.value.problem) == (
        "slices[1]", "drops hosts ['h5'] that an earlier slice already moved to ring")
