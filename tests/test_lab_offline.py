"""Lab checks that need neither root nor namespaces: option validation and the CPU-load child."""
from __future__ import annotations

import os
import time

import pytest

from migrator.errors import LabConfigError
from migrator.tools.lab import cpu_load, lab_up
from migrator.shared.vocab import LAB_PREFIX_RULE


@pytest.mark.parametrize("bad", ["", "Mig", "mig1", "1mig", "toolongname", "a-b"])
def test_bad_prefix_refused(bad):
    # refused by name before the root check: the same answer for any user
    with pytest.raises(LabConfigError) as exc:
        lab_up(1, bad)
    assert (exc.value.option, exc.value.value) == ("prefix", bad)
    assert str(exc.value) == f"lab: prefix={bad!r} is not valid (fix: use {LAB_PREFIX_RULE})"


def test_cpu_load_is_bounded_and_pinned():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    t0 = time.monotonic()
    proc = cpu_load(0.4, cpu=cpu)
    time.sleep(0.2)
    assert os.sched_getaffinity(proc.pid) == {cpu}
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 3


def test_cpu_load_refuses_bad_options():
    allowed = sorted(os.sched_getaffinity(0))
    for kwargs, option, value in [({"seconds": 0}, "seconds", 0), ({"seconds": 1, "duty": 1.5}, "duty", 1.5),
                                  ({"seconds": 1, "cpu": 10_000}, "cpu", 10_000)]:
        with pytest.raises(LabConfigError) as exc:
            cpu_load(**kwargs)
        assert (exc.value.option, exc.value.value) == (option, value)
    assert exc.value.fix == f"choose one of {allowed}"
