"""Versioned payloads: old producers still decode, unknown versions are counted, never raised."""
import numpy as np
import pytest

from kernel_util import collect, needs_root, records
from migrator.dataplane.loader import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline
from migrator.dataplane.schema import CURRENT_VERSION, EVENT_DTYPE, LAYOUTS, decode_one, fingerprint, upgrade

N = 2_000


def _run(version: int):
    with Probe("synthetic", extra_cflags=(f"-DSCHEMA_VERSION={version}",)) as probe:
        pipe = Pipeline(probe, keep_records=True)
        try:
            probe.set_mode("DUAL")
            gen = LoadGen(N, rate=100_000)
            probe.set_target(gen.pid)
            gen.start()
            collect(pipe, lambda: not gen.running())
            gen.wait(timeout=10)
            w = {x.channel: x for x in pipe.close_window()}
            return w, records(pipe, "perf"), records(pipe, "ring")
        finally:
            pipe.close()


@pytest.mark.kernel
@needs_root
def test_version_1_producer_still_decodes_on_both_channels():
    w, perf, ring = _run(1)
    for ch, recs in (("perf", perf), ("ring", ring)):
        assert (w[ch].attempts, w[ch].delivered, w[ch].parse_errors, w[ch].residual) == (N, N, 0, 0), ch
        assert recs.dtype == EVENT_DTYPE
        assert set(np.unique(recs["schema_version"])) == {1}
        assert set(np.unique(recs["value"])) == {0}  # v2 field, defaulted
        assert np.array_equal(np.sort(recs["seq"]), np.arange(N, dtype=np.uint64))


@pytest.mark.kernel
@needs_root
def test_unknown_version_is_a_counted_parse_error():
    w, perf, ring = _run(99)
    for ch, recs in (("perf", perf), ("ring", ring)):
        assert (w[ch].attempts, w[ch].delivered, w[ch].parse_errors) == (N, 0, N), ch
        assert len(recs) == 0


def test_decode_one_accepts_every_shipped_version_and_rejects_others():
    v1 = np.zeros(1, dtype=LAYOUTS[1])
    v1["schema_version"], v1["seq"], v1["comm"] = 1, 7, b"old"
    rec = decode_one(v1.tobytes())
    assert rec.dtype == EVENT_DTYPE and int(rec["seq"][0]) == 7 and rec["comm"][0] == b"old" and rec["value"][0] == 0
    v2 = np.zeros(1, dtype=EVENT_DTYPE)
    v2["schema_version"], v2["value"] = CURRENT_VERSION, 42
    assert int(decode_one(v2.tobytes())["value"][0]) == 42
    bad = v2.copy()
    bad["schema_version"] = 3
    assert decode_one(bad.tobytes()) is None
    assert decode_one(v1.tobytes()[:40]) is None  # truncated
    assert decode_one(b"") is None
    assert upgrade(v2, CURRENT_VERSION) is v2


# The fingerprints of the layouts as shipped, computed once and written down: any change to a
# layout (a field's name, type or offset, or the record size) changes its digest and fails here.
FINGERPRINTS = {1: "v1:26ff8305ff25ff2b", 2: "v2:911942445eea27db"}


def test_fingerprint_pins_the_shipped_layouts():
    assert CURRENT_VERSION == 2
    assert fingerprint() == "v2:911942445eea27db"
    assert fingerprint(1) == "v1:26ff8305ff25ff2b"
    assert {v: fingerprint(v) for v in LAYOUTS} == FINGERPRINTS


def test_fingerprint_changes_with_any_layout_change(monkeypatch):
    """The pin above is worth something only if the digest follows the layout."""
    from migrator.dataplane import schema

    v2 = [(n, LAYOUTS[2].fields[n][0].str) for n in LAYOUTS[2].names]
    renamed = [("val" if n == "value" else n, t) for n, t in v2]
    retyped = [(n, "<i8" if n == "value" else t) for n, t in v2]
    widened = v2[:-1] + [("value", "<u8"), ("pad", "<u4")]
    seen = set()
    for fields in (renamed, retyped, widened):
        monkeypatch.setitem(schema.LAYOUTS, 2, np.dtype(fields))
        fp = fingerprint(2)
        assert fp.startswith("v2:") and fp != FINGERPRINTS[2], fields
        seen.add(fp)
    assert len(seen) == 3
