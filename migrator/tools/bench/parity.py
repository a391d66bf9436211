"""`migrator bench parity`: a bursty bcc tool run plainly and under `migrator wrap` in each mode.

The promise measured: a migrated pipeline loses nothing its plain bcc form would not. The tool
(bursty_tool.py, the repository's own, unmodified by migrator) bursts COUNT getpid() calls into a
`page_cnt` perf buffer; each round runs it plainly and then wrapped in every mode, alternating, so
a noisy neighbour hits every variant alike. Per variant: what the tool's callback got per round,
its median against plain's, the loss the tool's lost_cb heard, what wrap's books say (perf lost,
records filled from the ring, ring dropped), and the whole process's CPU (rusage of the child).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOOL = Path(__file__).with_name("bursty_tool.py")
VARIANTS = ("plain", "PERF", "DUAL", "RING")


@dataclass
class Run:
    """One run of the tool: what it got, and (wrapped) what wrap's books say."""

    variant: str
    delivered: int
    lost_cb: int  # what the tool's lost_cb was told
    seq_errors: int  # events delivered twice
    cpu_s: float  # user + system of the whole process (the tool, and wrap in it)
    wall_s: float
    perf_lost: int | None = None  # wrap's books (None for plain)
    filled_from_ring: int | None = None
    ring_dropped: int | None = None


@dataclass
class ParityResult:
    """Every run, and per variant the median delivered against plain's."""

    count: int
    pages: int
    rounds: int
    runs: list[Run] = field(default_factory=list)

    def of(self, variant: str) -> list[Run]:
        """The runs of one variant, in round order."""
        return [r for r in self.runs if r.variant == variant]

    def median(self, variant: str) -> float:
        """Median delivered over the variant's rounds."""
        return statistics.median(r.delivered for r in self.of(variant))

    def ratio(self, variant: str) -> float:
        """Median delivered against plain's median (1.0: as good as the unmodified tool)."""
        plain = self.median("plain")
        return self.median(variant) / plain if plain else 0.0

    def to_dict(self) -> dict:
        """JSON-ready: parameters, runs, and per variant median, ratio and median CPU."""
        return {"count": self.count, "pages": self.pages, "rounds": self.rounds,
                "runs": [asdict(r) for r in self.runs],
                "variants": {v: {"median_delivered": self.median(v), "vs_plain": round(self.ratio(v), 4),
                                 "median_cpu_s": round(statistics.median(r.cpu_s for r in self.of(v)), 3)}
                             for v in VARIANTS if self.of(v)}}


def _run(variant: str, count: int, pages: int, python: str) -> Run:
    tool = [python, str(TOOL), "--count", str(count), "--pages", str(pages), "--json"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "wrap.json"
        argv = tool if variant == "plain" else [
            python, "-m", "migrator", "wrap", "--mode", variant, "--json", "--", *tool]
        t0 = time.monotonic()
        with open(report, "wb") as err:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
            out = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError(f"bench parity: {variant} run exited {p.returncode}: {report.read_text()[-2000:]}")
        got = json.loads(out.decode().strip().splitlines()[-1])
        run = Run(variant, got["delivered"], got["lost"], got["seq_errors"], usage.ru_utime + usage.ru_stime, wall)
        if variant != "plain":
            summary = _last_json(report.read_text())["summary"]
            run.perf_lost, run.filled_from_ring = summary["perf_lost"], summary["filled_from_ring"]
            run.ring_dropped = summary["ring_dropped"]
        return run


def _last_json(text: str) -> dict:
    """wrap --json prints its report as the last JSON object on stderr, after the tool's own lines."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.index("{"):])


def run_parity(rounds: int = 3, count: int = 50_000, pages: int = 64, python: str | None = None,
               progress=None) -> ParityResult:
    """Run the bursty tool plainly and wrapped in PERF, DUAL and RING, `rounds` times, alternating."""
    res = ParityResult(count, pages, rounds)
    for i in range(rounds):
        for v in VARIANTS:
            if progress is not None:
                progress(f"round {i + 1}/{rounds}: {v}")
            res.runs.append(_run(v, count, pages, python or sys.executable))
    return res


def render(res: ParityResult) -> str:
    """A row per variant: delivered per round, median against plain, the loss each side explains."""
    lines = [f"bursty tool: {res.count} getpid() calls in a tight loop, open_perf_buffer(page_cnt={res.pages}), "
             f"{res.rounds} rounds alternating",
             f"{'variant':<8} {'delivered per round':<26} {'median':>8} {'vs plain':>9} {'lost_cb':>8} "
             f"{'perf lost':>9} {'filled':>7} {'ring drop':>9} {'cpu s':>6}"]
    for v in VARIANTS:
        runs = res.of(v)
        if not runs:
            continue
        per = " / ".join(str(r.delivered) for r in runs)
        med = lambda xs: "-" if xs[0] is None else str(int(statistics.median(xs)))  # noqa: E731
        lines.append(
            f"{v:<8} {per:<26} {int(res.median(v)):>8} {100 * res.ratio(v):>8.1f}% "
            f"{med([r.lost_cb for r in runs]):>8} {med([r.perf_lost for r in runs]):>9} "
            f"{med([r.filled_from_ring for r in runs]):>7} {med([r.ring_dropped for r in runs]):>9} "
            f"{statistics.median(r.cpu_s for r in runs):>6.2f}")
    lines.append("lost_cb: what the tool was told it lost; perf lost / filled / ring drop: wrap's books (medians); "
                 "filled: perf's losses delivered from their ring copy (DUAL); cpu s: the whole process")
    return "\n".join(lines)
