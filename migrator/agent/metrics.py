"""One host's Prometheus metrics, from the windows its Feed closes (`migrator agent --metrics-addr`,
`migrator.attach(..., metrics_addr=...)`, `Feed(..., metrics_addr=...)`).

Per channel: attempts, delivered, dropped by cause, lost, parse errors, payload mismatches and
windows closed, as counters that are the sums of the closed windows (the same numbers the
database gets), the lag histogram, and the host's mode now, each labelled with the migration
the host serves (`migration`, its id; no such label on a feed without a database). Names and the
endpoint are shared with the controller's collector (control/metrics.py).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from migrator.control.metrics import Endpoint, WindowTotals, mode_family
from migrator.shared.records import ChannelWindow


class AgentMetrics:
    """Sums of one host's closed windows, served at addr; it outlives the feeds of a reload."""

    def __init__(self, addr: str, host: str, migration: int | None = None) -> None:
        self.host = host
        self.migration = None if migration is None else str(migration)  # the `migration` label
        self.totals = WindowTotals()
        # The mode in force (the feed points it at itself); read at each scrape.
        self.mode_source: Callable[[], str] | None = None
        self._lock = threading.Lock()  # windows arrive on the feed's thread, scrapes on the server's
        self.endpoint = Endpoint(addr, self)

    @property
    def url(self) -> str:
        """Where to scrape."""
        return self.endpoint.url

    def observe(self, windows: list[ChannelWindow]) -> None:
        """Add closed windows to the counters (all channels of one close together, so a scrape
        never sees one channel's window without the other's)."""
        with self._lock:
            for w in windows:
                self.totals.add_window(w)

    def collect(self) -> Iterator:
        """prometheus_client's collector hook."""
        try:
            mode = self.mode_source() if self.mode_source is not None else None
        except Exception:  # a feed closing during a reload: the next scrape reads it again
            mode = None
        with self._lock:
            fams = list(self.totals.families(self.migration))
        yield mode_family({self.host: mode}, self.migration)
        yield from fams

    def close(self) -> None:
        """Stop serving."""
        self.endpoint.close()
