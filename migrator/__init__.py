"""migrator: staged perf buffer -> BPF ring buffer migration with evidence and automatic rollback."""
from migrator.errors import MigratorError

__version__ = "0.1.0"
__all__ = ["MigratorError", "__version__"]
