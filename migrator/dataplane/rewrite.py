"""Text functions that turn a bcc program into one using migrator channels (bpf/migrator.h).

bcc (0.26) rewrites map method calls (`m.perf_submit()`, `m.ringbuf_output()`) only where they
are written literally in the main program text, never inside a macro or an #included file.
So migrator.h carries declarations and macros, and:

* prepare(text) pastes the per-channel template of migrator.h in place of every file-scope
  `MIGRATOR_CHANNEL(name, bytes);`, and rewrites every `MIGRATOR_OUTPUT[_TYPED](...)` and
  `MIGRATOR_SUBMIT(...)` call into a statement expression that starts with a dead
  `if (0) name.perf_submit(ctx, ptr, size);` (bcc then records the payload type on the anchor
  map `name`, so bpf["name"].event(payload) decodes the operator's struct) and then calls the
  generated function.
* wrap_text(text, ring_bytes) does the operator's 3-line edit on an unmodified bcc program
  (BPF_PERF_OUTPUT -> MIGRATOR_CHANNEL, perf_submit -> MIGRATOR_OUTPUT) and then prepare().
* cflags() gives the -I for `#include <migrator.h>` and the -D build knobs.

Everything here is pure text: no kernel and no bcc needed. Comments, string literals,
preprocessor directives and `#if 0` blocks are never rewritten. Line numbers after a pasted
template are restored with `#line`, so compiler messages point at the operator's lines.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import InstallError, OptionError, SourceError
from migrator.shared.resources import bpf_dir
from migrator.shared.vocab import RING_WAKEUPS  # values of -DMIGRATOR_RING_WAKEUP
from migrator.shared.vocab import RING_BYTES_RULE, is_ring_bytes

HEADER = "migrator.h"
TEMPLATE_BEGIN, TEMPLATE_END = "MIGRATOR_TEMPLATE_BEGIN", "MIGRATOR_TEMPLATE_END"
# A per-CPU map value is at most 32 KiB; the scratch is the 32-byte header + the payload.
MAX_PAYLOAD_LIMIT = 16384
# How many arguments each operator macro takes.
ARITY = {"MIGRATOR_CHANNEL": 2, "MIGRATOR_CHANNEL_MAPS": 2, "MIGRATOR_OUTPUT": 4, "MIGRATOR_OUTPUT_TYPED": 6,
         "MIGRATOR_RESERVE": 3, "MIGRATOR_RESERVE_TYPED": 5, "MIGRATOR_SUBMIT": 3, "MIGRATOR_DISCARD": 2}
USAGE = {"MIGRATOR_CHANNEL": "MIGRATOR_CHANNEL(name, ring_bytes);",
         "MIGRATOR_CHANNEL_MAPS": "MIGRATOR_CHANNEL_MAPS(name, ring_bytes);",
         "MIGRATOR_OUTPUT": "MIGRATOR_OUTPUT(name, ctx, ptr, size)",
         "MIGRATOR_OUTPUT_TYPED": "MIGRATOR_OUTPUT_TYPED(name, ctx, ptr, size, type, type_version)",
         "MIGRATOR_RESERVE": "MIGRATOR_RESERVE(name, T, var);",
         "MIGRATOR_RESERVE_TYPED": "MIGRATOR_RESERVE_TYPED(name, T, var, type, type_version);",
         "MIGRATOR_SUBMIT": "MIGRATOR_SUBMIT(name, ctx, var);",
         "MIGRATOR_DISCARD": "MIGRATOR_DISCARD(name, var);"}
# Arguments that must be plain identifiers: the channel name, and the variable RESERVE declares.
_IDENT_ARGS = {"MIGRATOR_CHANNEL": (0,), "MIGRATOR_CHANNEL_MAPS": (0,), "MIGRATOR_OUTPUT": (0,),
               "MIGRATOR_OUTPUT_TYPED": (0,), "MIGRATOR_RESERVE": (0, 2), "MIGRATOR_RESERVE_TYPED": (0, 2),
               "MIGRATOR_SUBMIT": (0, 2), "MIGRATOR_DISCARD": (0, 1)}
_IDENT = re.compile(r"[A-Za-z_]\w*\Z")
_MACRO_RE = re.compile(r"(?<![\w.>])(" + "|".join(sorted(ARITY, key=len, reverse=True)) + r")\b")
_PERF_DECL_RE = re.compile(r"(?<![\w.>])BPF_PERF_OUTPUT\b")
_PERF_SUBMIT_RE = re.compile(r"(?<![\w.>])([A-Za-z_]\w*)\s*\.\s*(perf_submit_skb|perf_submit)\b")
_RAW_OUTPUT_RE = re.compile(r"(?<![\w.>])bpf_perf_event_output\b")
_MAP_REF_RE = re.compile(r"(?:\(\s*void\s*\*\s*\)\s*)?&\s*([A-Za-z_]\w*)")
_CURRENT_CPU_RE = re.compile(r"BPF_F_CURRENT_CPU|CUR_CPU_IDENTIFIER|BPF_F_INDEX_MASK|0x[fF]{8}(?:[uU]?[lL]{0,2})?")


# ---- lexing ---------------------------------------------------------------------------------

def _blank(buf: list[str], start: int, end: int) -> None:
    for k in range(start, end):
        if buf[k] != "\n":
            buf[k] = " "


def _literal_end(text: str, i: int) -> int:
    """End (exclusive) of the string or character literal opening at text[i]."""
    quote, j, n = text[i], i + 1, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == quote:
            return j + 1
        if c == "\n":  # unterminated: stop at the line end, as the compiler does
            return j
        j += 1
    return n


def _line_end(text: str, i: int) -> int:
    """Index of the newline ending the logical line that contains text[i] (splices followed)."""
    n = len(text)
    while True:
        j = text.find("\n", i)
        if j < 0:
            return n
        k = j - 1
        if k >= 0 and text[k] == "\r":
            k -= 1
        if k >= 0 and text[k] == "\\":
            i = j + 1
            continue
        return j


@dataclass(frozen=True)
class _Directive:
    start: int
    end: int
    keyword: str
    rest: str


class _Source:
    """One program text, lexed: `nocomment` has comments blanked, `code` also has string and
    character literals, preprocessor directives and dead `#if 0` blocks blanked (both keep
    every newline and the length, so positions and line numbers stay those of `text`)."""

    def __init__(self, text: str, filename: str) -> None:
        self.text, self.filename = text, filename
        n = len(text)
        nocom, code = list(text), list(text)
        self.directives: list[_Directive] = []
        i, line_start = 0, True
        while i < n:
            c = text[i]
            if c == "\n":
                line_start, i = True, i + 1
            elif c in " \t\r\f\v":
                i += 1
            elif c == "\\" and text.startswith("\n", i + 1):
                i += 2
            elif text.startswith("/*", i):
                j = text.find("*/", i + 2)
                j = n if j < 0 else j + 2
                _blank(nocom, i, j)
                _blank(code, i, j)
                i = j
            elif text.startswith("//", i):
                j = _line_end(text, i)
                _blank(nocom, i, j)
                _blank(code, i, j)
                i = j
            elif c == "#" and line_start:
                i = self._directive(i, nocom, code)
            elif c in "\"'":
                j = _literal_end(text, i)
                _blank(code, i, j)
                line_start, i = False, j
            else:
                line_start, i = False, i + 1
        self.nocomment = "".join(nocom)
        self._conditionals(code)
        self.code = "".join(code)
        self._opens = [m.start() for m in re.finditer(r"\{", self.code)]
        self._closes = [m.start() for m in re.finditer(r"\}", self.code)]
        self._newlines = [m.start() for m in re.finditer(r"\n", text)]

    def _directive(self, i: int, nocom: list[str], code: list[str]) -> int:
        """Lex the directive starting at text[i] ('#'); return where it ends (its newline)."""
        text, n = self.text, len(self.text)
        j, logical = i + 1, []
        while j < n:
            c = text[j]
            if c == "\n":
                break
            if c == "\\" and (text.startswith("\n", j + 1) or text.startswith("\r\n", j + 1)):
                j += 2 if text[j + 1] == "\n" else 3  # continued on the next line
                continue
            if text.startswith("/*", j):
                e = text.find("*/", j + 2)
                e = n if e < 0 else e + 2
                _blank(nocom, j, e)
                logical.append(" ")
                j = e
            elif text.startswith("//", j):
                e = _line_end(text, j)
                _blank(nocom, j, e)
                j = e
            elif c in "\"'":
                e = _literal_end(text, j)
                logical.append(text[j:e])
                j = e
            else:
                logical.append(c)
                j += 1
        _blank(code, i, j)
        words = "".join(logical).strip().split(None, 1)
        keyword = words[0] if words else ""
        self.directives.append(_Directive(i, j, keyword, words[1].strip() if len(words) > 1 else ""))
        return j

    def _conditionals(self, code: list[str]) -> None:
        """Blank dead `#if 0` (and `#if 1 ... #else`) branches; record each region's path of
        (group, branch) pairs so that declarations in exclusive branches can be told apart."""
        stack: list[list] = []  # [group id, branch index, dead kind ("0", "1" or ""), branch dead]
        groups = 0
        self._marks: list[tuple[int, tuple]] = [(0, ())]
        dead_from = None
        for d in self.directives:
            if d.keyword in ("if", "ifdef", "ifndef"):
                kind = d.rest if d.keyword == "if" and d.rest in ("0", "1") else ""
                stack.append([groups, 0, kind, kind == "0"])
                groups += 1
            elif d.keyword in ("elif", "else") and stack:
                top = stack[-1]
                top[1] += 1
                top[3] = top[2] == "1"
            elif d.keyword == "endif" and stack:
                stack.pop()
            else:
                continue
            dead = any(e[3] for e in stack)
            if dead and dead_from is None:
                dead_from = d.end
            elif not dead and dead_from is not None:
                _blank(code, dead_from, d.start)
                dead_from = None
            self._marks.append((d.end, tuple((e[0], e[1]) for e in stack)))
        if dead_from is not None:
            _blank(code, dead_from, len(code))
        self._mark_pos = [m[0] for m in self._marks]

    # -- queries --

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def depth(self, pos: int) -> int:
        """Brace depth at `pos` (0: file scope)."""
        return bisect.bisect_left(self._opens, pos) - bisect.bisect_left(self._closes, pos)

    def path(self, pos: int) -> tuple:
        return self._marks[bisect.bisect_right(self._mark_pos, pos) - 1][1]

    def error(self, pos: int, problem: str, fix: str) -> SourceError:
        return SourceError(self.filename, self.line(pos), problem, fix)

    def skip_space(self, pos: int) -> int:
        while pos < len(self.code) and self.code[pos].isspace():
            pos += 1
        return pos

    def call(self, macro: str, start: int, name_end: int) -> tuple[list[str], int]:
        """Arguments (comment-free text, stripped) of the call at `start` whose name ends at
        `name_end`, split at top-level commas with (), [] and {} balanced; and the index after
        ')'. Errors name the line of the call."""
        code = self.code
        open_ = self.skip_space(name_end)
        if open_ >= len(code) or code[open_] != "(":
            raise self.error(start, f"malformed {macro}: no '(' after the name",
                             f"write it as {USAGE.get(macro, macro + '(...)')}")
        pairs = {")": "(", "]": "[", "}": "{"}
        stack, start, spans = [], open_ + 1, []
        for j in range(open_, len(code)):
            c = code[j]
            if c in "([{":
                stack.append(c)
            elif c in ")]}":
                if stack.pop() != pairs[c]:
                    where = "" if self.line(j) == self.line(start) else f" (line {self.line(j)})"
                    raise self.error(start, f"malformed {macro}: unbalanced '{c}' in its arguments{where}",
                                     "balance the parentheses, brackets and braces")
                if not stack:
                    spans.append((start, j))
                    return [self.nocomment[a:b].strip() for a, b in spans], j + 1
            elif c == "," and len(stack) == 1:
                spans.append((start, j))
                start = j + 1
        raise self.error(start, f"malformed {macro}: the '(' is never closed", "close the call with ')'")


def _check_args(src: _Source, macro: str, args: list[str], pos: int) -> None:
    want = ARITY[macro]
    if len(args) != want or any(not a for a in args):
        got = "no" if args == [""] else str(len(args))
        problem = (f"malformed {macro}: empty argument" if len(args) == want
                   else f"malformed {macro}: {got} argument{'s' * (got != '1')}, it takes {want}")
        raise src.error(pos, problem, f"write it as {USAGE[macro]}")
    for k in _IDENT_ARGS[macro]:
        if not _IDENT.match(args[k]):
            what = "channel name" if k == 0 else "variable name"
            raise src.error(pos, f"malformed {macro}: {what} {args[k]!r} is not an identifier",
                            f"write it as {USAGE[macro]}")


def _one_line(arg: str) -> str:
    return re.sub(r"\s*\n\s*", " ", arg)


def _keep_lines(old: str, new: str) -> str:
    """`new`, padded with the newlines `old` had more, so the following lines keep their numbers."""
    missing = old.count("\n") - new.count("\n")
    return new + "\n" * missing if missing > 0 else new


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    """`text` with each (start, end, new) span replaced; a span inside an earlier one is dropped."""
    out, last = [], 0
    for start, end, new in sorted(edits):
        if start < last:
            continue
        out.append(text[last:start])
        out.append(new)
        last = end
    out.append(text[last:])
    return "".join(out)


# ---- the template ---------------------------------------------------------------------------

def header_path() -> Path:
    """bpf/migrator.h as shipped (a source checkout or the installed package)."""
    return bpf_dir() / HEADER


def template() -> str:
    """The per-channel C template of migrator.h (with @NAME@ placeholders)."""
    path = header_path()
    try:
        src = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InstallError(str(path), f"cannot read the migrator header ({e.strerror or e})") from None
    m = re.search(rf"^{TEMPLATE_BEGIN}[ \t]*\n(.*?)^{TEMPLATE_END}\b", src, re.S | re.M)
    if not m:
        raise InstallError(str(path), f"no {TEMPLATE_BEGIN} ... {TEMPLATE_END} block in the header")
    return m.group(1)


# ---- prepare --------------------------------------------------------------------------------

def _expand_channel(name: str, ring_bytes: str, body: str, resume_line: int) -> str:
    return (f"\n#ifndef MIGRATOR_H\n#error \"MIGRATOR_CHANNEL({name}): #include <migrator.h> before it\"\n#endif\n"
            f"MIGRATOR_CHANNEL_MAPS({name}, {_one_line(ring_bytes)});\n"
            f"{body.replace('@NAME@', name)}#line {resume_line}\n")


def _output_call(name: str, ctx: str, ptr: str, size: str, type_: str = "0", tver: str = "0") -> str:
    dead = f"if (0) {name}.perf_submit({_one_line(ctx)}, {_one_line(ptr)}, {_one_line(size)});"
    live = (f"__migrator_output_{name}(({ctx}), (const void *)({ptr}), (u64)({size}), "
            f"(u16)({type_}), (u16)({tver}));")
    return f"({{ {dead} {live} }})"


def _submit_call(name: str, ctx: str, var: str) -> str:
    dead = f"if (0) {name}.perf_submit({_one_line(ctx)}, {var}, sizeof(*({var})));"
    return f"({{ {dead} __MIGRATOR_SUBMIT({name}, {ctx}, {var}); }})"


def _prepare(text: str, filename: str) -> tuple[str, list[str]]:
    src = _Source(text, filename)
    found = []  # (macro, start, end, args)
    pos = 0
    while (m := _MACRO_RE.search(src.code, pos)):
        macro = m.group(1)
        args, end = src.call(macro, m.start(), m.end())
        _check_args(src, macro, args, m.start())
        found.append((macro, m.start(), end, args))
        pos = end  # calls nested in the arguments stay as they are (the header macros)

    # MIGRATOR_CHANNEL_MAPS is an already expanded channel (a prepared text): known, kept.
    declarations = ("MIGRATOR_CHANNEL", "MIGRATOR_CHANNEL_MAPS")
    channels: dict[str, list[tuple]] = {}  # name -> [(path, line)] of its declarations
    edits = []
    body = None
    for macro, start, end, args in found:
        if macro not in declarations:
            continue
        name, ring_bytes = args
        if src.depth(start) != 0:
            raise src.error(start, f"{macro}({name}) is inside a function or a block",
                            "declare channels at file scope, next to the other maps")
        path = src.path(start)
        for other_path, other_line in channels.get(name, []):
            if not _exclusive(path, other_path):
                raise src.error(start, f"channel {name!r} is declared twice (first on line {other_line})",
                                "declare each channel once, or rename one of them")
        channels.setdefault(name, []).append((path, src.line(start)))
        if macro == "MIGRATOR_CHANNEL_MAPS":
            continue
        semi = src.skip_space(end)
        if semi < len(src.code) and src.code[semi] == ";":
            end = semi + 1
        if body is None:
            body = template()
        edits.append((start, end, _expand_channel(name, ring_bytes, body, src.line(end))))

    for macro, start, end, args in found:
        if macro in declarations:
            continue
        name = args[0]
        if name not in channels:
            known = ", ".join(channels) or "none"
            raise src.error(start, f"{macro}({name}, ...): no channel {name!r} is declared (declared: {known})",
                            f"add MIGRATOR_CHANNEL({name}, ring_bytes); at file scope before its first use, "
                            "or fix the name")
        if macro in ("MIGRATOR_OUTPUT", "MIGRATOR_OUTPUT_TYPED"):
            new = _output_call(*args)
        elif macro == "MIGRATOR_SUBMIT":
            new = _submit_call(*args)
        else:
            continue  # RESERVE and DISCARD hold no map method call: the header macros serve
        edits.append((start, end, _keep_lines(text[start:end], new)))
    return _apply(text, edits), list(channels)


def _exclusive(a: tuple, b: tuple) -> bool:
    """True if two conditional paths are different branches of one #if group."""
    for x, y in zip(a, b):
        if x != y:
            return x[0] == y[0]
    return False


def prepare(text: str, *, filename: str = "<bpf text>") -> str:
    """Expand the file-scope `MIGRATOR_CHANNEL(name, bytes);` declarations of `text` and
    rewrite its MIGRATOR_OUTPUT[_TYPED] / MIGRATOR_SUBMIT call sites (see the module doc).

    `#include <migrator.h>` stays an #include: compile with cflags(). Raises SourceError
    (naming `filename` and the line) for a malformed call, a channel declared twice or inside
    a function, and a use of an undeclared channel. Preparing a prepared text changes nothing.
    """
    return _prepare(text, filename)[0]


def channel_names(text: str, *, filename: str = "<bpf text>") -> list[str]:
    """The channels `text` declares with MIGRATOR_CHANNEL, in order (validates like prepare)."""
    return _prepare(text, filename)[1]


# ---- wrap_text ------------------------------------------------------------------------------

def check_ring_bytes(ring_bytes: object) -> int:
    """A ring size the kernel accepts (vocab.RING_BYTES_RULE), else OptionError."""
    if not is_ring_bytes(ring_bytes):
        raise OptionError("ring_bytes", ring_bytes, f"is not {RING_BYTES_RULE}",
                          "use a ring size such as 1 << 22 (4 MiB)")
    return ring_bytes


def wrap_text(text: str, ring_bytes: int, *, filename: str = "<bpf text>") -> tuple[str, list[str]]:
    """Turn an unmodified bcc program text into a migrator one; returns (text, channel names).

    Inserts `#include <migrator.h>` (then `#line 1`) at the top; every file-scope
    `BPF_PERF_OUTPUT(x);` becomes `MIGRATOR_CHANNEL(x, ring_bytes);`, every `x.perf_submit(ctx,
    p, n)` and raw `bpf_perf_event_output(ctx, &x, BPF_F_CURRENT_CPU, p, n)` on such an `x`
    becomes `MIGRATOR_OUTPUT(x, ctx, p, n)`; then prepare(). Compile with cflags(). Records
    then arrive on `x__perf` / `x__ring` (migrator.dataplane.channel.Channel), not on `x`.
    """
    check_ring_bytes(ring_bytes)
    src = _Source(text, filename)
    edits, names = [], []
    for m in _PERF_DECL_RE.finditer(src.code):
        args, end = src.call("BPF_PERF_OUTPUT", m.start(), m.end())
        if len(args) != 1 or not _IDENT.match(args[0]):
            raise src.error(m.start(), f"malformed BPF_PERF_OUTPUT({', '.join(args)})",
                            "write it as BPF_PERF_OUTPUT(name);")
        if src.depth(m.start()) != 0:
            continue  # not a declaration bcc accepts either; leave it to the compiler
        semi = src.skip_space(end)
        if semi < len(src.code) and src.code[semi] == ";":
            end = semi + 1
        if args[0] not in names:
            names.append(args[0])
        new = f"MIGRATOR_CHANNEL({args[0]}, {ring_bytes});"
        edits.append((m.start(), end, _keep_lines(text[m.start():end], new)))
    if not names:
        raise src.error(0, "no file-scope BPF_PERF_OUTPUT(name); declaration to migrate",
                        "declare the perf output with BPF_PERF_OUTPUT(name), or write MIGRATOR_CHANNEL "
                        "yourself and use prepare()")

    for m in _PERF_SUBMIT_RE.finditer(src.code):
        name, method = m.group(1), m.group(2)
        if name not in names:
            continue
        args, end = src.call(f"{name}.{method}", m.start(), m.end())
        if method == "perf_submit_skb":
            raise src.error(m.start(), f"{name}.perf_submit_skb() appends packet data that a migrator "
                            "channel cannot carry", f"copy the bytes you need into the event and call "
                            f"{name}.perf_submit(ctx, &event, sizeof(event)), or keep {name} as a plain perf output")
        if len(args) != 3 or not all(args):
            raise src.error(m.start(), f"malformed {name}.perf_submit: {len(args)} arguments, it takes 3",
                            f"write it as {name}.perf_submit(ctx, ptr, size)")
        new = f"MIGRATOR_OUTPUT({name}, {args[0]}, {args[1]}, {args[2]})"
        edits.append((m.start(), end, _keep_lines(text[m.start():end], new)))

    for m in _RAW_OUTPUT_RE.finditer(src.code):
        args, end = src.call("bpf_perf_event_output", m.start(), m.end())
        if len(args) != 5:
            raise src.error(m.start(), f"malformed bpf_perf_event_output: {len(args)} arguments, it takes 5",
                            "write it as bpf_perf_event_output(ctx, &map, BPF_F_CURRENT_CPU, ptr, size)")
        ref = _MAP_REF_RE.fullmatch(args[1])
        if not ref or ref.group(1) not in names:
            continue
        name = ref.group(1)
        if not _CURRENT_CPU_RE.fullmatch(args[2]):
            raise src.error(m.start(), f"bpf_perf_event_output(..., &{name}, {args[2]}, ...) writes to a chosen "
                            "CPU's buffer; a migrator channel always writes on the current CPU",
                            "pass BPF_F_CURRENT_CPU as the flags")
        new = f"MIGRATOR_OUTPUT({name}, {args[0]}, {args[3]}, {args[4]})"
        edits.append((m.start(), end, _keep_lines(text[m.start():end], new)))

    out, channels = _prepare(_apply(text, edits), filename)
    return f"#include <{HEADER}>\n#line 1\n{out}", channels


# ---- cflags ---------------------------------------------------------------------------------

def cflags(max_payload: int | None = None, ring_wakeup: str | None = None) -> list[str]:
    """bcc cflags for a prepared text: -I<bpf dir> (for #include <migrator.h>) and the knobs.

    max_payload: MIGRATOR_MAX_PAYLOAD, a power of two from 8 to 16384 (default in C: 4096).
    ring_wakeup: one of RING_WAKEUPS (shared/vocab.py; default in C: adaptive).
    """
    out = [f"-I{bpf_dir()}"]
    if max_payload is not None:
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) \
                or not 8 <= max_payload <= MAX_PAYLOAD_LIMIT or max_payload & (max_payload - 1):
            raise OptionError("max_payload", max_payload, f"is not a power of two from 8 to {MAX_PAYLOAD_LIMIT}",
                              "use e.g. 4096")
        out.append(f"-DMIGRATOR_MAX_PAYLOAD={max_payload}")
    if ring_wakeup is not None:
        if ring_wakeup not in RING_WAKEUPS:
            raise OptionError("ring_wakeup", ring_wakeup, "is not a ring wakeup policy",
                              f"use one of {', '.join(RING_WAKEUPS)}")
        out.append(f"-DMIGRATOR_RING_WAKEUP={RING_WAKEUPS[ring_wakeup]}")
    return out
