"""Root gating: only kernel tests skip without root, and only outside CI.

A test marked `kernel` (loads BPF programs, creates namespaces, needs root) carries `needs_root`,
and `needs_root` is never put on a test that is not marked `kernel`: pure unit tests run as any
user. The rule itself: skip only when not root AND the CI variable is unset, so a CI run without
the privilege fails instead of passing with nothing run.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

from kernel_util import needs_root, skips_without_root

TESTS = Path(__file__).resolve().parent


def test_rule_skips_only_non_root_outside_ci():
    assert [skips_without_root(euid, env) for euid, env in [
        (1000, {}),                      # developer without root: skip
        (1000, {"CI": ""}),              # empty counts as unset
        (1000, {"CI": "true"}),          # CI without root: run, and fail loudly
        (0, {}),                         # root: run
        (0, {"CI": "1"}),
        (1000, {"PATH": "/usr/bin"}),    # other variables do not matter
    ]] == [True, True, False, False, False, True]


def test_needs_root_is_that_rule_for_this_process():
    mark = needs_root.mark
    assert mark.name == "skipif"
    assert mark.args == (skips_without_root(os.geteuid(), os.environ),)
    assert mark.kwargs == {"reason": "loading BPF programs needs root (CI runs as root)"}


def _marks(exprs: list[ast.expr]) -> set[str]:
    """'kernel' for pytest.mark.kernel, 'needs_root' for needs_root, in decorators or pytestmark."""
    out = set()
    for e in exprs:
        items = e.elts if isinstance(e, (ast.List, ast.Tuple)) else [e]
        for x in items:
            if isinstance(x, ast.Call):
                x = x.func
            if isinstance(x, ast.Attribute) and x.attr == "kernel" and isinstance(x.value, ast.Attribute) \
                    and x.value.attr == "mark":
                out.add("kernel")
            elif isinstance(x, ast.Name) and x.id == "needs_root":
                out.add("needs_root")
    return out


def _pytestmark(body: list[ast.stmt]) -> set[str]:
    return _marks([n.value for n in body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)])


def gating(source: str) -> dict[str, set[str]]:
    """Test name -> its gating marks (module pytestmark, class marks and decorators together)."""
    tree = ast.parse(source)
    module = _pytestmark(tree.body)
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            out[node.name] = module | _marks(node.decorator_list)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            cls = module | _marks(node.decorator_list) | _pytestmark(node.body)
            for f in node.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("test"):
                    out[f"{node.name}.{f.name}"] = cls | _marks(f.decorator_list)
    return out


def test_kernel_mark_and_needs_root_go_together():
    mismatched = []
    for path in sorted(TESTS.glob("test_*.py")):
        for name, marks in gating(path.read_text()).items():
            if len(marks) == 1:
                mismatched.append(f"{path.name}::{name}: only {next(iter(marks))}")
    assert mismatched == []


def test_scan_reads_module_function_and_class_marks():
    src = (
        "import pytest\nfrom kernel_util import needs_root\n"
        "pytestmark = [pytest.mark.kernel, pytest.mark.slow, needs_root]\n"
        "def test_a(): pass\n"
    )
    assert gating(src) == {"test_a": {"kernel", "needs_root"}}
    src = (
        "import pytest\n"
        "@pytest.mark.kernel\n@needs_root\ndef test_gated(): pass\n"
        "@pytest.mark.kernel\ndef test_kernel_only(): pass\n"
        "@needs_root\ndef test_root_only(): pass\n"
        "@pytest.mark.parametrize('x', [1])\ndef test_pure(x): pass\n"
        "def helper(): pass\n"
        "@pytest.mark.kernel\nclass TestK:\n    pytestmark = needs_root\n    def test_m(self): pass\n"
    )
    assert gating(src) == {"test_gated": {"kernel", "needs_root"}, "test_kernel_only": {"kernel"},
                           "test_root_only": {"needs_root"}, "test_pure": set(), "TestK.test_m": {"kernel", "needs_root"}}


def test_pure_tests_are_not_gated():
    """Tests that only need files, SQLite or a child process run as any user (spot checks)."""
    expect_pure = {
        "test_agent_offline.py": ["test_merge_windows_adds_counts_and_keeps_the_worse_lag",
                                  "test_agent_refuses_a_host_the_migration_does_not_list"],
        "test_lab_offline.py": ["test_bad_prefix_refused", "test_cpu_load_is_bounded_and_pinned"],
        "test_doctor.py": ["test_bcc_not_importable", "test_tracefs_wrong_type_and_missing_events"],
        "test_schema_versions.py": ["test_fingerprint_pins_the_shipped_layouts"],
    }
    got = {f: {n: gating((TESTS / f).read_text())[n] for n in names} for f, names in expect_pure.items()}
    assert got == {f: {n: set() for n in names} for f, names in expect_pure.items()}
    for f in ("test_agent.py", "test_lab.py"):  # what stayed behind is all kernel work
        assert set(map(frozenset, gating((TESTS / f).read_text()).values())) == {frozenset({"kernel", "needs_root"})}
