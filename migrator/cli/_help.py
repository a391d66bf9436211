"""Help text that reflows at any terminal width, applied once to the whole command tree.

Docstrings are written with line breaks at ~100 columns. Typer's rich help keeps single line
breaks, so at 80 columns every paragraph came out ragged. `tidy_tree` rewrites the help of every
command, group and parameter once, when the root group is built:

* a paragraph's lines are joined into one line (rich then wraps it to the terminal);
* indented lines (example blocks) and paragraphs starting with \\b are kept line by line;
* text that looks like rich markup (`[source]`, `[[source.attach]]`) is escaped so it shows;
* flags show no `<bool>` type (a flag takes no value), arguments with a metavar no type after it.
"""
from __future__ import annotations

import inspect

from rich.markup import escape
from typer.core import TyperArgument


def reflow(text: str | None) -> str | None:
    """Join the lines of each paragraph; keep blank-line breaks and indented (example) lines as they are."""
    if not text:
        return text
    text = inspect.cleandoc(text)
    head, sep, tail = text.partition("\f")  # click: nothing after \f is shown
    out = []
    for para in head.split("\n\n"):
        if para.startswith("\b"):
            out.append(para)
            continue
        lines: list[str] = []
        for line in para.split("\n"):
            if not line.strip():
                continue
            if line[:1].isspace() or not lines or lines[-1][:1].isspace():
                lines.append(line.rstrip())  # an example line, or the first line after one
            else:
                lines[-1] = f"{lines[-1]} {line.strip()}"
        out.append("\n".join(lines))
    rest = "\n\n".join(out[1:]).split("\n")[1:]
    if rest and all(line[:1].isspace() for line in rest if line.strip()):
        # Typer dedents the text after the first paragraph as one block (inspect.cleandoc, which
        # skips its first line): "Example:" followed only by indented lines would lose their
        # indentation. A leading newline makes "Example:" count, and cleandoc drops it again.
        out[1] = "\n" + out[1]
    return "\n\n".join(out) + sep + tail


def _tidy(text: str | None) -> str | None:
    return escape(reflow(text)) if text else text


def tidy_tree(cmd) -> None:
    """Reflow and escape the help of `cmd`, its parameters and every subcommand, in place (idempotent)."""
    if getattr(cmd, "_migrator_tidy", False):
        return
    cmd._migrator_tidy = True
    cmd.help = _tidy(cmd.help)
    if getattr(cmd, "short_help", None):
        cmd.short_help = _tidy(cmd.short_help)
    _tidy_params(cmd.params)
    # --help and typer's completion options are made when help is shown: tidy those then.
    get_params = cmd.get_params
    cmd.get_params = lambda ctx: _tidy_params(get_params(ctx))
    for sub in getattr(cmd, "commands", {}).values():
        tidy_tree(sub)


def _tidy_params(params: list) -> list:
    for p in params:
        if getattr(p, "_migrator_tidy", False):
            continue
        p._migrator_tidy = True
        if getattr(p, "help", None):
            p.help = _tidy(p.help)
        if getattr(p, "is_flag", False) and getattr(p, "metavar", None) is None:
            p.metavar = ""  # typer shows the metavar instead of `<bool>`: a flag takes no value
        elif isinstance(p, TyperArgument) and p.metavar:
            p.display_type_rich = lambda ctx: None  # COMMAND, not COMMAND <list[str]>: the name says it
    return params
