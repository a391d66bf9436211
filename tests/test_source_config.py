"""[source]: validation with exact field names, absolute paths, the hashes, init/start refusing a
changed program, the lab's generated config keeping it, and variable-size records decoding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from migrator.config import AttachPoint, Config, load_config, parse_config
from migrator.dataplane.source import source_hash
from migrator.errors import ConfigError, SourceChanged

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "flowlog"


@pytest.fixture
def prog_dir(tmp_path):
    """A directory with a C file and a sink module, and a canary.toml writer next to them."""
    (tmp_path / "tool.bpf.c").write_text("// a program\n")
    (tmp_path / "sinks").mkdir()
    (tmp_path / "sinks" / "mysink.py").write_text("def handle(batch):\n    pass\n")

    def write(source: str) -> Path:
        p = tmp_path / "canary.toml"
        p.write_text('hosts = ["a", "b"]\nslices = [1, 2]\n' + source)
        return p
    return write


GOOD = ('[source]\nkind = "bcc"\nfile = "tool.bpf.c"\ncflags = ["-DX=1"]\nsink = "mysink:handle"\n'
        'sink_path = "sinks"\n'
        '[[source.attach]]\ntype = "tc"\nfunction = "tc_in"\ndevice = "{host}-n"\nnetns = "{host}"\n'
        '[[source.attach]]\ntype = "xdp"\nfunction = "xdp_in"\ndevice = "eth0"\nmode = "skb"\n')


def test_bcc_source_resolves_paths_and_enters_the_hash(prog_dir, tmp_path):
    cfg = load_config(prog_dir(GOOD))
    src = cfg.source
    assert (src.kind, src.file, src.cflags, src.channel, src.sink, src.sink_path) == (
        "bcc", str(tmp_path / "tool.bpf.c"), ("-DX=1",), "events", "mysink:handle", str(tmp_path / "sinks"))
    assert (src.sink_module, src.sink_function) == ("mysink", "handle")
    assert src.attach == (AttachPoint("tc", "tc_in", "{host}-n", "{host}", direction="ingress"),
                          AttachPoint("xdp", "xdp_in", "eth0", "", mode="skb"))
    assert src.attach[0].for_host("web7") == AttachPoint("tc", "tc_in", "web7-n", "web7")
    d = cfg.to_dict()["source"]
    assert d["file"] == str(tmp_path / "tool.bpf.c") and d["attach"][1] == {
        "type": "xdp", "function": "xdp_in", "device": "eth0", "mode": "skb"}
    # the parsed dict round-trips, also where the files are not (a stored snapshot, read anywhere)
    assert parse_config(cfg.to_dict()).hash == cfg.hash
    moved = dict(cfg.to_dict(), source=dict(d, file="/nonexistent/tool.bpf.c"))
    assert parse_config(moved, check_files=False).source.file == "/nonexistent/tool.bpf.c"
    # the hash covers [source]; an explicit demo table is the default and hashes like none at all
    assert cfg.hash != load_config(prog_dir(GOOD.replace('"-DX=1"', '"-DX=2"'))).hash
    assert load_config(prog_dir('[source]\nkind = "demo"\n')).hash == load_config(prog_dir("")).hash
    assert load_config(prog_dir("")).to_dict() == parse_config({"hosts": ["a", "b"], "slices": [1, 2]}).to_dict()
    assert "source" not in Config().to_dict()


def test_command_source(prog_dir):
    cfg = load_config(prog_dir('[source]\nkind = "command"\ncommand = ["python3", "tool.py", "-v"]\n'))
    assert (cfg.source.kind, cfg.source.command, cfg.source.channel) == ("command", ("python3", "tool.py", "-v"), "events")
    assert cfg.to_dict()["source"] == {"kind": "command", "command": ["python3", "tool.py", "-v"], "channel": "events"}
    assert source_hash(cfg) is None


BCC = '[source]\nkind = "bcc"\nfile = "tool.bpf.c"\nsink = "mysink:handle"\nsink_path = "sinks"\n'
TC = '[[source.attach]]\ntype = "tc"\nfunction = "tc_in"\ndevice = "{host}-n"\n'
BAD = [
    ("not a table", "source = 3\n", "source", "must be a table, got integer"),
    ("bad kind", '[source]\nkind = "binary"\n', "source.kind", "must be one of demo, bcc, command, attach, got 'binary'"),
    ("unknown key", BCC + 'files = "x.c"\n', "source.files", "unknown key"),
    ("key of another kind", '[source]\nkind = "demo"\nfile = "tool.bpf.c"\n', "source.file",
     'is not used with kind = "demo"'),
    ("command key on bcc", BCC + 'command = ["x"]\n', "source.command", 'is not used with kind = "bcc"'),
    ("missing file", '[source]\nkind = "bcc"\nsink = "mysink:handle"\n', "source.file", 'is required with kind = "bcc"'),
    ("file does not exist", BCC.replace("tool.bpf.c", "nope.bpf.c"), "source.file", "does not exist"),
    ("file is a directory", BCC.replace("tool.bpf.c", "sinks"), "source.file", "is not a file"),
    ("missing sink", '[source]\nkind = "bcc"\nfile = "tool.bpf.c"\n', "source.sink", 'is required with kind = "bcc"'),
    ("sink without function", BCC.replace("mysink:handle", "mysink"), "source.sink",
     "must be \"module:function\", got 'mysink'"),
    ("sink with a path", BCC.replace("mysink:handle", "sinks/mysink.py:handle"), "source.sink",
     "must be \"module:function\", got 'sinks/mysink.py:handle'"),
    ("sink_path missing", BCC.replace('sink_path = "sinks"', 'sink_path = "nowhere"'), "source.sink_path",
     "is not a directory"),
    ("cflags not an array", BCC + 'cflags = "-DX=1"\n', "source.cflags", "must be an array of strings"),
    ("cflag not a string", BCC + 'cflags = ["-DX=1", 2]\n', "source.cflags[1]", "must be a non-empty string, got 2"),
    ("channel not an identifier", BCC + 'channel = "my-events"\n', "source.channel",
     "must be the C identifier of a MIGRATOR_CHANNEL, got 'my-events'"),
    ("attach not an array", BCC + 'attach = "tc"\n', "source.attach", "must be an array of tables, got string"),
    ("attach entry not a table", BCC + 'attach = ["tc"]\n', "source.attach[0]", "must be a table, got string"),
    ("attach without type", BCC + '[[source.attach]]\nfunction = "f"\ndevice = "eth0"\n', "source.attach[0].type",
     "is required"),
    ("attach unknown type", BCC + '[[source.attach]]\ntype = "kprobe"\nfunction = "f"\ndevice = "eth0"\n',
     "source.attach[0].type", "must be one of tc, xdp, got 'kprobe'"),
    ("attach without device", BCC + '[[source.attach]]\ntype = "tc"\nfunction = "f"\n', "source.attach[0].device",
     'is required with type = "tc"'),
    ("attach without function", BCC + '[[source.attach]]\ntype = "xdp"\ndevice = "eth0"\n',
     "source.attach[0].function", 'is required with type = "xdp"'),
    ("attach function not a C name", BCC + TC.replace('"tc_in"', '"tc-in"'), "source.attach[0].function",
     "must be the C name of a function in the program, got 'tc-in'"),
    ("tc key on xdp", BCC + '[[source.attach]]\ntype = "xdp"\nfunction = "f"\ndevice = "eth0"\ndirection = "ingress"\n',
     "source.attach[0].direction", "unknown key"),
    ("bad direction", BCC + TC + 'direction = "both"\n', "source.attach[0].direction",
     "must be one of ingress, egress, got 'both'"),
    ("bad xdp mode", BCC + '[[source.attach]]\ntype = "xdp"\nfunction = "f"\ndevice = "eth0"\nmode = "hw"\n',
     "source.attach[0].mode", "must be one of auto, skb, native, got 'hw'"),
    ("unknown placeholder", BCC + TC.replace("{host}-n", "{hostname}-n"), "source.attach[0].device",
     "has a placeholder other than {host}: '{hostname}-n'"),
    ("empty device", BCC + TC.replace('"{host}-n"', '""'), "source.attach[0].device", "must be a non-empty string"),
    ("same hook twice", BCC + TC + TC.replace("tc_in", "tc_other"), "source.attach[1]",
     "attaches to the same hook as source.attach[0]"),
    ("command missing", '[source]\nkind = "command"\n', "source.command", 'is required with kind = "command"'),
    ("command empty", '[source]\nkind = "command"\ncommand = []\n', "source.command",
     "must be a non-empty array of strings, got []"),
    ("command argument empty", '[source]\nkind = "command"\ncommand = ["tool", ""]\n', "source.command[1]",
     "must be a non-empty string, got ''"),
]


@pytest.mark.parametrize("body,field,problem", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_source_names_the_field(prog_dir, body, field, problem):
    path = prog_dir(body)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    e = exc.value
    assert (e.path, e.field) == (str(path), field), str(e)
    assert e.problem.startswith(problem) or problem in e.problem, str(e)
    assert e.fix, "every error says how to fix it"
    assert str(e).startswith(f"{path}: {field}: ")


def test_unknown_source_key_lists_the_kinds_keys(prog_dir):
    with pytest.raises(ConfigError) as exc:
        load_config(prog_dir(BCC + "sinkpath = 1\n"))
    assert exc.value.problem == "unknown key, did you mean sink_path?"
    assert exc.value.fix == "rename it sink_path, or remove it; known keys here: kind, file, cflags, channel, sink, sink_path, attach"


def test_source_hash_covers_file_cflags_and_header(prog_dir, tmp_path):
    cfg = load_config(prog_dir(BCC))
    h = source_hash(cfg)
    assert len(h) == 64 and h == source_hash(load_config(prog_dir(BCC)))
    assert source_hash(load_config(prog_dir(BCC + 'cflags = ["-DX=1"]\n'))) != h
    (tmp_path / "tool.bpf.c").write_text("// a program, edited\n")
    assert source_hash(cfg) != h
    assert source_hash(load_config(prog_dir(""))) is None


def test_init_records_the_source_hash_and_start_refuses_a_changed_program(prog_dir, tmp_path):
    from migrator.control import moves
    from migrator.store import open_store

    cfg = load_config(prog_dir(BCC))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        m, created = moves.init_migration(s, cfg)
        assert created and m.source_hash == source_hash(cfg)
    with sf() as s, s.begin():
        m, created = moves.init_migration(s, cfg)  # the same plan and program again: a no-op
        assert not created
        moves.check_same_config(m, cfg)
    (tmp_path / "tool.bpf.c").write_text("// edited mid-migration\n")
    with sf() as s:
        m = moves.api.active_migration(s)
        with pytest.raises(SourceChanged, match=r"tool\.bpf\.c \(its bytes, cflags or migrator\.h\) changed since "
                                                r"migration 1 was initialised"):
            moves.check_same_config(m, cfg)
    with sf() as s, s.begin(), pytest.raises(SourceChanged, match="migration 1 is PLANNED with another build"):
        moves.init_migration(s, cfg)


def test_demo_init_records_no_source_hash(prog_dir):
    from migrator.control import moves
    from migrator.store import open_store

    cfg = load_config(prog_dir(""))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        m, _ = moves.init_migration(s, cfg)
        assert m.source_hash is None
        moves.check_same_config(m, cfg)


def test_lab_config_keeps_the_source_with_absolute_paths(tmp_path):
    from migrator.tools.lab.run import lab_config

    base = load_config(EXAMPLE / "canary.toml")
    cfg, path = lab_config(base, tmp_path, hosts=2, window=None, rollback_after=None, prefix="zz")
    assert cfg.source == base.source
    assert cfg.source.file == str(EXAMPLE / "flowlog.bpf.c") and cfg.source.sink_path == str(EXAMPLE)
    assert 'attach = [{type = "tc", function = "tc_flowlog", device = "{host}-n", netns = "{host}", ' \
           'direction = "ingress"}]' in path.read_text()


def test_example_config_is_valid():
    cfg = load_config(EXAMPLE / "canary.toml")
    assert (cfg.source.kind, cfg.source.sink, cfg.source.channel) == ("bcc", "sink:handle", "events")
    assert [(a.type, a.function, a.direction) for a in cfg.source.attach] == [("tc", "tc_flowlog", "ingress")]


def test_variable_size_records_decode_with_their_own_bytes():
    """A layout with a trailing array (bcc's `sizeof(e) - MAX + n`) reads records of any size
    from the tail's offset up; bytes a record does not carry are zeros, never the next record's."""
    from migrator.dataplane.frames import HDR_DTYPE, HDR_SIZE, Frames
    from migrator.dataplane.schema import Registry, tail_offset

    layout = np.dtype([("key", "<u4"), ("cap_len", "<u2"), ("pad", "<u2"), ("payload", "u1", (16,))])
    assert tail_offset(layout) == 8 and tail_offset(np.dtype([("a", "<u4"), ("b", "<u8")])) is None
    reg = Registry()
    reg.register(0, 0, layout, min_size=tail_offset(layout))
    caps = [0, 5, 16, 3]
    chunks, offs, hdrs = [], [], []
    pos = 0
    for i, n in enumerate(caps):
        body = np.zeros(8 + n, np.uint8)
        body[:4] = np.frombuffer(np.uint32(100 + i).tobytes(), np.uint8)
        body[4:6] = np.frombuffer(np.uint16(n).tobytes(), np.uint8)
        body[8:] = 0xA0 + i
        hdr = np.zeros(1, HDR_DTYPE)
        hdr["hdr_version"], hdr["len"], hdr["seq"] = 1, len(body), i
        chunks += [hdr.view(np.uint8), body]
        offs.append(pos + HDR_SIZE)
        hdrs.append(hdr)
        pos += HDR_SIZE + len(body)
    short = np.zeros(1, HDR_DTYPE)
    short["hdr_version"], short["len"], short["seq"] = 1, 6, 9  # below the tail's offset: a parse error
    chunks += [short.view(np.uint8), np.full(6, 0xEE, np.uint8)]
    offs.append(pos + HDR_SIZE)
    hdrs.append(short)
    frames = Frames(np.concatenate(hdrs), np.concatenate(chunks), np.asarray(offs, np.int64))
    assert reg.check(frames) == 1
    rows = reg.decode(frames, count_errors=False)[0]
    assert rows["key"].tolist() == [100, 101, 102, 103] and rows["cap_len"].tolist() == caps
    for i, n in enumerate(caps):
        assert rows["payload"][i, :n].tolist() == [0xA0 + i] * n
        assert not rows["payload"][i, n:].any()
    assert reg.fingerprint() != Registry().fingerprint()
    plain = Registry()
    plain.register(0, 0, layout)
    assert plain.fingerprint() != reg.fingerprint()  # min_size is part of the schema
    assert plain.check(frames) == 4  # without it, every short record is an error, as before


def test_agent_refuses_a_program_edited_since_init(prog_dir, tmp_path):
    from migrator.agent.loop import Agent
    from migrator.control import moves
    from migrator.store import open_store

    cfg = load_config(prog_dir(BCC))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = moves.init_migration(s, cfg)[0].id
    (tmp_path / "tool.bpf.c").write_text("// edited after init\n")
    with pytest.raises(SourceChanged, match=r"tool\.bpf\.c \(its bytes, cflags or migrator\.h\) changed"):
        Agent(sf, cfg, "a", mid).run(deadline=0)  # refused before anything is compiled


def test_sink_import_errors_name_the_field(prog_dir, tmp_path, monkeypatch):
    import sys

    from migrator.dataplane.operator import check_sink, import_sink
    from migrator.errors import MigratorError

    monkeypatch.setattr(sys, "path", list(sys.path))  # import_sink puts sink_path first
    monkeypatch.setattr(sys, "modules", dict(sys.modules))

    (tmp_path / "sinks" / "broken.py").write_text("raise RuntimeError('boom')\n")
    src = load_config(prog_dir(BCC)).source
    assert check_sink(src) == str(tmp_path / "sinks" / "mysink.py")
    assert import_sink(src).__name__ == "handle"
    for sink, msg in [("nosuch:handle", "importing 'nosuch' from .* failed: ModuleNotFoundError"),
                      ("broken:handle", "importing 'broken' .* failed: RuntimeError: boom"),
                      ("mysink:other", ".*mysink.py has no function 'other'")]:
        bad = load_config(prog_dir(BCC.replace("mysink:handle", sink))).source
        with pytest.raises(MigratorError, match=r"\[source\] sink '" + sink + "': " + msg):
            import_sink(bad)


def test_plan_without_root_says_it_skipped_compilation(monkeypatch):
    from typer.testing import CliRunner

    from migrator.cli import app

    monkeypatch.setattr("migrator.cli.control.os.geteuid", lambda: 1000)
    res = CliRunner().invoke(app, ["plan", "-c", str(EXAMPLE / "canary.toml")])
    assert res.exit_code == 0, res.output
    assert f"sink sink:handle: def found in {EXAMPLE / 'sink.py'}" in res.output
    assert "compilation skipped: not running as root (loading BPF programs needs root)" in res.output
