"""Tests feed windows the way agents do: conftest.record() -> api.record_windows, nothing else.

A Window row written any other way (a models.Window built by hand, a Core insert, raw SQL) skips
what the agents' write path does (phase stamping, de-duplication, fingerprint notes), so a
controller test fed like that would test a state agents cannot produce.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
WRITE_CALLS = {"insert", "add", "add_all", "merge", "bulk_save_objects", "bulk_insert_mappings", "execute",
               "exec_driver_sql", "executemany"}
SQL_INSERT = re.compile(r"\b(insert|replace)\b[^;]*\binto\s+\"?windows\b", re.I)


def _mentions_window(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "Window" or isinstance(n, ast.Attribute) and n.attr == "Window"
               for n in ast.walk(node))


def window_writes(source: str) -> list[str]:
    """"line N: how" for every line of `source` that writes a windows row other than through
    api.record_windows (one entry per line, the most direct form named)."""
    found: dict[int, tuple[int, str]] = {}

    def note(line: int, rank: int, how: str) -> None:
        if line not in found or rank < found[line][0]:
            found[line] = (rank, how)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            reads = any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "select"  # select(...).where(...)
                        for a in node.args for c in ast.walk(a))
            if name == "Window":
                note(node.lineno, 0, "Window(...)")
            elif name in WRITE_CALLS and not reads and (
                    any(_mentions_window(a) for a in node.args)
                    or isinstance(f, ast.Attribute) and _mentions_window(f.value)):
                note(node.lineno, 1 if name == "insert" else 2, f"{name}(Window)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_INSERT.search(node.value):
            note(node.lineno, 3, "SQL insert into windows")
    return [f"line {line}: {how}" for line, (_rank, how) in sorted(found.items())]


def test_no_test_writes_window_rows_but_through_record_windows():
    found = {p.name: window_writes(p.read_text()) for p in sorted(TESTS.glob("*.py")) if p.name != Path(__file__).name}
    assert {name: w for name, w in found.items() if w} == {}


def test_record_helper_is_the_agents_write_path():
    import conftest

    tree = ast.parse(Path(conftest.__file__).read_text())
    record = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "record")
    calls = {ast.unparse(n.func) for n in ast.walk(record) if isinstance(n, ast.Call)}
    assert "api.record_windows" in calls


def test_scanner_catches_each_other_way_to_write_a_window():
    src = '''
from sqlalchemy import insert, select, text
from migrator.store import models
from migrator.store.models import Window

def f(s, mid):
    s.add(Window(migration_id=mid, host="h1"))
    s.add(models.Window(migration_id=mid))
    s.execute(insert(Window), [{}])
    s.connection().execute(Window.__table__.insert(), [{}])
    s.bulk_insert_mappings(Window, [{}])
    s.execute(text("INSERT INTO windows (host) VALUES ('h1')"))
    s.connection().exec_driver_sql('insert or ignore into "windows" values (1)')
    s.scalars(select(Window).where(Window.migration_id == mid)).all()   # a read: fine
    s.execute(select(Window.id))                                          # a read: fine
    api.record_windows(s, mid, [w])                                       # the write path: fine
'''
    assert window_writes(src) == [
        "line 7: Window(...)", "line 8: Window(...)", "line 9: insert(Window)", "line 10: insert(Window)",
        "line 11: bulk_insert_mappings(Window)", "line 12: SQL insert into windows", "line 13: SQL insert into windows",
    ]
