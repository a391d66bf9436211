"""The operator's program as `init` records it and every agent checks it: one hash of what it
compiles from (operator.py loads it; this module stays light, so `init`, `start` and the read-only
commands import neither bcc nor numpy for it)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from migrator.config import Config
from migrator.errors import ConfigError
from migrator.shared.resources import bpf_dir


def source_hash(cfg: Config) -> str | None:
    """sha256 of what a kind = "bcc" or "attach" source compiles from: the program file's bytes, its
    cflags and the migrator.h it includes. None for the demo probes and for kind = "command"."""
    src = cfg.source
    if src.kind not in ("bcc", "attach"):
        return None
    h = hashlib.sha256()
    try:
        h.update(b"file\0" + Path(src.file).read_bytes())
    except OSError as exc:
        raise ConfigError(cfg.path, "source.file", f"{src.file} cannot be read: {exc.strerror or exc}",
                          "give the path of the program's C file") from None
    h.update(b"\0cflags\0" + json.dumps(list(src.cflags)).encode())
    h.update(b"\0migrator.h\0" + (bpf_dir() / "migrator.h").read_bytes())
    return h.hexdigest()
