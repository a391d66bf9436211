"""A window's `extra` has a declared schema (shared/records.WindowExtra): every key the package writes
into it is declared there, with its type and writer. Read from the source with `ast`, so a new key
written anywhere fails here until it is declared; a declared key nobody writes fails too."""
from __future__ import annotations

import ast
from pathlib import Path

from migrator.shared.records import EXTRA_KEYS

PKG = Path(__file__).resolve().parent.parent / "migrator"


def _is_extra(node: ast.AST) -> bool:
    """`extra`, `x.extra` or `extra_of_something` named ...extra."""
    return (isinstance(node, ast.Name) and node.id == "extra") or (isinstance(node, ast.Attribute) and node.attr == "extra")


def written_keys() -> dict[str, str]:
    """Every constant key stored into an extra dict: extra["k"] = ..., extra={"k": ...} in a call, and
    extra = {"k": ...}; with the file it is written in."""
    keys: dict[str, str] = {}
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
                for t in targets:
                    if _is_extra(t) and isinstance(node.value, ast.Dict):
                        keys.update({k.value: path.name for k in node.value.keys
                                     if isinstance(k, ast.Constant) and isinstance(k.value, str)})
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Subscript) and _is_extra(sub.value) and isinstance(sub.slice, ast.Constant):
                        keys[sub.slice.value] = path.name
                    if isinstance(sub, ast.Subscript) and _is_extra(sub.value) and isinstance(sub.slice, ast.IfExp):
                        for v in (sub.slice.body, sub.slice.orelse):
                            if isinstance(v, ast.Constant):
                                keys[v.value] = path.name
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "extra" and isinstance(kw.value, ast.Dict) and _window_call(node):
                        keys.update({k.value: path.name for k in kw.value.keys
                                     if isinstance(k, ast.Constant) and isinstance(k.value, str)})
    return keys


def _window_call(node: ast.Call) -> bool:
    """ChannelWindow(...) or dataclasses.replace(...) (logging's extra= is not a window's)."""
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    return name in ("ChannelWindow", "replace")


def test_every_key_written_into_a_window_extra_is_declared():
    keys = written_keys()
    assert {k: f for k, f in keys.items() if k not in EXTRA_KEYS} == {}


def test_every_declared_key_is_written_somewhere():
    keys = written_keys()
    assert sorted(EXTRA_KEYS - set(keys)) == []


def test_the_scan_sees_each_way_of_writing_a_key():
    """Guards the scanner: a subscript store, a conditional key, a dict literal in ChannelWindow(),
    a dict assigned to `extra`, and in merges."""
    keys = written_keys()
    assert keys["self_protect"] == "feed.py"  # ring.extra["self_protect"] = ...
    assert keys["before_start"] == "pipeline.py"  # w.extra["late" if ... else "before_start"]
    assert keys["seq_min"] == "pipeline.py"  # ChannelWindow(..., extra={...})
    assert keys["channels"] == "wrap.py"  # extra = {"channels": ...}
    assert keys["lost_in_reload"] == "records.py"
