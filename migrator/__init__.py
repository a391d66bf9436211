"""migrator: staged perf buffer -> BPF ring buffer migration with evidence and automatic rollback.

The library an operator's process uses (see agent/feed.py):

    from migrator import attach, load
    bpf = load(src_file="mytool.bpf.c")       # bcc.BPF with MIGRATOR_CHANNEL expanded
    feed = attach(bpf, "events")               # replaces bpf["events"].open_perf_buffer / perf_buffer_poll
"""
from migrator.errors import MigratorError
from migrator.shared.resources import find_debian_bcc

find_debian_bcc()  # `import bcc` finds Debian's python3-bpfcc under any interpreter (shared/resources.py)


# The library's entry points, imported when first asked for (`from migrator import attach` or
# `migrator.attach`): the real functions, so help() shows their signatures and options, while
# `import migrator` alone (every command) stays cheap.
_LAZY = {"attach": ("migrator.agent.attach", "attach"), "load": ("migrator.dataplane.channel", "load")}


def __getattr__(name: str):
    """`attach` and `load` (imported on first use), and `__version__` (read from the installed
    package's metadata when first asked for: importlib.metadata costs every command ~20 ms)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name != "__version__":
        raise AttributeError(f"module 'migrator' has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("migrator")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "0+unknown"
    globals()["__version__"] = version
    return version


__all__ = ["MigratorError", "__version__", "attach", "load"]
