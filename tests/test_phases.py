"""Phase machine: every pair of positions, guards, desired modes, intent -> apply -> confirm."""
from __future__ import annotations

import itertools

import pytest
from sqlalchemy import func, select

from migrator.errors import GuardFailed, TransitionNotAllowed, TransitionPending
from migrator.control.phases import Phase, check_transition, finish_transition, modes_for, next_step, request_transition, transition
from migrator.store import api
from migrator.store.models import Migration, Transition

from conftest import T0

P, D, S, C, DONE, RB, PA, AB = (Phase.PLANNED, Phase.DUAL_INSTRUMENT, Phase.SHADOW, Phase.CANARY,
                                 Phase.COMPLETE, Phase.ROLLED_BACK, Phase.PAUSED, Phase.ABORTED)
# (phase, slice) positions of a 2-slice migration; PAUSED paused from SHADOW.
POS = {"PLANNED": (P, 0), "DUAL": (D, 0), "SHADOW": (S, 0), "CANARY1": (C, 1), "CANARY2": (C, 2),
       "COMPLETE": (DONE, 0), "ROLLED_BACK": (RB, 0), "PAUSED": (PA, 0), "ABORTED": (AB, 0)}
LEGAL_PAIRS = {
    ("PLANNED", "DUAL"), ("PLANNED", "ABORTED"),
    ("DUAL", "SHADOW"), ("DUAL", "ROLLED_BACK"), ("DUAL", "PAUSED"), ("DUAL", "ABORTED"),
    ("SHADOW", "CANARY1"), ("SHADOW", "ROLLED_BACK"), ("SHADOW", "PAUSED"), ("SHADOW", "ABORTED"),
    ("CANARY1", "CANARY2"), ("CANARY1", "ROLLED_BACK"), ("CANARY1", "PAUSED"), ("CANARY1", "ABORTED"),
    ("CANARY2", "COMPLETE"), ("CANARY2", "ROLLED_BACK"), ("CANARY2", "PAUSED"), ("CANARY2", "ABORTED"),
    ("PAUSED", "SHADOW"), ("PAUSED", "ROLLED_BACK"), ("PAUSED", "ABORTED"),
}


@pytest.mark.parametrize("src,dst", list(itertools.product(POS, POS)))
def test_every_pair(src, dst):
    (cur, s), (tgt, t) = POS[src], POS[dst]
    call = lambda: check_transition(cur, tgt, slice_=s, to_slice=t, slices=2,  # noqa: E731
                                    paused_phase="SHADOW" if cur == PA else None, paused_slice=0)
    if (src, dst) in LEGAL_PAIRS:
        call()
    else:
        with pytest.raises(TransitionNotAllowed) as exc:
            call()
        assert str(exc.value).startswith(f"cannot go from {exc.value.current} to {exc.value.target}: ")
        assert exc.value.current.startswith(str(cur)) and exc.value.target.startswith(str(tgt))


@pytest.mark.parametrize("src,dst,message", [
    (("COMPLETE", 0), ("SHADOW", 0), "cannot go from COMPLETE to SHADOW: COMPLETE is final"),
    (("SHADOW", 0), ("CANARY", 2), "cannot go from SHADOW to CANARY slice 2/2: slices go in order; next is slice 1"),
    (("CANARY", 1), ("COMPLETE", 0), "cannot go from CANARY slice 1/2 to COMPLETE: slices 2..2 have not run yet"),
    (("PLANNED", 0), ("SHADOW", 0), "cannot go from PLANNED to SHADOW: from PLANNED only ABORTED, DUAL_INSTRUMENT"),
    (("PAUSED", 0), ("DUAL_INSTRUMENT", 0), "cannot go from PAUSED to DUAL_INSTRUMENT: resume returns to SHADOW"),
])
def test_messages(src, dst, message):
    with pytest.raises(TransitionNotAllowed) as exc:
        check_transition(src[0], dst[0], slice_=src[1], to_slice=dst[1], slices=2, paused_phase="SHADOW")
    assert str(exc.value) == message


def test_next_step_and_modes():
    assert [next_step(p, s, 2) for p, s in [(P, 0), (D, 0), (S, 0), (C, 1), (C, 2)]] == [
        (D, 0), (S, 0), (C, 1), (C, 2), (DONE, 0)]
    with pytest.raises(TransitionNotAllowed, match="resume it first"):
        next_step(PA, 0, 2)
    hosts = [("a", 1), ("b", 2), ("c", 2)]
    assert modes_for(D, 0, hosts) == {"a": "DUAL", "b": "DUAL", "c": "DUAL"}
    assert modes_for(C, 1, hosts) == {"a": "RING", "b": "PERF", "c": "PERF"}
    assert modes_for(DONE, 0, hosts) == {"a": "RING", "b": "RING", "c": "RING"}
    assert modes_for(RB, 0, hosts) == modes_for(AB, 0, hosts) == {"a": "PERF", "b": "PERF", "c": "PERF"}
    assert modes_for(PA, 0, hosts) == {}


def _new(sf, config):
    with sf() as s, s.begin():
        return api.create_migration(s, config, now=T0).id


def test_full_path_applies_modes_in_order(session_factory, config, applier):
    mid = _new(session_factory, config)
    clock = lambda: T0  # noqa: E731
    steps = [(D, 0), (S, 0), (PA, 0), (S, 0), (C, 1), (C, 2), (DONE, 0)]
    for tgt, sl in steps:
        transition(session_factory, mid, tgt, to_slice=sl, applier=applier, clock=clock, reason="test")
    assert [c[1] for c in applier.calls] == [
        {"h1": "DUAL", "h2": "DUAL"}, {"h1": "DUAL", "h2": "DUAL"}, {"h1": "DUAL", "h2": "DUAL"},
        {"h1": "RING", "h2": "PERF"}, {"h1": "RING", "h2": "RING"}, {"h1": "RING", "h2": "RING"}]
    with session_factory() as s:
        hist = api.history(s, mid)
        assert [(h["to"], h["to_slice"], h["status"]) for h in hist] == [
            ("DUAL_INSTRUMENT", 0, "confirmed"), ("SHADOW", 0, "confirmed"), ("PAUSED", 0, "confirmed"),
            ("SHADOW", 0, "confirmed"), ("CANARY", 1, "confirmed"), ("CANARY", 2, "confirmed"),
            ("COMPLETE", 0, "confirmed")]
        m = s.get(Migration, mid)
        assert (m.phase, m.pending_transition_id, m.paused_phase) == ("COMPLETE", None, None)


def test_illegal_request_writes_nothing(session_factory, config):
    mid = _new(session_factory, config)
    with pytest.raises(TransitionNotAllowed, match="cannot go from PLANNED to COMPLETE"):
        with session_factory() as s, s.begin():
            request_transition(s, mid, DONE)
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Transition)) == 0


def test_intent_blocks_a_second_transition_and_confirms_once(session_factory, config, applier):
    mid = _new(session_factory, config)
    with session_factory() as s, s.begin():
        request_transition(s, mid, D, now=T0)
    with pytest.raises(TransitionPending, match=r"transition 1 \(PLANNED -> DUAL_INSTRUMENT\) is still being applied"):
        with session_factory() as s, s.begin():
            request_transition(s, mid, AB, now=T0)
    assert finish_transition(session_factory, mid, applier, lambda: T0).id == 1
    assert finish_transition(session_factory, mid, applier, lambda: T0) is None
    assert len(applier.calls) == 1
    with session_factory() as s:
        assert s.get(Migration, mid).phase == "DUAL_INSTRUMENT"


def test_guards(session_factory, config, applier):
    mid = _new(session_factory, config)
    transition(session_factory, mid, D, applier=applier, clock=lambda: T0)
    with pytest.raises(GuardFailed) as exc:
        with session_factory() as s, s.begin():
            request_transition(s, mid, S, min_clean=3)
    assert str(exc.value) == ("cannot go from DUAL_INSTRUMENT to SHADOW: guard 'min_clean_windows': "
                              "0 of 3 clean windows so far")
    with pytest.raises(GuardFailed, match="guard 'manual_gate': waiting for `migrator advance`"):
        with session_factory() as s, s.begin():
            request_transition(s, mid, S, actor="auto", manual_gate=True)
    with session_factory() as s, s.begin():
        s.get(Migration, mid).schema_fingerprint = "fp-A"
        api.report_fingerprint(s, mid, "fp-B")
    with pytest.raises(GuardFailed) as exc:
        with session_factory() as s, s.begin():
            request_transition(s, mid, S)
    assert "frozen 'fp-A', now 'fp-B'" in str(exc.value) and exc.value.guard == "schema_fingerprint"
    # Rollback stays possible whatever the guards say.
    transition(session_factory, mid, RB, applier=applier, clock=lambda: T0)
