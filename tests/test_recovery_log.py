"""A transition a crash left half-done (intent written, not confirmed) is finished by the next
writer, and that writer says so in one WARNING line: the controller's loop, `start`, a manual move."""
from __future__ import annotations

import logging
import threading

import pytest

from migrator.config import load_config
from migrator.control.controller import run_controller, start_migration
from migrator.control.phases import DbApplier, Phase, request_transition, transition
from migrator.store import api, open_store
from migrator.store.models import Migration, Transition

from conftest import T0

pytestmark = pytest.mark.usefixtures("backend")


def migration(toml_file, started: bool = True):
    cfg = load_config(toml_file('hosts = ["h1", "h2"]\nslices = [1, 2]\n'))
    sf = open_store(cfg.database_url)
    with sf() as s, s.begin():
        mid = api.create_migration(s, cfg, schema_fingerprint="fp1", now=T0).id
    if started:
        transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0)
    return sf, mid


def half_done(sf, mid, target, reason="crashed here") -> int:
    """An intent as a process killed between its commit and the apply leaves it."""
    with sf() as s, s.begin():
        return request_transition(s, mid, target, actor="auto", reason=reason, holder="deadhost:99:abcd",
                                  now=T0 + 1).id


def recovered(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "migrator.control.phases"]


def test_the_controller_logs_the_transition_it_finishes_after_a_crash(toml_file, caplog):
    sf, mid = migration(toml_file)
    tid = half_done(sf, mid, Phase.ROLLED_BACK)
    with caplog.at_level(logging.WARNING, logger="migrator.control.phases"):
        phase = run_controller(sf, mid, applier=DbApplier(), stop=threading.Event(), poll_interval=0.01,
                               clock=lambda: T0 + 3.5)
    assert phase == "ROLLED_BACK"
    lines = recovered(caplog)
    assert len(lines) == 1
    assert lines[0].startswith(f"migration {mid}: finished transition {tid} (DUAL_INSTRUMENT -> ROLLED_BACK, "
                               "auto: crashed here) left half-done by deadhost:99:abcd since ")
    assert lines[0].endswith("(2.5 s ago): modes applied, confirmed")
    with sf() as s:
        assert s.get(Transition, tid).status == "confirmed" and s.get(Migration, mid).pending_transition_id is None


def test_start_and_manual_moves_log_it_too(toml_file, caplog):
    sf, mid = migration(toml_file, started=False)
    with sf() as s, s.begin():
        s.get(Migration, mid).schema_fingerprint = "fp1"
    half_done(sf, mid, Phase.DUAL_INSTRUMENT)
    with caplog.at_level(logging.WARNING, logger="migrator.control.phases"):
        start_migration(sf, mid, schema_fingerprint="fp1", applier=DbApplier(), clock=lambda: T0 + 2)
        assert len(recovered(caplog)) == 1
        half_done(sf, mid, Phase.PAUSED)
        transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), clock=lambda: T0 + 3)
    lines = recovered(caplog)
    assert len(lines) == 2 and "(DUAL_INSTRUMENT -> PAUSED, auto: crashed here)" in lines[1]
    with sf() as s:
        assert s.get(Migration, mid).phase == "DUAL_INSTRUMENT"


def test_nothing_is_logged_without_a_leftover(toml_file, caplog):
    sf, mid = migration(toml_file)
    with caplog.at_level(logging.WARNING, logger="migrator.control.phases"):
        transition(sf, mid, Phase.PAUSED, applier=DbApplier(), clock=lambda: T0 + 1)
        ticks = iter(T0 + 2 + i * 0.01 for i in range(10 ** 6))
        assert run_controller(sf, mid, applier=DbApplier(), deadline=T0 + 2.1, poll_interval=0.001,
                              clock=lambda: next(ticks)) == "PAUSED"
    assert recovered(caplog) == []
