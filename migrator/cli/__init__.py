"""The migrator command line: thin commands over the core API, one group per module.

Every command module registers itself on `app`; errors of the MigratorError family are turned
into `Error: ...` on stderr and a non-zero exit in one place (MigratorGroup.invoke), so the
same behaviour holds under the console script and under typer's CliRunner.
"""
from __future__ import annotations

import typer
from typer.core import TyperGroup

from migrator.cli._help import tidy_tree
from migrator.errors import MigratorError

_state = {"debug": False}


class MigratorGroup(TyperGroup):
    """The root command group: migrator errors end as one `Error: ...` line and an exit code, in one place.

    It also makes the help of the whole tree reflow at any width (migrator.cli._help.tidy_tree).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        tidy_tree(self)

    def invoke(self, ctx):  # type: ignore[override]
        """Run the command; a MigratorError, Ctrl-C or SIGTERM becomes a short message and exit code
        (--debug re-raises errors).

        SIGTERM takes Ctrl-C's path (migrator.shared.signals): the command's clean-up runs the same
        (leases released, agents stopped, lab hosts removed), then it exits 128 + the signal: 130
        for Ctrl-C, 143 for SIGTERM. A command may install its own SIGTERM handler inside."""
        from migrator.shared.signals import exit_code, signal_name, sigterm_interrupts

        try:
            with sigterm_interrupts():
                return super().invoke(ctx)
        except MigratorError as exc:
            if _state["debug"]:
                raise
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            name = signal_name(exc)
            typer.echo("Interrupted." if name == "SIGINT" else f"Terminated ({name}): cleaned up as for Ctrl-C.",
                       err=True)
            raise typer.Exit(exit_code(exc)) from None


app = typer.Typer(
    cls=MigratorGroup,
    help="Move an eBPF event pipeline from perf buffer to BPF ring buffer, in stages, with evidence.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from migrator import __version__

        typer.echo(f"migrator {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Re-raise errors with a traceback."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


def main() -> None:
    """Console-script entry point."""
    app()


# Registration: each module adds its commands to `app` at import time.
from migrator.cli import doctor  # noqa: E402,F401
from migrator.cli import shadow  # noqa: E402,F401
from migrator.cli import bench  # noqa: E402,F401
from migrator.cli import control  # noqa: E402,F401
from migrator.cli import views  # noqa: E402,F401
from migrator.cli import lab  # noqa: E402,F401
from migrator.cli import bench_controller  # noqa: E402,F401
from migrator.cli import agent  # noqa: E402,F401
from migrator.cli import build  # noqa: E402,F401
from migrator.cli import wrap  # noqa: E402,F401
from migrator.cli import report  # noqa: E402,F401
from migrator.cli import prune  # noqa: E402,F401
from migrator.cli import advise  # noqa: E402,F401
