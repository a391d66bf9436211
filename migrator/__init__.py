"""migrator: staged perf buffer -> BPF ring buffer migration with evidence and automatic rollback.

The library an operator's process uses (see agent/feed.py):

    from migrator import attach, load
    bpf = load(src_file="mytool.bpf.c")       # bcc.BPF with MIGRATOR_CHANNEL expanded
    feed = attach(bpf, "events")               # replaces bpf["events"].open_perf_buffer / perf_buffer_poll
"""
from migrator.errors import MigratorError


def __getattr__(name: str):
    """`__version__`, read from the installed package's metadata when first asked for (importing
    importlib.metadata costs every command and every operator process some 20 ms)."""
    if name != "__version__":
        raise AttributeError(f"module 'migrator' has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("migrator")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "0+unknown"
    globals()["__version__"] = version
    return version


def attach(bpf, name: str = "events", **kwargs):
    """Replace bcc's reader of channel `name` in this process (migrator.agent.attach.attach)."""
    from migrator.agent.attach import attach as _attach

    return _attach(bpf, name, **kwargs)


def load(text: str | None = None, src_file: str | None = None, cflags=(), **bpf_kwargs):
    """Compile a program that uses bpf/migrator.h with bcc (migrator.dataplane.channel.load)."""
    from migrator.dataplane.channel import load as _load

    return _load(text=text, src_file=src_file, cflags=cflags, **bpf_kwargs)


__all__ = ["MigratorError", "__version__", "attach", "load"]
