"""Where the files migrator ships live: the BPF sources, the alembic scripts, the example config.

In a source checkout they sit at the top of the repository (`bpf/`, `migrations/`,
`canary.toml`); a wheel carries the same files as the packages `migrator.bpf` and
`migrator.migrations` (mapped in pyproject.toml) and `migrator/canary.toml`. Both cases go
through importlib.resources, so every caller finds them from any working directory.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


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
