"""Layering: a module may import only from its own layer or a lower one.

base (errors, config, shared/: vocab, records, resources) = 0 <- dataplane = 1 <- store = 2 <- control = 3
<- agent = 4 <- tools = 5 <- cli = 6. migrator/__init__.py and migrator/__main__.py are the
package roots and are exempt. Every `import` and `from ... import` counts, at module level or
nested in a function, class or `if`; relative imports are resolved against their package.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "migrator"

LAYERS = {
    "errors": 0, "config": 0, "shared": 0,
    "dataplane": 1, "store": 2, "control": 3, "agent": 4, "tools": 5, "cli": 6,
}
ROOTS = {"migrator", "migrator.__main__"}  # the package roots: exempt as importers and as targets


class UnmappedModule(Exception):
    """A migrator module that belongs to no layer: the map above must be extended on purpose."""


def layer_of(module: str) -> int | None:
    """The layer of a dotted migrator module name; None for the exempt roots."""
    if module in ROOTS:
        return None
    parts = module.split(".")
    if parts[0] != "migrator" or len(parts) < 2 or parts[1] not in LAYERS:
        raise UnmappedModule(module)
    return LAYERS[parts[1]]


def module_name(path: Path, pkg: Path = PKG) -> tuple[str, bool]:
    """(dotted name, is a package __init__) of a file under the migrator/ directory."""
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts.pop()
    return ".".join(parts), is_pkg


def imported_modules(source: str, module: str, is_package: bool = False,
                     known: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, int]]:
    """(imported migrator module, line) for every import in `source`, nested ones included.

    `from P import n` counts as importing the module P.n when P.n is in `known` (the modules
    that exist), else as importing P: `from migrator import cli` is migrator.cli, `from
    migrator.tools.lab import lab_up` is migrator.tools.lab.
    """
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for a in node.names:
                sub = f"{base_name}.{a.name}"
                out.append((sub if sub in known else base_name, node.lineno))
    return sorted({(m, line) for m, line in out if m == "migrator" or m.startswith("migrator.")},
                  key=lambda x: (x[1], x[0]))


def import_edges(sources: dict[str, tuple[str, bool]]) -> list[tuple[str, str, int]]:
    """(importer, imported, line) over every module; the exempt roots import freely."""
    known = set(sources) | set(package_sources())
    edges = []
    for mod, (src, is_pkg) in sorted(sources.items()):
        if mod in ROOTS:
            continue
        edges += [(mod, target, line) for target, line in imported_modules(src, mod, is_pkg, known)]
    return edges


def upward_imports(edges: list[tuple[str, str, int]]) -> list[str]:
    """"importer -> imported (line n)" for every import from a higher layer."""
    bad = []
    for mod, target, line in edges:
        src_layer, dst_layer = layer_of(mod), layer_of(target)
        if src_layer is not None and dst_layer is not None and dst_layer > src_layer:
            bad.append(f"{mod} -> {target} (line {line})")
    return bad


def imports_between(edges: list[tuple[str, str, int]], importer_pkg: str, imported_pkg: str) -> list[str]:
    def under(name: str, pkg: str) -> bool:
        return name == pkg or name.startswith(pkg + ".")

    return [f"{mod} -> {target} (line {line})" for mod, target, line in edges
            if under(mod, importer_pkg) and under(target, imported_pkg)]


def package_sources(pkg: Path = PKG) -> dict[str, tuple[str, bool]]:
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        name, is_pkg = module_name(path, pkg)
        out[name] = (path.read_text(), is_pkg)
    return out


@pytest.fixture(scope="module")
def edges():
    return import_edges(package_sources())


# --- the real package ----------------------------------------------------------------------

def test_every_module_is_in_a_layer():
    unmapped = []
    for name in package_sources():
        try:
            layer_of(name)
        except UnmappedModule:
            unmapped.append(name)
    assert unmapped == []


def test_scan_sees_the_package_and_nested_imports(edges):
    """Guards the checker itself: it reads every file and sees imports inside functions."""
    scanned = package_sources()
    assert len(scanned) == len(list(PKG.rglob("*.py")))
    assert {"migrator", "migrator.__main__", "migrator.tools.doctor", "migrator.store.api"} <= set(scanned)
    found = {(m, t) for m, t, _ in edges}
    assert ("migrator.cli.doctor", "migrator.tools.doctor") in found  # `from migrator.tools import doctor`
    assert ("migrator.store.api", "migrator.store.models") in found
    assert ("migrator.tools.doctor", "migrator.shared.vocab") in found  # inside check_bpf_sources()
    assert all(layer_of(t) is not None or t in ROOTS for _, t, _ in edges)  # no unmapped target


def test_no_module_imports_from_a_higher_layer(edges):
    assert upward_imports(edges) == []


def test_agent_imports_nothing_from_tools(edges):
    assert imports_between(edges, "migrator.agent", "migrator.tools") == []


def test_store_imports_nothing_from_dataplane(edges):
    assert imports_between(edges, "migrator.store", "migrator.dataplane") == []


# --- the checker on synthetic sources ------------------------------------------------------

def test_checker_reports_a_synthetic_upward_import():
    src = "from migrator.errors import StoreError\nfrom migrator.control.phases import Phase\n"
    edges = import_edges({"migrator.store.fake": (src, False)})
    assert edges == [("migrator.store.fake", "migrator.errors", 1), ("migrator.store.fake", "migrator.control.phases", 2)]
    assert upward_imports(edges) == ["migrator.store.fake -> migrator.control.phases (line 2)"]


def test_checker_reports_nested_relative_and_package_form_imports():
    sources = {
        # nested in a function, plain `import`
        "migrator.dataplane.fake": ("import numpy\n\ndef f():\n    if True:\n        import migrator.cli.views\n", False),
        # relative, from a package __init__: `..control` from migrator.store is migrator.control
        "migrator.store": ("from ..control import phases\nfrom . import api\n", True),
        # `from migrator import cli` is the module migrator.cli
        "migrator.config": ("class C:\n    def m(self):\n        from migrator import cli, shared\n", False),
        # the root may import anything; cli importing tools and agent is downward
        "migrator": ("from migrator.cli import app\n", True),
        "migrator.cli.fake": ("from migrator.tools import doctor\nfrom migrator.agent.loop import Agent\n", False),
    }
    edges = import_edges(sources)
    assert upward_imports(edges) == [
        "migrator.config -> migrator.cli (line 3)",
        "migrator.dataplane.fake -> migrator.cli.views (line 5)",
        "migrator.store -> migrator.control.phases (line 1)",
    ]
    assert ("migrator.store", "migrator.store.api", 2) in edges


def test_checker_names_agent_to_tools_and_store_to_dataplane():
    sources = {
        "migrator.agent.fake": ("def f():\n    from migrator.tools.lab import lab_up\n", False),
        "migrator.store.fake": ("from migrator.dataplane.schema import fingerprint\n", False),
        "migrator.store.ok": ("from migrator.shared.records import ChannelWindow\n", False),
    }
    edges = import_edges(sources)
    assert imports_between(edges, "migrator.agent", "migrator.tools") == [
        "migrator.agent.fake -> migrator.tools.lab (line 2)"]
    assert imports_between(edges, "migrator.store", "migrator.dataplane") == [
        "migrator.store.fake -> migrator.dataplane.schema (line 1)"]
    # store -> dataplane is downward by layer number: only the explicit rule catches it
    assert upward_imports(edges) == ["migrator.agent.fake -> migrator.tools.lab (line 2)"]


def test_unmapped_module_is_refused():
    with pytest.raises(UnmappedModule):
        layer_of("migrator.newlayer.x")
    assert (layer_of("migrator.shared.vocab"), layer_of("migrator.dataplane.readers.perf"), layer_of("migrator.cli")) == (0, 1, 6)


# --- callbacks set as attributes -------------------------------------------------------------
# An event and a window go one way (DESIGN.md): data flows down, decisions flow up, and no callback
# crosses a layer upward. A callback stored into another object's attribute (`x.on_y = self._f`,
# `x.send = lambda ...`) is how such a crossing hides from the import check, so every one must be
# listed here with the layers of both sides; a new one fails until it is reviewed. The operator's
# own callbacks (open_perf_buffer, on_batch) are arguments, not attributes set from outside.
SAME_LAYER_CALLBACKS = {
    # agent -> agent: the feed tells its link and its metrics which mode the host is in
    ("migrator.agent.feed", "link.mode_source"),
    ("migrator.agent.feed", "self.metrics.mode_source"),
    # agent -> agent: the agent annotates the windows its own link sends
    ("migrator.agent.loop", "self.link.on_send"),
    # agent -> agent: wrap's per-host merger takes the windows of every feed of the host
    ("migrator.agent.wrap", "tap.feed.link.send"),
    # tools -> agent: the fleet bench's simulated hosts play the feed's part towards a real link
    ("migrator.tools.bench.fleet", "link.mode_source"),
    # cli -> click (third party, no layer): the help reflow wraps click's own methods
    ("migrator.cli._help", "cmd.get_params"),
    ("migrator.cli._help", "p.display_type_rich"),
}


def attribute_callbacks(source: str) -> list[tuple[str, int]]:
    """(target, line) of every callable stored into an attribute of another object: a lambda, a
    function of this module, or a method of the enclosing class (`self.m` where `def m` is in it)."""
    tree = ast.parse(source)
    functions = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    out = []

    def visit(node: ast.AST, methods: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, {n.name for n in child.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))})
                continue
            if isinstance(child, ast.Assign):
                v = child.value
                callable_value = (isinstance(v, ast.Lambda)
                                  or (isinstance(v, ast.Name) and v.id in functions)
                                  or (isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name)
                                      and v.value.id == "self" and v.attr in methods))
                for t in child.targets:
                    on_other = isinstance(t, ast.Attribute) and not (isinstance(t.value, ast.Name) and t.value.id == "self")
                    if callable_value and on_other:
                        out.append((ast.unparse(t), child.lineno))
            visit(child, methods)

    visit(tree, set())
    return out


def test_no_callback_is_set_as_an_attribute_across_layers():
    found = {(mod, target) for mod, (src, _) in package_sources().items() for target, _ in attribute_callbacks(src)}
    assert found - SAME_LAYER_CALLBACKS == set()  # a new one: list it above with both layers, or pass it down
    assert SAME_LAYER_CALLBACKS - found == set()  # a listed one is gone: take it off the list


def test_checker_finds_attribute_callbacks():
    src = ("class Feed:\n"
           "    def __init__(self, pipe):\n"
           "        self.pipe = pipe\n"
           "        self.pipe.on_batch = self._route\n"    # upward hook on another object: found
           "        self.cb = self._route\n"               # own attribute: not a crossing
           "        pipe.rate = self.rate\n"               # not a method: data
           "    def _route(self):\n"
           "        pass\n"
           "def f(link):\n"
           "    link.send = lambda ws: None\n")
    assert attribute_callbacks(src) == [("self.pipe.on_batch", 4), ("link.send", 10)]
