"""Where the files migrator ships live: the BPF sources, the alembic scripts, the example config.

In a source checkout they sit at the top of the repository (`bpf/`, `migrations/`,
`canary.toml`); a wheel carries the same files as the packages `migrator.bpf` and
`migrator.migrations` (mapped in pyproject.toml) and `migrator/canary.toml`. Both cases go
through importlib.resources, so every caller finds them from any working directory.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from importlib import resources
from pathlib import Path

# Where Debian's python3-bpfcc puts the `bcc` package (pure Python over libbcc.so). PyPI's `bcc` is an
# unrelated project: bcc comes from the distribution, whatever interpreter runs migrator.
DEBIAN_BCC_DIR = "/usr/lib/python3/dist-packages"


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


def bpf_dir() -> Path:
    """The directory holding migrator.h (the header operators include), demo.h and the demo probes."""
    return _package_dir("migrator.bpf")


def migrations_dir() -> Path:
    """The alembic script directory (env.py and versions/)."""
    return _package_dir("migrator.migrations")


def example_config() -> str:
    """The commented default canary.toml shipped with migrator."""
    return resources.files("migrator").joinpath("canary.toml").read_text(encoding="utf-8")


class DebianBcc(importlib.abc.MetaPathFinder):
    """Finds `bcc` in Debian's dist-packages when no other finder does: a migrator installed from a
    wheel into a venv of any python3 (pyenv's, a venv without --system-site-packages) then loads
    Debian's bcc like the system python3 would. Last on sys.meta_path, so a `bcc` the interpreter
    finds by itself always wins; it resolves the package only (its submodules follow its __path__)."""

    def __init__(self, directory: str = DEBIAN_BCC_DIR) -> None:
        self.directory = directory

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 -- importlib's signature
        if name != "bcc":
            return None
        return importlib.machinery.PathFinder.find_spec(name, [self.directory])


def find_debian_bcc() -> None:
    """Let `import bcc` fall back to Debian's python3-bpfcc (once per process)."""
    if not any(isinstance(f, DebianBcc) for f in sys.meta_path):
        sys.meta_path.append(DebianBcc())
