"""Set-up installs what the tests use (issue 19, item 5).

A fresh machine once failed `bash scripts/test.sh` because tests/test_wrap.py runs
/usr/sbin/tcpstates-bpfcc (Debian's bpfcc-tools) and scripts/setup.sh did not install it. This
test reads tests/*.py and migrator/**/*.py (their syntax trees: comments and docstrings do not
count) for the system commands they use:
  - absolute paths of commands in string literals ("/usr/sbin/...", "/usr/bin/...", "/bin/...");
  - commands run by name: the first word of subprocess.run/Popen/check_output/check_call/call,
    os.exec*, shutil.which, and of a file's own helpers that hand their argument to subprocess
    (tests/test_lab.py's sh("ip netns exec NS tc qdisc show") runs ip and tc);
  - the PostgreSQL server, when a test reads MIGRATOR_TEST_PG_URL.
Each maps to its Debian package in COMMANDS below, and that package must be installed by
scripts/setup.sh (or, for the PostgreSQL server, scripts/postgres.sh). A command the map does not
know fails the test until someone maps it. No root, no kernel: it only reads files.
"""
from __future__ import annotations

import ast
import fnmatch
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"
POSTGRES = ROOT / "scripts" / "postgres.sh"

# Command (a name, an absolute path, or a glob of absolute paths) -> Debian package providing it.
COMMANDS = {
    "/usr/sbin/*-bpfcc": "bpfcc-tools",      # Debian's stock bcc tools, run by tests/test_wrap.py
    "bpftool": "bpftool",
    "bpftrace": "bpftrace",
    "ip": "iproute2",
    "tc": "iproute2",
    "chromium": "chromium",                  # tests/browser.py: the report in a headless browser
    "gcc": "gcc",
    "cc": "gcc",                             # Debian's /usr/bin/cc is gcc's alternative
    "promtool": "prometheus",
    "pg_ctlcluster": "postgresql",
    "pg_createcluster": "postgresql",
    "psql": "postgresql",
    "postgresql-server": "postgresql",       # MIGRATOR_TEST_PG_URL: a running server (scripts/postgres.sh)
    "python3": "python3",
    "mount": "mount",
    "umount": "mount",
    "mountpoint": "util-linux",
    "runuser": "util-linux",
    "setpriv": "util-linux",
    "unshare": "util-linux",
    "true": "coreutils",
    "env": "coreutils",
    "sleep": "coreutils",
    "systemd-analyze": "systemd",            # tests/test_deploy.py verifies the units
    "migrator": "migrator",                  # this project's own command (the venv's, set-up makes it)
    "sh": "dash",
    "bash": "bash",
}
# On every Debian system, so set-up need not install them: Essential packages (coreutils, dash,
# bash, util-linux) and mount (Priority: required).
BASE = {"coreutils", "dash", "bash", "util-linux", "mount"}
OWN = {"migrator"}  # installed by set-up's venv step, not by apt
# Installed as a dependency of a package set-up names: python3-bpfcc Depends: python3.
PULLED_IN = {"python3": "python3-bpfcc"}
# Packages only scripts/postgres.sh needs to install (CI may run it before, or without, set-up).
SERVER = {"postgresql"}

ABS = re.compile(r"(?<![\w./-])/(?:usr/)?(?:local/)?s?bin/[\w.+{}*-]+")
RUNNERS = {("subprocess", n) for n in ("run", "Popen", "check_output", "check_call", "call")} | {("shutil", "which")}


def _text(node: ast.AST) -> str | None:
    """A string literal, or an f-string with each {expression} kept as "{}"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _is_runner(call: ast.Call, helpers: set[str]) -> bool:
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return (f.value.id, f.attr) in RUNNERS or (f.value.id == "os" and f.attr.startswith("exec"))
    return isinstance(f, ast.Name) and f.id in helpers


def _words(node: ast.AST) -> list[str]:
    """The command names a runner's first argument starts: ["ip", "tc"] for "ip netns exec {} tc ..."."""
    if isinstance(node, (ast.List, ast.Tuple)):
        first = _text(node.elts[0]) if node.elts else None
        return [first] if first else []
    s = _text(node)
    if not s:
        return []
    try:
        words = shlex.split(s)
    except ValueError:
        words = s.split()
    out = words[:1]
    for i, w in enumerate(words[:-2]):  # ip netns exec NS CMD ...
        if w == "exec" and i and words[i - 1] == "netns":
            out.append(words[i + 2])
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _helpers(tree: ast.AST) -> set[str]:
    """Functions of the file that pass one of their parameters as the command of a runner."""
    out = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        for c in ast.walk(fn):
            if isinstance(c, ast.Call) and _is_runner(c, set()) and c.args \
                    and isinstance(c.args[0], ast.Name) and c.args[0].id in params:
                out.add(fn.name)
    return out


def scan(paths) -> dict[str, list[str]]:
    """Command (name or absolute path) -> where it is used ("file:line")."""
    found: dict[str, list[str]] = {}
    for path in paths:
        path = Path(path)
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        docs, helpers = _docstrings(tree), _helpers(tree)

        def add(cmd: str, node: ast.AST) -> None:
            found.setdefault(cmd, []).append(f"{where}:{node.lineno}")

        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and _is_runner(n, helpers) and n.args:
                for w in _words(n.args[0]):
                    if w and not w.startswith(("/", "{", "-")) and "{}" not in w:
                        add(w, n)
            if isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and id(n) not in docs):
                s = _text(n)
                if s is None:
                    continue
                if "MIGRATOR_TEST_PG_URL" == s:
                    add("postgresql-server", n)
                for p in ABS.findall(s):
                    add(p.replace("{}", "*"), n)
    # A string that is part of an f-string is also its own Constant node: keep each place once.
    return {c: sorted(set(w)) for c, w in found.items()}


def package_of(cmd: str) -> str | None:
    if cmd in COMMANDS:
        return COMMANDS[cmd]
    for pattern, pkg in COMMANDS.items():
        if pattern.startswith("/") and fnmatch.fnmatchcase(cmd, pattern):
            return pkg
    if cmd.startswith("/"):  # /usr/bin/python3 is python3, /bin/true is true
        return COMMANDS.get(cmd.rsplit("/", 1)[1])
    return None


def installed_by(script: Path) -> set[str]:
    """Packages a set-up script installs: the arguments of its `ensure_debs "why" PKG...` and
    `apt-get install [-opts] PKG...` lines."""
    pkgs = set()
    for line in script.read_text().splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if words[:1] == ["ensure_debs"]:
            args = words[2:]
        elif words[:2] == ["apt-get", "install"]:
            args = words[2:]
        else:
            continue
        pkgs |= {w for w in args if not w.startswith(("-", ">", "$", "2>")) and "$" not in w}
    return pkgs


def problems(found: dict[str, list[str]], setup: set[str], server: set[str]) -> list[str]:
    out = []
    for cmd, where in sorted(found.items()):
        at = ", ".join(where[:3]) + (" ..." if len(where) > 3 else "")
        pkg = package_of(cmd)
        if pkg is None:
            out.append(f"{cmd} (used at {at}) has no Debian package here: map it to its Debian package "
                       f"in this test (tests/test_setup_packages.py, COMMANDS)")
        elif pkg in BASE or pkg in OWN or pkg in setup or PULLED_IN.get(pkg) in setup:
            continue
        elif pkg in SERVER and pkg in server:
            continue
        else:
            script = "scripts/setup.sh (or scripts/postgres.sh)" if pkg in SERVER else "scripts/setup.sh"
            out.append(f"{cmd} (used at {at}) needs Debian package {pkg}, which {script} does not install")
    return out


def sources() -> list[Path]:
    """What the suite and the tool run: tests/*.py (not this file, whose strings are examples) and
    migrator/**/*.py."""
    me = Path(__file__).resolve()
    return [p for p in sorted(ROOT.glob("tests/*.py")) if p.resolve() != me] + sorted(ROOT.glob("migrator/**/*.py"))


def test_setup_installs_every_package_the_tests_and_the_tool_use():
    found = scan(sources())
    # The scan sees what it must: the stock bcc tools of test_wrap and the report test's browser.
    assert "/usr/sbin/*-bpfcc" in found and "chromium" in found, sorted(found)
    assert problems(found, installed_by(SETUP), installed_by(POSTGRES)) == []


def test_setup_scripts_parse_as_installing_their_packages():
    setup = installed_by(SETUP)
    assert {"bpfcc-tools", "python3-bpfcc", "bpftool", "iproute2", "chromium", "gcc"} <= setup, setup
    assert "postgresql" in installed_by(POSTGRES)


def test_an_unmapped_command_fails_and_says_how_to_fix(tmp_path):
    f = tmp_path / "test_x.py"
    f.write_text('import subprocess, shutil\n'
                 'def sh(cmd):\n    return subprocess.run(cmd, shell=True)\n'
                 'subprocess.run(["frobnicate", "-x"])\n'
                 'sh(f"ip netns exec {ns} nft list ruleset")\n'
                 'TOOL = "/usr/sbin/{name}-bpfcc".format(name="x")\n'
                 'shutil.which("chromium")\n')
    found = scan([f])
    assert set(found) == {"frobnicate", "ip", "nft", "/usr/sbin/{name}-bpfcc", "chromium"}, found
    out = problems(found, installed_by(SETUP), installed_by(POSTGRES))
    assert len(out) == 2, out
    assert any(p.startswith(f"frobnicate (used at {f}:4)") and "map it to its Debian package in this test" in p
               for p in out), out
    assert any(p.startswith("nft") and "map it to its Debian package in this test" in p for p in out), out
    # ip, chromium and the bcc tools (a template path matches the glob) are mapped and installed.
    assert package_of("/usr/sbin/{name}-bpfcc") == package_of("/usr/sbin/tcplife-bpfcc") == "bpfcc-tools"


def test_a_package_setup_does_not_install_fails_naming_it(tmp_path):
    f = tmp_path / "test_y.py"
    f.write_text('def tool(name):\n    return f"/usr/sbin/{name}-bpfcc"\n'
                 'import os\nURL = os.environ["MIGRATOR_TEST_PG_URL"]\n')
    found = scan([f])
    assert set(found) == {"/usr/sbin/*-bpfcc", "postgresql-server"}, found
    out = problems(found, setup={"python3-bpfcc"}, server=set())
    assert [p.split(" (used at")[0] for p in out] == ["/usr/sbin/*-bpfcc", "postgresql-server"], out
    assert "needs Debian package bpfcc-tools, which scripts/setup.sh does not install" in out[0]
    assert "needs Debian package postgresql, which scripts/setup.sh (or scripts/postgres.sh) does not install" in out[1]
    # The server's package counts when postgres.sh installs it, and bpfcc-tools when set-up does.
    assert problems(found, setup={"bpfcc-tools"}, server={"postgresql"}) == []
