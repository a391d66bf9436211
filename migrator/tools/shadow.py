"""Shadow run: load a probe in DUAL mode, consume both channels, close windows, summarise."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from migrator.dataplane.demo_probes import Probe
from migrator.dataplane.loadgen import LoadGen
from migrator.dataplane.pipeline import Pipeline
from migrator.shared.records import ChannelWindow


# rate 0 ("as fast as possible") has no count: the generator gets a bound it cannot reach in a
# shadow run and is stopped when the run's seconds are up.
UNBOUNDED_EVENTS = 10**12


def shadow_event_count(rate: float, seconds: float) -> int:
    """How many events the generator makes: rate * seconds, or unbounded (stopped by the run) at rate 0."""
    if rate <= 0:
        return UNBOUNDED_EVENTS
    return max(1, round(rate * seconds))


@dataclass
class ShadowSummary:
    """Totals per channel over the whole run."""

    seconds: float
    windows: int
    channels: dict[str, dict] = field(default_factory=dict)


def summarise(windows: list[ChannelWindow], seconds: float) -> ShadowSummary:
    """Totals per channel over a shadow run, for its closing comparison."""
    s = ShadowSummary(seconds=seconds, windows=len({w.index for w in windows}))
    for ch in ("perf", "ring"):
        ws = [w for w in windows if w.channel == ch]
        attempts = sum(w.attempts for w in ws)
        lost = sum(w.dropped + w.lost for w in ws)
        p99 = [w.lag_p99_ms for w in ws if w.lag_p99_ms is not None]
        s.channels[ch] = {
            "attempts": attempts,
            "delivered": sum(w.delivered for w in ws),
            "dropped_full": sum(w.dropped_full for w in ws),
            "dropped_other": sum(w.dropped_other for w in ws),
            "lost": sum(w.lost for w in ws),
            "loss_rate": lost / attempts if attempts else 0.0,
            "lag_p99_ms_max": max(p99) if p99 else None,
            "inversions": sum(w.inversions for w in ws),
            "consumer_cpu_s": sum(w.consumer_cpu_s for w in ws),
            "parse_errors": sum(w.parse_errors for w in ws),
            # Every window balances on its own (one epoch each): these say whether all of them did.
            "residual": sum(w.residual for w in ws),
            "unbalanced_windows": sum(1 for w in ws if w.residual or not w.settled),
        }
    return s


def run_shadow(seconds: float, window: float, probe: str = "synthetic", rate: float = 100_000,
               ring_bytes: int = 16 << 20, perf_pages: int = 64, ring_submit: str = "reserve",
               wakeup: str = "adaptive", print_c: bool = False, on_window=None, host: str = "local"):
    """Run the probe in DUAL mode for `seconds`; returns (windows, summary). Drains fully at the end.

    The options are checked where they are given: `migrator shadow` (migrator.cli.shadow)."""
    gen = None
    with Probe(probe, ring_bytes=ring_bytes, ring_submit=ring_submit, wakeup=wakeup, print_c=print_c) as p:
        pipe = Pipeline(p, host=host, perf_pages=perf_pages)
        try:
            p.set_mode("DUAL")
            if probe == "synthetic":
                gen = LoadGen(shadow_event_count(rate, seconds), rate)
                p.set_target(gen.pid)
                gen.start()
            t0 = time.monotonic()

            def stop_source() -> None:
                # `seconds` means seconds: the events stop at the deadline (a generator slower than
                # `rate` does not get extra time), so the last window is as long as the others and
                # its books close over everything that was emitted.
                if gen is not None:
                    p.set_target(0)
                    gen.kill()

            windows = pipe.run(seconds, window, on_window=on_window, before_last=stop_source)
            return windows, summarise(windows, time.monotonic() - t0)
        finally:
            if gen is not None:
                gen.kill()
            pipe.close()
