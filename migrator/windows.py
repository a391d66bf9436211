"""Window records: one per host, channel and window, balancing kernel counters against consumers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

CHANNELS = ("perf", "ring")
MODES = ("PERF", "DUAL", "RING")


@dataclass
class ChannelWindow:
    """Everything measured for one channel of one host over one closed window.

    Counts are deltas over the window. `lost` is perf's kernel-side overflow (the BPF program saw
    -ENOSPC from bpf_perf_event_output, which is also what PERF_RECORD_LOST reports); `dropped_*`
    are other refusals, by cause. `in_flight` is what sat in the buffer at close. `residual` is
    attempts - delivered - dropped - lost - in_flight change, taken from a consistent snapshot
    (`settled` True) or from a best effort under continuous load (`settled` False).
    """

    host: str
    channel: str  # "perf" | "ring"
    index: int  # window number on this host, from 0
    start: float  # unix seconds
    end: float  # unix seconds
    mode: str = "DUAL"  # the host's mode map value when the window closed
    attempts: int = 0
    delivered: int = 0  # records decoded by our consumer
    dropped_full: int = 0
    dropped_other: int = 0
    lost: int = 0
    parse_errors: int = 0
    in_flight: int = 0
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_max_ms: float | None = None
    inversions: int = 0
    consumer_cpu_s: float = 0.0
    bpf_run_ns: int = 0
    bpf_run_cnt: int = 0
    residual: int = 0
    settled: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_other

    @property
    def loss_rate(self) -> float:
        """Share of attempts the channel did not deliver (refused or lost); 0.0 with no attempts."""
        if self.attempts <= 0:
            return 0.0
        return (self.dropped + self.lost) / self.attempts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dropped"] = self.dropped
        d["loss_rate"] = self.loss_rate
        return d
