"""migrator: staged perf buffer -> BPF ring buffer migration with evidence and automatic rollback."""
from importlib import metadata as _metadata

from migrator.errors import MigratorError

try:
    __version__ = _metadata.version("migrator")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["MigratorError", "__version__"]
