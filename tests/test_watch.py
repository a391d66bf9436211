"""ChangeWatch: the agent's link reads its desired mode again only after somebody committed (SQLite)."""
from __future__ import annotations

from sqlalchemy import update

from migrator.store import reader_of
from migrator.store.models import Host
from migrator.store.watch import ChangeWatch


def test_a_commit_by_another_connection_and_only_that_is_a_change(started):
    _cfg, sf, mid = started
    watch = ChangeWatch(reader_of(sf))
    assert watch.changed() is True  # the first look
    assert [watch.changed() for _ in range(3)] == [False, False, False]
    with sf() as s, s.begin():  # a writer's transaction that writes nothing
        s.get(Host, 1)
    assert watch.changed() is False
    with sf() as s, s.begin():
        s.execute(update(Host).where(Host.migration_id == mid).values(desired_mode="PERF"))
    assert [watch.changed(), watch.changed()] == [True, False]
    watch.close()
    assert watch.changed() is True  # starts over after close


def test_the_link_reads_the_desired_mode_only_after_a_change(started):
    from migrator.agent.link import DbLink

    _cfg, sf, mid = started
    link = DbLink(sf, mid, "h1")
    reads = []
    real = link.read_desired
    link.read_desired = lambda: reads.append(1) or real()
    link._beat_due = float("inf")  # no heartbeat writes in this test
    for _ in range(5):
        link._round_trip()
    assert len(reads) == 1 and link.desired.mode == "DUAL"
    with sf() as s, s.begin():
        s.execute(update(Host).where(Host.migration_id == mid, Host.name == "h1").values(desired_mode="PERF"))
    link._round_trip()
    link._round_trip()
    assert len(reads) == 2 and link.desired.mode == "PERF"
    link.watch.close()  # the link thread never ran: nothing to stop but its connections
    link.reader.dispose()
