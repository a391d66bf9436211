"""Webhook notifications against a real HTTP server on 127.0.0.1: one post per transition, whoever
made it, retried with back-off, and never in the controller's way."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from migrator.cli import app
from migrator.config import load_config
from migrator.control.controller import run_controller
from migrator.control.notify import Notifier, deliveries, target_of
from migrator.control.phases import DbApplier, transition
from migrator.shared.vocab import Phase
from migrator.store import api, open_store
from migrator.store.models import Notification, Transition


class Hook:
    """A webhook receiver: records each POST body; answers the queued status codes, then 200."""

    def __init__(self, statuses=(), hang: float = 0.0) -> None:
        self.posts: list[dict] = []
        self.statuses = list(statuses)
        self.hang = hang
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.hang:
                    time.sleep(hook.hang)
                with hook.lock:
                    hook.posts.append({"body": json.loads(body), "type": self.headers["Content-Type"],
                                       "at": time.monotonic()})
                    code = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


PLAN = """
hosts = ["h1", "h2"]
slices = [1, 2]
[notify]
webhooks = ["{url}"]
"""


def test_every_transition_is_posted_once_whoever_made_it(tmp_path, hook):
    toml = tmp_path / "canary.toml"
    toml.write_text(PLAN.format(url=hook.url))
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(toml)]).exit_code == 0
    # `start --no-run` has its own notifier: it posts PLANNED -> DUAL_INSTRUMENT before it exits.
    r = runner.invoke(app, ["start", "-c", str(toml), "--no-run"])
    assert r.exit_code == 0, r.output
    assert len(hook.posts) == 1
    cfg = load_config(toml)
    sf = open_store(cfg.database_url)
    with sf() as s:
        mid = api.active_migration(s).id
    # The controller's notifier, while other processes move the migration by hand.
    n = Notifier(sf, mid, cfg.notify.webhooks, poll=0.05).start()
    env = {**os.environ, "MIGRATOR_CONFIG": str(toml)}
    for op in (["pause", "--reason", "change freeze"], ["resume"], ["rollback", "--reason", "p99 <high> & rising"]):
        p = subprocess.run([sys.executable, "-m", "migrator", *op], env=env, capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    n.close()
    Notifier(sf, mid, cfg.notify.webhooks, poll=0.05).start().close()  # a later notifier: nothing left to send
    with sf() as s:
        ts = s.scalars(select(Transition).where(Transition.migration_id == mid).order_by(Transition.id)).all()
        rows = s.scalars(select(Notification).order_by(Notification.transition_id)).all()
        assert deliveries(s, mid) == {"delivered": 4}
    bodies = [p["body"] for p in hook.posts]
    assert [p["type"] for p in hook.posts] == ["application/json"] * 4
    assert [(b["transition_id"], b["from"], b["to"], b["phase"], b["actor"]) for b in bodies] == [
        (ts[0].id, "PLANNED", "DUAL_INSTRUMENT", "DUAL_INSTRUMENT", "manual"),
        (ts[1].id, "DUAL_INSTRUMENT", "PAUSED", "PAUSED", "manual"),
        (ts[2].id, "PAUSED", "DUAL_INSTRUMENT", "DUAL_INSTRUMENT", "manual"),
        (ts[3].id, "DUAL_INSTRUMENT", "ROLLED_BACK", "ROLLED_BACK", "manual")]
    last = bodies[-1]
    assert last == {
        "id": f"migrator:{mid}:{ts[3].id}", "migration_id": mid, "migration": f"migration from {toml}",
        "transition_id": ts[3].id, "phase": "ROLLED_BACK", "from": "DUAL_INSTRUMENT", "from_slice": 0,
        "to": "ROLLED_BACK", "to_slice": 0, "actor": "manual", "reason": ts[3].reason, "window_ids": [],
        "at": ts[3].confirmed_at, "at_iso": last["at_iso"],
        "text": f"migrator: migration {mid} DUAL_INSTRUMENT → ROLLED_BACK (manual): "
                + ts[3].reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}
    assert "p99 &lt;high&gt; &amp; rising" in last["text"] and "\n" not in last["text"]
    assert [(r.transition_id, r.target, r.status, r.attempts, r.last_error) for r in rows] == [
        (t.id, target_of(hook.url), "delivered", 1, "") for t in ts]


@pytest.fixture
def planned(config, session_factory):
    with session_factory() as s, s.begin():
        mid = api.create_migration(s, config, schema_fingerprint="fp").id
    return session_factory, mid


def test_retried_after_two_500s(planned):
    sf, mid = planned
    hook = Hook(statuses=[500, 500])
    try:
        n = Notifier(sf, mid, [hook.url], backoff=0.2, poll=0.05).start()
        transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), actor="manual", reason="go")
        n.close()
    finally:
        hook.close()
    assert len(hook.posts) == 3
    assert hook.posts[0]["body"] == hook.posts[1]["body"] == hook.posts[2]["body"]
    gaps = [b["at"] - a["at"] for a, b in zip(hook.posts, hook.posts[1:])]
    assert 0.2 <= gaps[0] < 0.35 and 0.4 <= gaps[1] < 0.55  # exponential: 0.2 s, then 0.4 s
    with sf() as s:
        r = s.scalars(select(Notification)).one()
        assert (r.status, r.attempts, r.last_error) == ("delivered", 3, "")


def test_bounded_attempts_and_no_retry_on_a_client_error(planned):
    sf, mid = planned
    down, gone = Hook(statuses=[503] * 10), Hook(statuses=[404] * 10)
    try:
        n = Notifier(sf, mid, [down.url, gone.url], max_attempts=3, backoff=0.02, poll=0.05).start()
        transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), actor="manual", reason="go")
        n.close()
    finally:
        down.close()
        gone.close()
    assert (len(down.posts), len(gone.posts)) == (3, 1)
    with sf() as s:
        got = {r.target: (r.status, r.attempts, r.last_error) for r in s.scalars(select(Notification))}
    assert got == {target_of(down.url): ("failed", 3, "HTTP 503"), target_of(gone.url): ("failed", 1, "HTTP 404")}


def test_a_dead_webhook_does_not_slow_the_controller(planned):
    """One webhook hangs (accepts, answers after 3 s), one refuses connections: the controller's
    rounds go on at their pace while both are retried."""
    sf, mid = planned
    hanging = Hook(hang=3.0)
    refused = Hook()
    refused.close()  # nothing listens there any more
    transition(sf, mid, Phase.DUAL_INSTRUMENT, applier=DbApplier(), actor="manual", reason="go")

    def rounds(notifier_urls) -> list[float]:
        n = Notifier(sf, mid, notifier_urls, timeout=2.0, backoff=0.1, poll=0.05).start() if notifier_urls else None
        times: list[float] = []
        run_controller(sf, mid, applier=DbApplier(), deadline=time.time() + 2.0, poll_interval=0.01,
                       on_step=lambda res: times.append(time.monotonic()))
        if n is not None:
            n._abort.set()  # do not wait for the dead ones here
        return [b - a for a, b in zip(times, times[1:])]

    base = rounds([])
    dead = rounds([hanging.url, refused.url])
    hanging.close()
    base.sort()
    dead.sort()
    print(f"controller round interval: median {1000 * base[len(base) // 2]:.1f} ms without webhooks, "
          f"{1000 * dead[len(dead) // 2]:.1f} ms with a hanging and a refusing one; max {1000 * dead[-1]:.1f} ms")
    assert len(dead) >= 0.7 * len(base)
    assert dead[-1] < 0.25  # never a request's 2 s timeout nor a back-off
    with sf() as s:
        assert s.scalar(select(Notification.status).where(Notification.target == target_of(refused.url))) in (
            "sending", "failed")
