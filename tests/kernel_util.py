"""Helpers for tests that load real BPF programs: root check and a drained-collection loop."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest


def skips_without_root(euid: int, env) -> bool:
    """The gating rule: skip only when not root AND CI is unset (or empty).

    Outside CI a non-root run skips the kernel tests; in CI (root on the same kernel) they must
    run, so there a missing privilege fails loudly instead of skipping.
    """
    return euid != 0 and not env.get("CI")


def unavailable(reason: str) -> None:
    """A machine capability a test needs is missing: skip on a developer's machine, fail in CI
    (root on the project's kind of machine has every capability these tests use)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must have this, but: {reason}")
    pytest.skip(reason)


# For tests that load BPF programs, create namespaces or otherwise need root; always together
# with @pytest.mark.kernel (tests/test_gating.py checks both ways).
needs_root = pytest.mark.skipif(skips_without_root(os.geteuid(), os.environ),
                                reason="loading BPF programs needs root (CI runs as root)")


def collect(pipe, until, timeout: float = 30.0) -> None:
    """Poll the pipeline until `until()` is true, then drain once more."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out waiting for events"
        pipe.poll(timeout=0.01)
    pipe.drain()


def records(pipe, channel: str) -> np.ndarray:
    """Every demo event a pipeline kept on `channel`, decoded (header fields + payload fields)."""
    from migrator.dataplane.frames import Frames
    from migrator.dataplane.schema import DEMO_TYPE, demo_registry

    reg = demo_registry()
    rows = reg.decode(Frames.concat(pipe.records[channel])).get(DEMO_TYPE)
    assert reg.parse_errors == {}, reg.parse_errors
    return rows if rows is not None else np.zeros(0, reg.decoded_dtype(DEMO_TYPE))


def one_event_while_asleep(probe, pipe, timeout: float = 5.0) -> tuple[int, float]:
    """One event, emitted by a fresh process while `pipe` waits (or just before): (the records the
    pipe took, wait and drain together, and how long its wait lasted, against `timeout`)."""
    from migrator.dataplane.loadgen import LoadGen

    with LoadGen(1, rate=0) as gen:
        probe.set_target(gen.pid)
        gen.start()
        t0 = time.monotonic()
        n = pipe.poll(timeout=timeout)
        waited = time.monotonic() - t0
        assert gen.wait(timeout=10) == 0
    return n + pipe.drain(), waited
