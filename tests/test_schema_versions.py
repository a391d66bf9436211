"""Versioned payloads: old producers still decode, unknown versions are counted, never raised."""
import numpy as np
import pytest

from kernel_util import collect, needs_root
from migrator.dataplane.frames import Frames
from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline
from migrator.dataplane.schema import DEMO_LAYOUTS, DEMO_TYPE, Registry, demo_registry, fingerprint

N = 2_000


def _run(version: int):
    """N synthetic events in DUAL from a producer built to emit payload `version`; both channels decoded."""
    with Probe("synthetic", extra_cflags=(f"-DDEMO_VERSION={version}",)) as probe:
        pipe = Pipeline(probe, keep_records=True)
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(N, rate=100_000)
            probe.set_target(gen.pid)
            gen.start()
            collect(pipe, lambda: not gen.running())
            gen.wait(timeout=10)
            w = {x.channel: x for x in pipe.close_window()}
            out = {}
            for ch in ("perf", "ring"):
                reg = demo_registry()
                out[ch] = (reg.decode(Frames.concat(pipe.records[ch])).get(DEMO_TYPE), reg.parse_errors)
            return w, out
        finally:
            pipe.close()


@pytest.mark.kernel
@needs_root
def test_version_1_producer_still_decodes_on_both_channels():
    w, out = _run(1)
    for ch, (recs, errors) in out.items():
        assert (w[ch].attempts, w[ch].delivered, w[ch].parse_errors, w[ch].residual) == (N, N, 0, 0), ch
        assert errors == {}
        assert set(np.unique(recs["type_version"])) == {1} and set(np.unique(recs["hdr_len"])) == {32}
        assert set(np.unique(recs["value"])) == {0}  # v2 field, defaulted
        assert np.array_equal(np.sort(recs["seq"]), np.arange(N, dtype=np.uint64))


@pytest.mark.kernel
@needs_root
def test_unknown_version_is_a_counted_parse_error():
    w, out = _run(99)
    for ch, (recs, errors) in out.items():
        # framed and delivered by the channel; the payload is what nobody can read
        assert (w[ch].attempts, w[ch].delivered) == (N, N), ch
        assert recs is None and errors == {DEMO_TYPE: N}


# The fingerprint of the demo registry as shipped, computed once and written down: any change to
# a layout (a field's name, type or offset, a size, a version added) changes it and fails here.
DEMO_FINGERPRINT = "r1:a32237f18d975d06"


def test_fingerprint_pins_the_shipped_layouts():
    assert sorted(DEMO_LAYOUTS) == [1, 2] and DEMO_LAYOUTS[2].itemsize == 40 and DEMO_LAYOUTS[1].itemsize == 32
    assert fingerprint() == DEMO_FINGERPRINT


@pytest.mark.parametrize("change", ["rename", "retype", "grow", "new version"])
def test_fingerprint_changes_with_any_layout_change(change):
    """The pin above is worth something only if the digest follows the layout."""
    reg = Registry()
    v1, v2 = DEMO_LAYOUTS[1].descr, DEMO_LAYOUTS[2].descr
    if change == "rename":
        v2 = [("kind2", v2[0][1])] + v2[1:]
    elif change == "retype":
        v2 = [(v2[0][0], "<u8")] + v2[1:]
    elif change == "grow":
        v2 = v2 + [("extra", "<u4")]
    reg.register(DEMO_TYPE, 1, v1)
    reg.register(DEMO_TYPE, 2, v2)
    if change == "new version":
        reg.register(DEMO_TYPE, 3, v2)
    assert reg.fingerprint() != DEMO_FINGERPRINT
