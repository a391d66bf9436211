"""Process lifecycle probe: fork, exec and exit of /bin/true with its real pid and comm."""
import subprocess

import pytest

from kernel_util import collect, needs_root, records
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.pipeline import Pipeline
from migrator.dataplane.schema import render

pytestmark = [pytest.mark.kernel, needs_root]


def test_fork_exec_exit_of_bin_true():
    with Probe("proc") as probe:
        pipe = Pipeline(probe, keep_records=True)
        try:
            probe.set_mode("DUAL")
            proc = subprocess.Popen(["/bin/true"])
            assert proc.wait(timeout=10) == 0
            pid = proc.pid

            def seen():
                return any(r["kind"] == 4 and r["pid"] == pid for r in map(render, records(pipe, "ring")))

            collect(pipe, seen, timeout=10)
            ring = [render(r) for r in records(pipe, "ring")]
            perf = [render(r) for r in records(pipe, "perf")]
        finally:
            pipe.close()

    for chan in (ring, perf):
        mine = [r for r in chan if pid in (r["pid"], r["aux"])]
        kinds = {r["kind_name"]: r for r in mine}
        assert kinds["fork"]["aux"] == pid  # child pid, from the tracepoint args
        assert kinds["exec"]["pid"] == pid and kinds["exec"]["comm"] == "true"
        assert kinds["exit"]["pid"] == pid and kinds["exit"]["comm"] == "true"
        assert kinds["fork"]["seq"] < kinds["exec"]["seq"] < kinds["exit"]["seq"]
