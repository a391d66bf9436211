"""migrator.dataplane.rewrite: pure text, no kernel and no bcc."""
from __future__ import annotations

import re

import pytest

from migrator.dataplane import rewrite
from migrator.dataplane.rewrite import cflags, channel_names, prepare, template, wrap_text
from migrator.errors import InstallError, MigratorError, OptionError, SourceError
from migrator.shared.resources import bpf_dir

# An expanded MIGRATOR_CHANNEL: the guard, the maps, the template, and `#line N` back.
_EXPANSION = re.compile(r"\n#ifndef MIGRATOR_H\n#error \"MIGRATOR_CHANNEL\((\w+)\): #include <migrator.h> before it\"\n"
                        r"#endif\nMIGRATOR_CHANNEL_MAPS\(\1, ([^\n]*)\);\n(.*?)#line (\d+)\n", re.S)


def squeeze(text: str) -> str:
    """The text with every expanded channel shown as <CHANNEL name bytes -> line N>."""
    def one(m):
        assert m.group(3) == template().replace("@NAME@", m.group(1))
        return f"<CHANNEL {m.group(1)} {m.group(2)} -> line {m.group(4)}>\n"
    return _EXPANSION.sub(one, text)


def out(name: str, ctx: str, ptr: str, size: str, t: str = "0", tv: str = "0") -> str:
    return (f"({{ if (0) {name}.perf_submit({ctx}, {ptr}, {size}); __migrator_output_{name}(({ctx}), "
            f"(const void *)({ptr}), (u64)({size}), (u16)({t}), (u16)({tv})); }})")


def presumed_lines(text: str) -> list[tuple[int, str]]:
    """(line number the compiler reports, line) for each line, following #line like cpp."""
    res, n = [], 1
    for line in text.split("\n"):
        m = re.match(r"#line (\d+)$", line)
        if m:
            n = int(m.group(1))
            continue
        res.append((n, line))
        n += 1
    return res


# ---- wrap_text: exact output ------------------------------------------------------------------

TOOL = r'''#include <uapi/linux/ptrace.h>
struct data_t { u32 pid; char comm[16]; };
BPF_PERF_OUTPUT(events);   /* perf */
BPF_PERF_OUTPUT(other)
// events.perf_submit(ctx, &d, sizeof(d)) in a comment
int f(struct pt_regs *ctx) {
    struct data_t d = {};
    char *s = "events.perf_submit(ctx, &d, 1)";
    events.perf_submit(ctx, &d, sizeof(d) + (get(1, (2)) * 0));
    other.perf_submit(ctx,
                      &d,
                      sizeof(d));
    bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &d, sizeof(d));
    bpf_perf_event_output(ctx, (void *)&other, BPF_F_CURRENT_CPU, (void *)&d, 4);
    return 0;
}
'''


def test_wrap_text_exact():
    text, names = wrap_text(TOOL, 65536)
    assert names == ["events", "other"]
    assert squeeze(text) == (
        "#include <migrator.h>\n#line 1\n"
        "#include <uapi/linux/ptrace.h>\n"
        "struct data_t { u32 pid; char comm[16]; };\n"
        "<CHANNEL events 65536 -> line 3>\n"
        "   /* perf */\n"
        "<CHANNEL other 65536 -> line 4>\n"
        "\n"
        "// events.perf_submit(ctx, &d, sizeof(d)) in a comment\n"
        "int f(struct pt_regs *ctx) {\n"
        "    struct data_t d = {};\n"
        '    char *s = "events.perf_submit(ctx, &d, 1)";\n'
        f"    {out('events', 'ctx', '&d', 'sizeof(d) + (get(1, (2)) * 0)')};\n"
        f"    {out('other', 'ctx', '&d', 'sizeof(d)')}\n\n;\n"
        f"    {out('events', 'ctx', '&d', 'sizeof(d)')};\n"
        f"    {out('other', 'ctx', '(void *)&d', '4')};\n"
        "    return 0;\n"
        "}\n")


def test_wrap_text_keeps_line_numbers():
    src = "".join(f"/* L{k} */ " + line + "\n" for k, line in enumerate(TOOL.splitlines(), start=1))
    text, _ = wrap_text(src, 4096)
    marked = [(n, int(m.group(1))) for n, line in presumed_lines(text) for m in [re.match(r"/\* L(\d+) \*/", line)] if m]
    # lines 11 and 12 are inside the arguments of a rewritten call: their comments go with it
    assert [orig for _, orig in marked] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16]
    assert all(n == orig for n, orig in marked)
    for n, line in presumed_lines(text):  # the rest of a channel's line keeps its number too
        if "/* perf */" in line:
            assert n == 3


def test_wrap_text_leaves_other_perf_maps_and_preprocessor_alone():
    src = ('BPF_PERF_OUTPUT(events);\n'
           'BPF_TABLE("perf_output", int, u32, raw, 16);\n'
           '#define OUT(c, p, n) events.perf_submit(c, p, n)\n'
           '#if 0\nBPF_PERF_OUTPUT(dead);\n#endif\n'
           'int f(void *ctx) { u32 v = 1; raw.perf_submit(ctx, &v, 4); '
           'bpf_perf_event_output(ctx, &raw, BPF_F_CURRENT_CPU, &v, 4); return 0; }\n')
    text, names = wrap_text(src, 4096)
    assert names == ["events"]
    body = squeeze(text)
    assert body.endswith('BPF_TABLE("perf_output", int, u32, raw, 16);\n'
                         '#define OUT(c, p, n) events.perf_submit(c, p, n)\n'
                         '#if 0\nBPF_PERF_OUTPUT(dead);\n#endif\n'
                         'int f(void *ctx) { u32 v = 1; raw.perf_submit(ctx, &v, 4); '
                         'bpf_perf_event_output(ctx, &raw, BPF_F_CURRENT_CPU, &v, 4); return 0; }\n')


def test_wrap_text_errors():
    with pytest.raises(SourceError) as e:
        wrap_text("int f(void *ctx) { return 0; }\n", 4096, filename="tool.c")
    assert (e.value.file, e.value.line) == ("tool.c", 1)
    assert "no file-scope BPF_PERF_OUTPUT" in e.value.problem
    with pytest.raises(SourceError, match="perf_submit_skb"):
        wrap_text("BPF_PERF_OUTPUT(ev);\nint f(struct __sk_buff *skb) {\n"
                  "  u32 v = 0; ev.perf_submit_skb(skb, skb->len, &v, 4); return 0; }\n", 4096)
    with pytest.raises(SourceError) as e:
        wrap_text("BPF_PERF_OUTPUT(ev);\nint f(void *ctx) {\n  u32 v = 0;\n"
                  "  bpf_perf_event_output(ctx, &ev, 3, &v, 4); return 0; }\n", 4096)
    assert e.value.line == 4 and "BPF_F_CURRENT_CPU" in e.value.fix
    with pytest.raises(SourceError, match=r"malformed ev\.perf_submit: 2 arguments"):
        wrap_text("BPF_PERF_OUTPUT(ev);\nint f(void *ctx) { u32 v; ev.perf_submit(ctx, &v); return 0; }\n", 4096)
    with pytest.raises(SourceError, match=r"unbalanced '}' in its arguments \(line 3\)"):
        wrap_text("BPF_PERF_OUTPUT(ev);\nint f(void *ctx) { u32 v; ev.perf_submit(ctx, &v, (4);\n return 0; }\n", 4096)
    with pytest.raises(SourceError, match="never closed"):
        wrap_text("BPF_PERF_OUTPUT(ev);\nint f(void *ctx) { u32 v; ev.perf_submit(ctx, &v, (4); return 0;\n", 4096)
    for bad in (0, 4095, 6000, 1.5, "4096", True):
        with pytest.raises(OptionError, match="ring_bytes"):
            wrap_text("BPF_PERF_OUTPUT(ev);\n", bad)


# ---- prepare ------------------------------------------------------------------------------------

OPERATOR = r'''#include <migrator.h>
MIGRATOR_CHANNEL(events, 1 << 22);
struct ev { u64 a; };
#define EMIT(c, p) MIGRATOR_OUTPUT(events, c, p, sizeof(*(p)))
static __always_inline void emit(void *ctx, struct ev *e)
{
    MIGRATOR_OUTPUT_TYPED(events, ctx, e, e->a ? 8 : sizeof(*e), 3, 1);
}
int f(void *ctx)
{
    struct ev e = {};
    if (MIGRATOR_OUTPUT(events, ctx, &e, sizeof(e)))
        return 1;
    MIGRATOR_RESERVE(events, struct ev, r);
    if (!r)
        return 0;
    if (r->a) { MIGRATOR_DISCARD(events, r); return 0; }
    MIGRATOR_SUBMIT(events, ctx, r);
    return 0;
}
'''


def test_prepare_exact():
    assert squeeze(prepare(OPERATOR)) == (
        "#include <migrator.h>\n"
        "<CHANNEL events 1 << 22 -> line 2>\n"
        "\n"
        "struct ev { u64 a; };\n"
        "#define EMIT(c, p) MIGRATOR_OUTPUT(events, c, p, sizeof(*(p)))\n"
        "static __always_inline void emit(void *ctx, struct ev *e)\n"
        "{\n"
        f"    {out('events', 'ctx', 'e', 'e->a ? 8 : sizeof(*e)', '3', '1')};\n"
        "}\n"
        "int f(void *ctx)\n"
        "{\n"
        "    struct ev e = {};\n"
        f"    if ({out('events', 'ctx', '&e', 'sizeof(e)')})\n"
        "        return 1;\n"
        "    MIGRATOR_RESERVE(events, struct ev, r);\n"
        "    if (!r)\n"
        "        return 0;\n"
        "    if (r->a) { MIGRATOR_DISCARD(events, r); return 0; }\n"
        "    ({ if (0) events.perf_submit(ctx, r, sizeof(*(r))); __MIGRATOR_SUBMIT(events, ctx, r); });\n"
        "    return 0;\n"
        "}\n")


def test_prepare_is_idempotent_and_names_channels():
    once = prepare(OPERATOR)
    assert prepare(once) == once
    assert channel_names(OPERATOR) == channel_names(once) == ["events"]
    assert "@NAME@" not in once and "events__ring.ringbuf_reserve(" in once


def test_prepare_skips_comments_strings_and_dead_code():
    src = ('#include <migrator.h>\n'
           '/* MIGRATOR_CHANNEL(c1, 4096); */\n'
           '// MIGRATOR_OUTPUT(nosuch, ctx, p, 1)\n'
           'const char *s = "MIGRATOR_CHANNEL(c2, 4096);";\n'
           "const char q = ')';\n"
           '#if 0\nMIGRATOR_CHANNEL(c3, 4096);\nMIGRATOR_OUTPUT(nosuch, ctx, p, 1)\n#endif\n')
    assert prepare(src) == src


def test_prepare_with_the_header_pasted_in():
    """A loader may inline migrator.h instead of compiling with -I: its macros, comments and
    template block are left alone, and the operator's part is expanded as usual."""
    header = (bpf_dir() / "migrator.h").read_text()
    operator = OPERATOR.replace("#include <migrator.h>\n", "")
    prepared = prepare(header + operator)
    assert prepared.startswith(header)
    lines_at = header.count("\n")
    assert re.sub(r"#line (\d+)", lambda m: f"#line {int(m.group(1)) - lines_at}", prepared[len(header):]) \
        == prepare(operator)
    assert channel_names(header) == []


def test_channel_in_exclusive_branches_is_not_a_duplicate():
    src = ("#include <migrator.h>\n#ifdef BIG\nMIGRATOR_CHANNEL(ev, 1 << 24);\n#elif SMALL\n"
           "MIGRATOR_CHANNEL(ev, 4096);\n#else\nMIGRATOR_CHANNEL(ev, 1 << 20);\n#endif\n")
    assert channel_names(src) == ["ev"]
    assert squeeze(prepare(src)) == ("#include <migrator.h>\n#ifdef BIG\n<CHANNEL ev 1 << 24 -> line 3>\n\n#elif SMALL\n"
                                     "<CHANNEL ev 4096 -> line 5>\n\n#else\n<CHANNEL ev 1 << 20 -> line 7>\n\n#endif\n")


@pytest.mark.parametrize("src, line, problem", [
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) {\n  MIGRATOR_OUTPUT(b, ctx, 0, 1);\n  return 0; }\n",
     3, "MIGRATOR_OUTPUT(b, ...): no channel 'b' is declared (declared: a)"),
    ("int f(void *ctx) { u32 *r = 0; MIGRATOR_SUBMIT(x, ctx, r); return 0; }\n",
     1, "MIGRATOR_SUBMIT(x, ...): no channel 'x' is declared (declared: none)"),
    ("MIGRATOR_CHANNEL(a, 4096);\n\nMIGRATOR_CHANNEL(a, 8192);\n", 3, "channel 'a' is declared twice (first on line 1)"),
    ("#ifdef X\nMIGRATOR_CHANNEL(a, 4096);\n#endif\nMIGRATOR_CHANNEL(a, 8192);\n", 4, "declared twice"),
    ("int f(void *ctx) {\n  MIGRATOR_CHANNEL(a, 4096);\n  return 0; }\n", 2, "is inside a function"),
    ("MIGRATOR_CHANNEL(a);\n", 1, "malformed MIGRATOR_CHANNEL: 1 argument, it takes 2"),
    ("MIGRATOR_CHANNEL(a, );\n", 1, "malformed MIGRATOR_CHANNEL: empty argument"),
    ("MIGRATOR_CHANNEL(a.b, 4096);\n", 1, "channel name 'a.b' is not an identifier"),
    ("MIGRATOR_CHANNEL a, 4096;\n", 1, "malformed MIGRATOR_CHANNEL: no '(' after the name"),
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) {\n  MIGRATOR_OUTPUT(a, ctx, buf[0), 1);\n}\n",
     3, "malformed MIGRATOR_OUTPUT: unbalanced ')'"),
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) {\n  MIGRATOR_OUTPUT(a, ctx, f(1, 2);\n}\n",
     3, "malformed MIGRATOR_OUTPUT: unbalanced '}' in its arguments (line 4)"),
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) {\n  MIGRATOR_OUTPUT(a, ctx, f(1, 2);\n",
     3, "malformed MIGRATOR_OUTPUT: the '(' is never closed"),
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) { MIGRATOR_OUTPUT(a, ctx, p); }\n",
     2, "malformed MIGRATOR_OUTPUT: 3 arguments, it takes 4"),
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) { MIGRATOR_OUTPUT_TYPED(a, ctx, p, 4); }\n",
     2, "malformed MIGRATOR_OUTPUT_TYPED: 4 arguments, it takes 6"),
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) { MIGRATOR_RESERVE(a, struct x, r->p); }\n",
     2, "variable name 'r->p' is not an identifier"),
    ("MIGRATOR_CHANNEL(a, 4096);\nint f(void *ctx) { MIGRATOR_DISCARD(a); }\n",
     2, "malformed MIGRATOR_DISCARD: 1 argument, it takes 2"),
])
def test_prepare_errors(src, line, problem):
    with pytest.raises(SourceError) as e:
        prepare(src, filename="op.bpf.c")
    assert isinstance(e.value, MigratorError)
    assert (e.value.file, e.value.line) == ("op.bpf.c", line)
    assert problem in e.value.problem
    assert e.value.fix and str(e.value).startswith(f"op.bpf.c:{line}: ")


def test_missing_header_is_an_install_error(monkeypatch, tmp_path):
    monkeypatch.setattr(rewrite, "bpf_dir", lambda: tmp_path)
    with pytest.raises(InstallError, match="cannot read the migrator header"):
        prepare("MIGRATOR_CHANNEL(a, 4096);\n")
    (tmp_path / "migrator.h").write_text("/* no template */\n")
    with pytest.raises(InstallError, match="no MIGRATOR_TEMPLATE_BEGIN"):
        prepare("MIGRATOR_CHANNEL(a, 4096);\n")
    assert prepare("int x;\n") == "int x;\n"  # nothing to expand: the header is not needed


# ---- the header and cflags ------------------------------------------------------------------------

def test_template_is_main_text_material():
    body = template()
    assert body.count("@NAME@") > 10
    # it must not invoke the operator macros prepare() rewrites (nor declare a channel)
    assert not re.search(r"\bMIGRATOR_(CHANNEL|OUTPUT|OUTPUT_TYPED|SUBMIT|RESERVE|RESERVE_TYPED|DISCARD)\b", body)
    assert "'" not in body  # it sits in an #if 0 block of the header
    header = (bpf_dir() / "migrator.h").read_text()
    assert header.startswith("// SPDX-License-Identifier: GPL-2.0\n")
    for suffix in ("__perf", "__ring", "__mode", "__seq", "__cnt", "__scratch"):
        assert f"name##{suffix}" in header


def test_cflags():
    assert cflags() == [f"-I{bpf_dir()}"]
    assert cflags(max_payload=64, ring_wakeup="force_wakeup") == [
        f"-I{bpf_dir()}", "-DMIGRATOR_MAX_PAYLOAD=64", "-DMIGRATOR_RING_WAKEUP=2"]
    assert cflags(ring_wakeup="no_wakeup")[1:] == ["-DMIGRATOR_RING_WAKEUP=1"]
    for bad in (0, 4, 100, 32768, True, "64"):
        with pytest.raises(OptionError, match="max_payload"):
            cflags(max_payload=bad)
    with pytest.raises(OptionError, match="ring_wakeup"):
        cflags(ring_wakeup="sometimes")
