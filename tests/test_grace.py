"""The grace period on the real kernel: one waiting thread per GracePeriod, reused by every window's
close and stopped with it; the caller's work runs until the period has passed."""
import os
import threading

import pytest

from kernel_util import needs_root
from migrator.dataplane.grace import GracePeriod

pytestmark = [pytest.mark.kernel, needs_root]


def _graces() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "migrator-grace"]


def test_one_thread_serves_every_wait_and_stops_at_close():
    before = len(_graces())
    g = GracePeriod()
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        steps = []
        for _ in range(3):
            g.wait_while(steps.append, step=0.001, wake_fd=fd)
        assert len(_graces()) == before + 1  # started once, reused
        assert len(steps) >= 3  # the caller's work ran during each wait
        with pytest.raises(BlockingIOError):  # each wake was read: the next wait is not ended by it
            os.eventfd_read(fd)
    finally:
        g.close()
        os.close(fd)
    assert len(_graces()) == before
