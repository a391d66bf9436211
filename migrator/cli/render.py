"""Fixed-width window lines for the data-plane commands (JSON goes through cli._out)."""
from __future__ import annotations

from migrator.records import ChannelWindow


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


WINDOW_HEADER = (
    f"{'host':<8} {'win':>4} {'chan':<4} {'mode':<4} {'attempts':>9} {'deliver':>9} {'dropped':>7} {'lost':>7} "
    f"{'loss%':>6} {'p50ms':>6} {'p99ms':>6} {'inv':>5} {'cpu_s':>6} {'resid':>5}"
)


def window_line(w: ChannelWindow) -> str:
    """One closed window as a fixed-width line under WINDOW_HEADER (`~` marks an unsettled residual)."""
    resid = str(w.residual) + ("" if w.settled else "~")
    return (
        f"{w.host:<8} {w.index:>4} {w.channel:<4} {w.mode:<4} {w.attempts:>9} {w.delivered:>9} {w.dropped:>7} "
        f"{w.lost:>7} {100 * w.loss_rate:>6.2f} {_ms(w.lag_p50_ms):>6} {_ms(w.lag_p99_ms):>6} {w.inversions:>5} "
        f"{w.consumer_cpu_s:>6.3f} {resid:>5}"
    )
