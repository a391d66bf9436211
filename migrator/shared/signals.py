"""SIGTERM takes the Ctrl-C path: one way out, whatever stops a command.

Every long-running command already cleans up when Ctrl-C raises KeyboardInterrupt (its `finally`
blocks release the controller's lease, stop agents and traffic, take the lab down, detach
programs). `sigterm_interrupts()` makes SIGTERM (systemd, kill, a supervisor) raise `Terminated`,
a KeyboardInterrupt, in the main thread, so it runs those same blocks; the command then exits
128 + the signal (130 for SIGINT, 143 for SIGTERM), as a shell counts a death by that signal.

Only the first SIGTERM raises: later ones are ignored, so cleaning up is not cut short.

A handler is the installing process's only. A child forked while it is installed (pyroute2 forks
a helper into each network namespace, and stops it with SIGTERM) inherits it, and would otherwise
unwind a copy of the parent's command from inside the child: run its `finally` blocks (take the
lab down, wait for the lab lock its parent holds) instead of dying. `own_process` makes such a
child die of the signal, as it would without the handler.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwind as for Ctrl-C (a KeyboardInterrupt, so every handler of it applies)."""

    signum = signal.SIGTERM

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal that stopped us: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def signal_name(exc: KeyboardInterrupt) -> str:
    """'SIGTERM' or 'SIGINT' (Ctrl-C)."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def own_process(handler):
    """`handler` for this process only: in a child forked after it was installed, the signal kills
    the child as the default action would (see the module docstring)."""
    owner = os.getpid()

    def guarded(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        return handler(signum, frame)

    return guarded


@contextmanager
def held(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Run the block whole: a signal that comes meanwhile is noted, and handed to the handler it
    had (a KeyboardInterrupt, `Terminated`, the operator's own, the default action) once the
    block has ended, so nothing is raised halfway through it. A window's close is such a block:
    cut short after the channel moved to the next epoch, that window's books were lost.

    Python-level handlers are swapped, not the thread's signal mask: a process-directed signal
    may land on any thread, while Python runs its handler in the main thread (so outside the
    main thread this does nothing), and a mask would be inherited by every thread and child
    started inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: set outside Python, left as is
    came: list[int] = []
    for s in previous:
        signal.signal(s, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in dict.fromkeys(came):
            h = previous[s]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), s)  # the default action, as if it came now


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside: the first SIGTERM raises Terminated in the main thread; later ones are ignored.

    Outside the main thread (where Python cannot set handlers) it does nothing. The previous
    handler is restored on the way out, so it nests (a command may still install its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def on_term(signum, frame):
        if fired:
            return  # already unwinding: let the clean-up finish
        fired.append(signum)
        raise Terminated(signum)

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, own_process(on_term))
    try:
        yield
    finally:
        try:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, TypeError):  # pragma: no cover - interpreter shutting down
            print("migrator: could not restore the SIGTERM handler", file=sys.stderr)


__all__ = ["Terminated", "exit_code", "held", "own_process", "signal_name", "sigterm_interrupts"]
