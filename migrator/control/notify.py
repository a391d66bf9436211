"""Webhook notifications: one JSON document per phase transition, to every [notify] webhook.

Transitions are rows (append-only), and any process may write one (the controller, `migrator
rollback` from a shell), so the notifier is an outbox reader: one thread per webhook reads the
confirmed transitions it has not handled yet (no `notifications` row for that webhook), claims
one with a "sending" row, posts it, and records "delivered" or "failed". It runs beside the
controller (`migrator start`, `migrator lab run`) and never inside its step: a slow or dead
webhook delays only its own thread.

Each post is retried with exponential back-off up to max_attempts (5xx, 408, 429 and network
errors; other 4xx fail at once: retrying cannot fix a wrong URL). A process that dies between
the post and its record leaves "sending": the next notifier sends it again (at least once
then, never lost); the document's `id` lets a receiver drop the repeat.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from migrator.control.phases import label, slice_count
from migrator.store.models import Migration, Notification, Transition

log = logging.getLogger("migrator.notify")
BACKOFF_START = 0.5  # seconds before the 2nd attempt; doubles for each next one


def target_of(url: str) -> str:
    """The stored name of a webhook: sha256 of its URL (the URL itself may carry a token)."""
    return hashlib.sha256(url.encode()).hexdigest()


def shown(url: str) -> str:
    """A webhook URL for logs: scheme, host and port only."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rpartition('@')[2]}/..."


def _slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup in `text`: escaped, a reason is shown as written.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def document(t: Transition, migration_name: str, slices: int) -> dict:
    """The JSON posted for one transition; `text` is one line Slack shows as it is."""
    frm, to = label(t.from_phase, t.from_slice, slices), label(t.to_phase, t.to_slice, slices)
    at = t.confirmed_at if t.confirmed_at is not None else t.created_at
    reason = " ".join((t.reason or "").split())
    ids = json.loads(t.window_ids or "[]")
    text = f"migrator: migration {t.migration_id} {frm} → {to} ({t.actor})" + (f": {reason}" if reason else "")
    return {
        "id": f"migrator:{t.migration_id}:{t.id}",  # the same on a re-send: receivers can drop repeats
        "migration_id": t.migration_id, "migration": migration_name, "transition_id": t.id,
        "phase": to, "from": t.from_phase, "from_slice": t.from_slice, "to": t.to_phase, "to_slice": t.to_slice,
        "actor": t.actor, "reason": t.reason, "window_ids": ids, "at": at,
        "at_iso": datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds"),
        "text": _slack_escape(text),
    }


def post(url: str, doc: dict, timeout: float) -> None:
    """POST doc as JSON; raises urllib.error.HTTPError / URLError / OSError on failure."""
    body = json.dumps(doc).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "migrator-notify"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return True  # connection refused, timeout, DNS: the server may come back


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class _Worker(threading.Thread):
    """One webhook's outbox reader."""

    def __init__(self, owner: "Notifier", url: str) -> None:
        super().__init__(name=f"notify-{shown(url)}", daemon=True)
        self.owner, self.url, self.target = owner, url, target_of(url)
        self.first = True  # the first round also resends what a dead process left "sending"

    def run(self) -> None:
        o = self.owner
        while True:
            draining = o._drain.is_set()
            try:
                self._round()
            except SQLAlchemyError as exc:  # the database is away: the rows wait for it
                log.warning("notify: database unreadable: %s", str(exc).splitlines()[0])
            if draining or o._abort.is_set():
                return
            o._drain.wait(o.poll)

    def _round(self) -> None:
        """Post every confirmed transition this webhook has no row for, oldest first; resend claims
        left "sending" by a process that died."""
        o = self.owner
        with o.sf() as s:
            m = s.get(Migration, o.migration_id)
            slices = slice_count(s, o.migration_id)
            done = set(s.scalars(select(Notification.transition_id).where(
                Notification.migration_id == o.migration_id, Notification.target == self.target,
                Notification.status != "sending")))
            stale = set(s.scalars(select(Notification.transition_id).where(
                Notification.migration_id == o.migration_id, Notification.target == self.target,
                Notification.status == "sending"))) if self.first else set()
            rows = s.scalars(select(Transition).where(Transition.migration_id == o.migration_id,
                                                      Transition.status == "confirmed")
                             .order_by(Transition.id)).all()
            # A "sending" row of this process is one whose outcome could not be recorded: the
            # next start sends it again.
            todo = [(t, document(t, m.name, slices)) for t in rows if t.id not in done]
        self.first = False
        for t, doc in todo:
            if o._abort.is_set():
                return
            if t.id not in stale and not self._claim(t.id):
                continue  # claimed already: by another notifier, or by this one before a failed record
            self._deliver(t.id, doc)

    def _claim(self, transition_id: int) -> bool:
        o = self.owner
        try:
            with o.sf() as s, s.begin():
                s.add(Notification(migration_id=o.migration_id, transition_id=transition_id, target=self.target,
                                   status="sending", attempts=0, last_error="", created_at=time.time()))
        except IntegrityError:
            return False
        return True

    def _deliver(self, transition_id: int, doc: dict) -> None:
        o = self.owner
        error, attempt = "", 0
        delay = o.backoff
        while attempt < o.max_attempts:
            attempt += 1
            try:
                post(self.url, doc, o.timeout)
                error = ""
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                error = _why(exc)
                if not _retryable(exc) or attempt >= o.max_attempts or o._abort.wait(delay):
                    break
                delay *= 2
        status = "failed" if error else "delivered"
        with o.sf() as s, s.begin():
            n = s.scalars(select(Notification).where(Notification.transition_id == transition_id,
                                                     Notification.target == self.target)).one()
            n.status, n.attempts, n.last_error, n.done_at = status, attempt, error, time.time()
        if error:
            log.warning("notify: %s: transition %d not delivered after %d attempt(s): %s",
                        shown(self.url), transition_id, attempt, error)
        if o.on_result is not None:
            o.on_result(self.url, transition_id, status, attempt)


class Notifier:
    """Posts a migration's transitions to webhooks from background threads; see the module docstring."""

    def __init__(self, session_factory: sessionmaker[Session], migration_id: int, webhooks: tuple[str, ...] | list[str],
                 *, max_attempts: int = 5, timeout: float = 5.0, backoff: float = BACKOFF_START, poll: float = 0.25,
                 on_result: Callable[[str, int, str, int], None] | None = None) -> None:
        self.sf, self.migration_id = session_factory, migration_id
        self.max_attempts, self.timeout, self.backoff, self.poll = max_attempts, timeout, backoff, poll
        self.on_result = on_result  # (url, transition id, status, attempts) after each delivery or failure
        self._drain, self._abort = threading.Event(), threading.Event()
        self.workers = [_Worker(self, u) for u in webhooks]

    def start(self) -> "Notifier":
        """Start one thread per webhook; returns self."""
        for w in self.workers:
            w.start()
        return self

    def close(self, timeout: float = 15.0) -> None:
        """Post what is still due (the final transition included), waiting at most `timeout` s;
        what is left then stays in the outbox for the next notifier."""
        self._drain.set()
        end = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(0.0, end - time.monotonic()))
        if any(w.is_alive() for w in self.workers):
            self._abort.set()
            log.warning("notify: gave up waiting after %g s; undelivered transitions are sent by the next "
                        "`migrator start`", timeout)


def notifier_for(session_factory: sessionmaker[Session], migration_id: int, notify) -> Notifier | None:
    """A started Notifier for a config's [notify] section, or None without webhooks."""
    if not notify.webhooks:
        return None
    return Notifier(session_factory, migration_id, notify.webhooks, max_attempts=notify.max_attempts,
                    timeout=notify.timeout_seconds).start()


def deliveries(session: Session, migration_id: int) -> dict[str, int]:
    """How many notifications of a migration are in each status (for tests and views)."""
    return dict(session.execute(select(Notification.status, func.count()).where(
        Notification.migration_id == migration_id).group_by(Notification.status)).all())
