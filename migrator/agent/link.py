"""The agent's link to the database, on its own thread so a slow or lost database never stalls
the consumers. The data path only reads `desired`/`up` and hands windows and mode reports over.

How it learns a new desired mode depends on the database:
- SQLite: a look at `PRAGMA data_version` every `poll` (store/watch.py); the row is read only after
  somebody committed.
- PostgreSQL: push. One held connection in autocommit LISTENs on the migration's channel, which
  every transaction that changes what a host reads NOTIFYs (store/push.py). The thread sleeps on
  that connection's socket (and on its own eventfd, written when there is something to send or it
  must stop), reads its row only when notified, and once every `safety_read` seconds in case a
  notification was lost. Idle, it costs a heartbeat a second and a read every `safety_read`; a
  transition arrives within one notification, whatever `safety_read` is.
Writes (closed windows, the heartbeat, mode reports, self-protection) go in one transaction per
round trip; while windows flow (one a window) they carry the heartbeat.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import select as selectmod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from migrator.store import reader_of
from migrator.store.watch import ChangeWatch
from migrator.store.api import heartbeat, record_windows, report_applied, report_self_protect
from migrator.store.push import channel, perf_for
from migrator.store.hostlease import release_host_lease, renew_host_lease, take_host_lease, this_holder
from migrator.errors import HostLeaseHeld
from migrator.store.models import Host, Migration, Transition, Window
from migrator.shared.records import ChannelWindow

log = logging.getLogger("migrator.agent")

# PostgreSQL: the desired mode is read when notified, and at least this often (seconds) in case a
# notification was lost (a NOTIFY is not sent when its transaction rolls back, and a LISTEN made
# after a commit does not hear it; both are covered by the read that follows every (re)connect).
SAFETY_READ_S = 5.0
# The heartbeat when nothing else is written (seconds); a write that carries windows puts the next
# one off by BEAT_AFTER_WINDOWS_S, so while windows flow every 1 s they carry it: one transaction a window.
BEAT_S = 1.0
BEAT_AFTER_WINDOWS_S = 1.5


@dataclass(frozen=True)
class Desired:
    """What the database asks of this host right now: the mode to run, whether it is settled, the phase."""

    mode: str
    settled: bool  # no transition pending: what the host runs is confirmed
    phase: str
    # confirmed_at of the migration's newest confirmed transition: a self-protected host holds
    # PERF until a transition newer than its protection (agent/selfprotect.py).
    confirmed_at: float | None = None
    # When the migration's current phase position was confirmed (its phase_since; a pause keeps it):
    # the host's own breaker counts only ring windows that started at or after it (agent/selfprotect.py).
    phase_since: float | None = None
    # The migration's first window index (None before any window): the host names its windows `#n`
    # as every other view does (control/story.py: window_name), e.g. in its self-protection reason.
    first_index: int | None = None


class DbLink(threading.Thread):
    """Follows the host's desired mode, sends windows and mode reports, tracks the last good round trip.

    poll: SQLite's look at data_version (seconds). safety_read: PostgreSQL's read of the desired mode
    without a notification (seconds; notifications make it arrive at once)."""

    def __init__(self, sf: sessionmaker[Session], migration_id: int, host: str, *, poll: float = 0.01,
                 lost_after: float = 3.0, safety_read: float = SAFETY_READ_S) -> None:
        super().__init__(name=f"dblink-{host}", daemon=True)
        self.sf, self.migration_id, self.host = sf, migration_id, host
        # The desired mode is read every poll: without the write lock every writer would queue for
        # (SQLite's busy handler then sleeps in steps up to 100 ms: that was most of a rollback's delay).
        self.reader = reader_of(sf)
        self.watch = ChangeWatch(self.reader)  # the desired mode is read again only after a commit
        confirmed = (select(func.max(Transition.confirmed_at))
                     .where(Transition.migration_id == migration_id).scalar_subquery())
        first = (select(func.min(Window.index)).where(Window.migration_id == migration_id)
                 .scalar_subquery())  # an index lookup (ix_windows_migration_id_index)
        self._desired_stmt = (select(Host.desired_mode, Migration.pending_transition_id, Migration.phase, confirmed,
                                     Migration.phase_since, first)
                              .join(Migration, Migration.id == Host.migration_id)
                              .where(Host.migration_id == migration_id, Host.name == host))
        self._conn = None  # the reading connection, made in the thread that reads
        self.poll, self.lost_after, self.safety_read = poll, lost_after, safety_read
        # PostgreSQL: _conn also LISTENs; the row is read when notified or every safety_read.
        self.push = self.reader.dialect == "postgresql"
        self._notified = False  # a notification seen after the last reading began: read again
        self._safety_due = 0.0
        self.reads = 0  # desired-mode reads made (the bench and the tests count them)
        # Wakes the link thread's own wait (push mode): something to send, or stop.
        self._kick: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.desired: Desired | None = None
        self.last_ok = time.monotonic()
        self.last_ok_wall = time.time()
        self.down_since: float | None = None  # wall time of the first failed round trip
        self.sent = 0
        self._outbox: list[ChannelWindow] = []
        self._reports: list[tuple[str, float]] = []
        self._protections: list[dict] = []  # self-protection reports (agent/selfprotect.py), kept across outages
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._beat_due = 0.0
        # Called with each list of closed windows before it is queued (the agent adds its sink's count).
        self.on_send: Callable[[list[ChannelWindow]], None] | None = None
        # Reads the host's mode map (the feed sets it): every heartbeat reports the mode actually
        # in force, so the first round trip of a (re)started agent tells the controller at once.
        self.mode_source: Callable[[], str] | None = None
        # Written when what the data path follows changes (a new desired mode, the link back up):
        # the feed waits on it with its channels, so a quiet agent sleeps instead of polling.
        self.wake_fd: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # One process per host (store/hostlease.py): the host's lease is taken here, before the
        # caller loads or attaches anything (HostLeaseHeld names the live holder), renewed with the
        # heartbeat and released by stop(). lease_lost: the holder that took it from us meanwhile.
        self.holder, self.lease_ttl = this_holder(), max(5.0, 2 * lost_after)
        self.lease_lost: str | None = None
        with sf() as s, s.begin():
            previous = take_host_lease(s, host, self.holder, time.time(), self.lease_ttl, migration_id)
        if previous is not None:
            log.warning("%s: took the host lease over from %s (lapsed, or a dead process)", host, previous)
        self._lease_due = time.monotonic() + self.lease_ttl / 4

    # -- the data path's side ------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """False once no round trip succeeded for `lost_after` seconds (or the host lease was lost)."""
        return self.lease_lost is None and time.monotonic() - self.last_ok < self.lost_after

    @property
    def gap_since(self) -> float | None:
        """Wall time of the last good round trip while the link is down (errors or a hung call)."""
        if self.up and self.down_since is None:
            return None
        return self.last_ok_wall

    def send(self, windows: list[ChannelWindow], protection: dict | None = None) -> None:
        """Queue closed windows for the link thread to write to the database on its next round trip.

        protection: the host's self-protection decided on these windows, queued with them under one
        lock so the database never holds the deciding window without the host's reason."""
        if self.on_send is not None:
            self.on_send(windows)
        with self._lock:
            self._outbox.extend(windows)
            if protection is not None:
                self._protections.append(protection)
            self._beat_due = 0.0
        self._nudge()

    def report(self, mode: str, at: float) -> None:
        """Queue a mode-applied report, so the controller learns this host has switched (and when)."""
        with self._lock:
            self._reports.append((mode, at))
        self._nudge()

    def _nudge(self) -> None:
        """Wake the link thread's wait (push mode sleeps until a notification or its next heartbeat)."""
        fd = self._kick
        if fd is not None and self.push:
            try:
                os.eventfd_write(fd, 1)
            except OSError:  # closed by stop(), or the counter is full: a wake is pending anyway
                pass

    def queued(self) -> list[ChannelWindow]:
        """A copy of the windows still waiting for the database."""
        with self._lock:
            return list(self._outbox)

    def pending_protections(self) -> int:
        """Self-protection reports not yet in the database."""
        with self._lock:
            return len(self._protections)

    def pending(self) -> int:
        """Windows still queued for the database (they pile up while it is unreachable)."""
        with self._lock:
            return len(self._outbox)

    def wake(self) -> None:
        """Wake the data path's idle wait (its duties changed); harmless when nobody waits."""
        fd = self.wake_fd
        if fd is not None:
            try:
                os.eventfd_write(fd, 1)
            except OSError:  # closed by stop(), or the counter is full: a wake is pending anyway
                pass

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop polling; try once more to deliver what is queued."""
        self._halt.set()
        self._nudge()
        if self.ident is not None:  # started (a link never started only gives its lease and fds back)
            self.join(flush_timeout)
        if not self.is_alive() and self.wake_fd is not None:  # a thread still hung keeps it to write
            fd, self.wake_fd = self.wake_fd, None
            os.close(fd)
        if not self.is_alive() and self._kick is not None:
            fd, self._kick = self._kick, None
            os.close(fd)
        if not self.is_alive():
            self.release()
            self.watch.close()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.reader.dispose()

    def release(self) -> None:
        """Give the host lease up (only ours; a database out of reach lets it lapse instead)."""
        if self.lease_lost is not None:
            return
        try:
            with self.sf() as s, s.begin():
                release_host_lease(s, self.host, self.holder)
        except SQLAlchemyError as exc:
            log.warning("%s: could not release the host lease (it lapses in %g s): %s", self.host,
                        self.lease_ttl, str(exc).splitlines()[0])

    def _renew(self, s: Session, now: float) -> bool:
        """Renew the host lease in the round trip's transaction; False (and the link stops) once
        another live process holds it: this one then writes nothing more for the host."""
        try:
            previous = renew_host_lease(s, self.host, self.holder, now, self.lease_ttl, self.migration_id)
        except HostLeaseHeld as exc:
            self.lease_lost = exc.holder
            log.error("%s: host lease taken over by %s; this process stops serving the host", self.host, exc.holder)
            self._halt.set()
            self.wake()
            return False
        if previous is not None:
            log.warning("%s: host lease taken back from %s", self.host, previous)
        self._lease_due = time.monotonic() + self.lease_ttl / 4
        return True

    # -- the thread ----------------------------------------------------------------------------
    def read_desired(self) -> Desired:
        """Read the mode the controller wants for this host and whether a transition is still pending.

        One prepared statement on one held read-only connection (~40 us, against ~300 us through a new
        ORM session): on SQLite it runs up to 100 times a second. A failed read drops the connection.
        On PostgreSQL the connection is in autocommit and LISTENs (before its first read, so no change
        committed after that read goes unheard)."""
        try:
            if self._conn is None:
                conn = self.reader.engine.connect()
                self._conn = conn
                if self.push:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                    self._conn = conn
                    conn.exec_driver_sql(f"LISTEN {channel(self.migration_id)}")
            self._notified = False  # what was announced before this reading, it sees
            row = self._conn.execute(self._desired_stmt).one()
            self._conn.rollback()  # end the read: a held snapshot would pin SQLite's WAL
        except BaseException:
            self._drop_conn()
            raise
        self.reads += 1
        self._safety_due = time.monotonic() + self.safety_read
        return Desired(row[0], row[1] is None, row[2], row[3], row[4], row[5])

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.invalidate()

    def _drain(self) -> bool:
        """Push mode: whether a notification came (taken off the connection, never blocking).

        A broken connection counts as one: it is dropped, and the next reading reconnects, LISTENs and reads."""
        if self._conn is None:
            return True
        try:
            got = list(self._conn.connection.driver_connection.notifies(timeout=0))
        except Exception:  # noqa: BLE001 -- psycopg's own errors: the server or the socket is gone
            self._drop_conn()
            return True
        self.heard([n.payload for n in got])
        return self._notified

    def heard(self, payloads: list[str]) -> None:
        """Notifications came (in commit order): read the row again; if the last one moves this host
        to PERF, put PERF in force at once, before that read and before any write (a rollback then
        waits on neither). PERF is the safe mode, so acting early can only lower what is at risk."""
        if not payloads:
            return
        self._notified = True
        d = self.desired
        if perf_for(payloads[-1], self.host) and d is not None and d.mode != "PERF":
            self.desired = dataclasses.replace(d, mode="PERF", settled=False)  # until the row is read
            self.wake()

    def _idle(self) -> None:
        """Push mode: sleep until a notification, something to send, stop, the next heartbeat or safety read."""
        if self._drain() or self._halt.is_set():
            return
        fds = [self._kick] if self._kick is not None else []
        if self._conn is not None:
            try:
                fds.append(self._conn.connection.driver_connection.fileno())
            except Exception:  # noqa: BLE001 -- a closed connection: the next round trip reconnects
                self._drop_conn()
                return
        now = time.monotonic()
        timeout = max(0.0, min(self._beat_due, self._safety_due) - now)
        with self._lock:
            if self._outbox or self._reports or self._protections:
                timeout = min(timeout, self.poll)  # a write that failed: try again soon
        try:
            # At least a round trip every lost_after / 3: `up` is measured from the last one.
            ready, _, _ = selectmod.select(fds, [], [], min(timeout, BEAT_S, self.lost_after / 3))
        except (OSError, ValueError):  # a descriptor closed under us (stop)
            return
        if self._kick is not None and self._kick in ready:
            try:
                os.eventfd_read(self._kick)
            except OSError:
                pass

    def _actual_mode(self) -> str | None:
        """The mode map's value now, or None when it cannot be read (no feed yet, program closing)."""
        if self.mode_source is None:
            return None
        try:
            return self.mode_source()
        except Exception:  # a map being replaced or closed: the next heartbeat reads it again
            return None

    def _round_trip(self) -> None:
        if self.push:
            self._drain()  # a move to PERF announced meanwhile is put in force before the writes below
        beat = time.monotonic() >= self._beat_due
        # Read before taking the queued reports: a switch made in between queues a report that is
        # written after this reading, so the newest mode always wins.
        actual = self._actual_mode() if beat else None
        with self._lock:
            windows, reports = list(self._outbox), list(self._reports)
            protections = list(self._protections)
        now = time.time()
        if self.lease_lost is not None:
            return  # another process serves this host now: nothing more is written for it
        renew = time.monotonic() >= self._lease_due
        wrote = bool(windows or reports or protections or beat or renew)
        if wrote:
            with self.sf() as s, s.begin():
                if renew and not self._renew(s, now):
                    return
                if windows:
                    record_windows(s, self.migration_id, windows, now=now)  # idempotent on the index
                heartbeat(s, self.migration_id, self.host, now=now, mode=actual)
                for mode, at in reports:
                    report_applied(s, self.migration_id, self.host, mode, now=at)
                if reports:
                    heartbeat(s, self.migration_id, self.host, now=now)
                for p in protections:  # after the windows: it names the deciding ring window
                    report_self_protect(s, self.migration_id, self.host, p, now=now)
            with self._lock:
                del self._outbox[: len(windows)]
                del self._reports[: len(reports)]
                del self._protections[: len(protections)]
            self.sent += len(windows)
            self._beat_due = time.monotonic() + (BEAT_AFTER_WINDOWS_S if windows else BEAT_S)
        if self.push:
            # Only when told (or first, or after a reconnect), and every safety_read: never on a write.
            if (self.desired is not None and not self._drain()
                    and time.monotonic() < self._safety_due):
                return
            desired = self.read_desired()
            changed = desired != self.desired
            self.desired = desired
            if changed:
                self.wake()
            return
        committed = self.watch.changed()  # looked at every time, so it always compares with the last look
        if self.desired is not None and not wrote and not committed:
            return  # nobody committed since the last reading: the desired mode is what we have
        desired = self.read_desired()
        changed = desired != self.desired
        self.desired = desired
        if changed:
            self.wake()

    def run(self) -> None:
        """The link thread: a round trip every `poll` s (push mode: when notified, something is queued,
        or a heartbeat or safety read is due), queued data kept across outages, one last flush on stop."""
        while True:
            stopping = self._halt.is_set()
            try:
                self._round_trip()
                back = self.down_since is not None or not self.up
                if back:
                    log.warning("%s: database back after %.1f s without a round trip; kept windows sent",
                                self.host, time.time() - self.last_ok_wall)
                self.down_since = None
                self.last_ok, self.last_ok_wall = time.monotonic(), time.time()
                if back:
                    self.wake()  # the feed held PERF without the database: it follows `desired` again
            except SQLAlchemyError as exc:
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning("%s: database unreachable: %s", self.host, str(exc).splitlines()[0])
                if not stopping:
                    self._halt.wait(0.2)
            if stopping:
                return
            if self.push and self.down_since is None:
                self._idle()
            else:
                self._halt.wait(self.poll)
