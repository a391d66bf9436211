"""A window's close runs whole: a Ctrl-C that comes during it is raised once it has ended."""
import os
import signal

import pytest

from migrator.shared.signals import deferred


def test_a_signal_during_a_deferred_block_is_raised_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()  # nothing left held
