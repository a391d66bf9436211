"""`migrator.attach`: put a Feed on the operator's loaded bcc program, standalone or in a migration."""
from __future__ import annotations

from pathlib import Path

from migrator.agent.feed import Feed
from migrator.agent.link import DbLink
from migrator.agent.selfprotect import SelfProtect
from migrator.agent.loop import serve_migration
from migrator.config import load_config
from migrator.dataplane.schema import Registry
from migrator.errors import MigratorError
from migrator.store import open_store


def attach(bpf, name: str = "events", *, config: str | Path | None = None, host: str | None = None,
           mode: str | None = None, registry: Registry | None = None, migration_id: int | None = None,
           window_seconds: float | None = None, perf_pages: int | None = None, report: bool = False,
           metrics_addr: str | None = None) -> Feed:
    """Replace bcc's reader of channel `name` in this process; returns the Feed to read from.

        feed = migrator.attach(bpf, "events")                    # standalone, DUAL
        feed.open_perf_buffer(callback, page_cnt=64, lost_cb=on_lost)   # bcc's call, on the feed
        while True:
            feed.poll(100)                                       # bcc's perf_buffer_poll(100)

    Without a config it runs on its own in `mode` (default DUAL: perf acted on, ring measured, and
    a record perf lost delivered from its ring copy; its windows stay in `feed.windows`, and with
    report=True the perf-vs-ring comparison is printed to stderr when the feed is closed). With a
    config and a host it serves that host in the migration: the database decides the mode, and
    windows and mode reports go there. It also applies the rollback rule to its own ring windows
    (agent/selfprotect.py). With metrics_addr ("HOST:PORT") the feed serves its windows' counters
    to Prometheus (agent/metrics.py).

    Perf stays the buffer your bcc code asked for: `feed.open_perf_buffer(cb, page_cnt, lost_cb,
    wakeup_events)` re-sizes it to `page_cnt` pages per CPU and bcc's wakeup every record, and
    lost_cb hears what was lost to you. perf_pages (default: [buffers] perf_pages, else 64) is the
    size until then, and the size kept when open_perf_buffer gets no page_cnt. window_seconds:
    the length of a window (default: the config's, else 1 s); migration_id: serve that migration
    instead of the active one; registry: the payload layouts (default: the struct bcc inferred).
    """
    if config is None:
        feed = Feed(bpf, name, host=host or "local", mode=mode or "DUAL", registry=registry,
                    window_seconds=window_seconds or 1.0, perf_pages=perf_pages or 64, metrics_addr=metrics_addr)
        feed.report_at_close = report
        return feed
    if not host:
        raise MigratorError(f"attach({name!r}, config={str(config)!r}): a host name is needed to serve a migration "
                            "(fix: pass host=, the name this machine has in canary.toml)")
    cfg = load_config(config)
    sf = open_store(cfg.database_url)
    mid = serve_migration(sf, host, migration_id)
    link = DbLink(sf, mid, host, poll=0.01, lost_after=3 * cfg.window_seconds)
    feed = Feed(bpf, name, host=host, mode="PERF", registry=registry,
                window_seconds=window_seconds or cfg.window_seconds, perf_pages=perf_pages or cfg.buffers.perf_pages,
                batch_interval=cfg.buffers.max_delay_ms / 1000, link=link, guard=SelfProtect.from_config(host, cfg, position=lambda: link.desired), metrics_addr=metrics_addr)
    feed.owns_link = True
    link.start()
    return feed
