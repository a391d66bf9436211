"""What the report says besides its numbers: each host's mode over time (its lane), why a panel is
empty or a line stops, and which CPU-per-event points are left out or drawn off scale.

Pure functions of the report's data (no matplotlib): charts.py draws them, page.py writes them as
text under the charts, and the tests read them.

* A lane is made of the host's stored windows: each window index carries the mode its host's mode
  map had when the window closed (both channels of an index agree), consecutive windows of one mode
  make one segment. After the host's last window, the mode its agent last applied (a rollback's
  PERF, a completion's RING) continues the lane as a segment without windows (`from_report`).
* A gap of more than 1.5 windows between two of a host's windows is a gap in the lane and a note
  (the agent was silent, restarted or cut off).
* CPU per event is the consumer's CPU over the window divided by the events it delivered: on a
  channel that goes idle (a handful of events, the poll loop's CPU unchanged) it says nothing
  about an event's cost and used to spike the chart off scale. Points of windows with fewer than
  CPU_MIN_EVENTS delivered (or the plan's min_events, if higher) are left out, and what is left is
  clipped at CLIP_FACTOR x its median when a few points still tower over the rest: they are drawn
  as markers on the top edge, and a note says how many and up to what value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Windows with fewer delivered events than this have no CPU-per-event point (see the docstring).
CPU_MIN_EVENTS = 100
# A point higher than CLIP_FACTOR x the median of the shown points is drawn on the chart's top edge.
CLIP_FACTOR = 5.0
MODES_SHOWN = ("PERF", "DUAL", "RING")


@dataclass
class Segment:
    """A stretch of one host's lane: seconds since t0, the mode, the windows `#a..#b` it covers."""

    start: float
    end: float
    mode: str
    windows: int = 0
    first: int | None = None  # window indexes of its first and last window (None: from the host's report)
    last: int | None = None
    from_report: bool = False  # after the host's last window: no window, the mode applied or asked since
    source: str | None = None  # of a from_report segment: "applied by its agent" or "asked by transition N"

    def as_dict(self, first_index: int | None) -> dict:
        return {"mode": self.mode, "start": round(self.start, 3), "end": round(self.end, 3),
                "windows": self.windows, "from_report": self.from_report, "source": self.source,
                "first": name(self.first, first_index), "last": name(self.last, first_index)}


def name(index: int | None, first_index: int | None) -> str | None:
    """`#n` of a window index, as every view names windows (control/story.py)."""
    if index is None:
        return None
    from migrator.control.story import window_name

    return window_name(index, first_index)


def _by_index(windows: list[dict]) -> list[dict]:
    """One entry per window index of one host: its span and mode (either channel; they agree)."""
    out: dict[int, dict] = {}
    for w in windows:
        e = out.get(w["index"])
        if e is None:
            out[w["index"]] = {"index": w["index"], "start": w["start"], "end": w["end"], "mode": w["mode"]}
        else:
            e["start"], e["end"] = min(e["start"], w["start"]), max(e["end"], w["end"])
    return sorted(out.values(), key=lambda e: (e["start"], e["index"]))


# The mode a final transition asks of every host (its agent applies it, windows or not).
FINAL_MODE = {"ROLLED_BACK": "PERF", "COMPLETE": "RING"}


def lane(windows: list[dict], t0: float, window_seconds: float, host: dict | None = None,
         chart_end: float | None = None, transitions: list[dict] = ()) -> tuple[list[Segment], list[tuple[float, float]]]:
    """(segments, gaps) of one host's lane, in seconds since t0. After the host's last window the lane
    goes on to chart_end, hatched, in the mode the host's agent applied since (`host`: its row) or,
    without such a report, the mode a final transition since asks of it (`transitions`)."""
    segs: list[Segment] = []
    gaps: list[tuple[float, float]] = []
    slack = 1.5 * window_seconds
    for e in _by_index(windows):
        a, b = e["start"] - t0, e["end"] - t0
        prev = segs[-1] if segs else None
        if prev is not None and a - prev.end > slack:
            gaps.append((prev.end, a))
            prev = None  # a gap ends a segment even in the same mode
        if prev is not None and prev.mode == e["mode"]:
            prev.end, prev.windows, prev.last = max(prev.end, b), prev.windows + 1, e["index"]
        else:
            segs.append(Segment(a, b, e["mode"], 1, e["index"], e["index"]))
    if chart_end is None:
        return segs, gaps
    last_end = segs[-1].end if segs else None
    after = (lambda x: x < chart_end and (last_end is None or x >= last_end - window_seconds / 2))
    tail: tuple[float, str, str] | None = None
    if host and host.get("applied_mode") and host.get("applied_at") is not None and after(host["applied_at"] - t0):
        tail = (host["applied_at"] - t0, host["applied_mode"], "applied by its agent")
    else:
        for t in transitions:
            x = (t["confirmed_at"] or t["at"]) - t0
            if t["status"] == "confirmed" and t["to"] in FINAL_MODE and after(x):
                st = ((t.get("hosts") or {}).get((host or {}).get("name"), {}) or {}).get("status")
                tail = (x, FINAL_MODE[t["to"]], f"asked by transition {t['id']}" + (f" ({st})" if st else ""))
    if tail is not None and (not segs or segs[-1].mode != tail[1]):
        segs.append(Segment(max(tail[0], last_end if last_end is not None else tail[0]), chart_end, tail[1],
                            from_report=True, source=tail[2]))
    return segs, gaps


def cpu_points(windows: list[dict], t0: float, min_events: int = 1) -> tuple[list[float], list[float], int]:
    """(x, CPU µs/event, left out) of one channel's windows: NaN (a break in the line) for a window
    with fewer than max(CPU_MIN_EVENTS, min_events) delivered events; `left out` counts those that
    had a value."""
    floor = max(CPU_MIN_EVENTS, min_events)
    xs, ys, skipped = [], [], 0
    for w in windows:
        xs.append((w["start"] + w["end"]) / 2 - t0)
        v = w["cpu_per_event_us"]
        if v is not None and (w["delivered"] or 0) < floor:
            skipped += 1
            v = None
        ys.append(math.nan if v is None else v)
    return xs, ys, skipped


def clip_top(values: list[float]) -> tuple[float | None, int, float]:
    """(top of the y axis or None to leave it, points above it, their highest value): CLIP_FACTOR x
    the median when at least one point of five or more is above that."""
    vs = sorted(v for v in values if not math.isnan(v))
    if len(vs) < 5:
        return None, 0, 0.0
    median = vs[len(vs) // 2]
    top = CLIP_FACTOR * median
    if median <= 0 or vs[-1] <= top:
        return None, 0, 0.0
    above = [v for v in vs if v > top]
    return top, len(above), above[-1]


def _fmt_t(x: float) -> str:
    return f"{x:+.1f} s"


def _transition_at(data, x: float) -> dict | None:
    """The last confirmed transition at or before x (seconds since t0), if any."""
    best = None
    for t in data.transitions:
        if t["status"] != "confirmed":
            continue
        if (t["confirmed_at"] or t["at"]) - data.t0 <= x + 1e-6:
            best = t
    return best


def _move(t: dict | None) -> str:
    return f" (transition {t['id']}: {t['from_label']} -> {t['to_label']})" if t else ""


def _n(k: int, what: str) -> str:
    return f"{k} {what}" + ("" if k == 1 else "s")


# At most this many stretches without events are named per channel; the rest are counted.
MAX_IDLE_RUNS = 4


def _idle_runs(ch: str, ws: list[dict], first: int | None) -> list[str]:
    """The stretches of consecutive windows of a channel in one mode in which no event was delivered: there its
    lag and CPU-per-event lines stop. Says the host's mode then (a channel the mode does not use)
    and how many events were attempted (a stalled consumer)."""
    runs: list[list[dict]] = []
    for w in ws:
        if w["mode"] == "rollup" or w["delivered"]:
            continue
        if runs and w["index"] == runs[-1][-1]["index"] + 1 and w["mode"] == runs[-1][-1]["mode"]:
            runs[-1].append(w)
        else:
            runs.append([w])
    out = []
    for r in runs[:MAX_IDLE_RUNS]:
        span = name(r[0]["index"], first) + ("" if len(r) == 1 else f"..{name(r[-1]['index'], first)}")
        mode = r[0]["mode"]
        attempted = sum(w["attempts"] or 0 for w in r)
        unused = {"ring": "PERF", "perf": "RING"}[ch]
        if attempted:
            why = f"{attempted} attempted, none read: the consumer was stalled or cut off"
        elif mode == unused:
            why = f"the host on {unused} does not use {ch}"
        else:
            why = "no event emitted"
        # CPU per event needs events delivered; lag p99 may still come from an earlier window's records read late
        lines = ("lag and CPU lines stop" if all(w["lag_p99_ms"] is None for w in r) else "CPU line stops")
        out.append(f"{ch}: no event delivered in {span} (host on {mode}; {why}): its {lines} there")
    if len(runs) > MAX_IDLE_RUNS:
        k = len(runs) - MAX_IDLE_RUNS
        out.append(f"{ch}: {k} more stretch{'es' if k > 1 else ''} without events")
    return out


def host_notes(data, host: str, windows: list[dict], chart_end: float) -> dict[str, list[str]]:
    """Why a panel of this host's chart is empty or a line stops, per panel ("all", "loss", "lag",
    "cpu"): sentences for people, windows named `#n`."""
    t0, ws_len = data.t0, data.migration["window_seconds"]
    first = data.first_index
    row = next((h for h in data.hosts if h["name"] == host), None)
    segs, gaps = lane(windows, t0, ws_len, row, chart_end, data.transitions)
    real = [w for w in windows if w["mode"] != "rollup"]
    modes = [s.mode for s in segs if not s.from_report]
    notes: dict[str, list[str]] = {"all": [], "loss": [], "lag": [], "cpu": []}
    chans = {ch: sorted((w for w in windows if w["channel"] == ch), key=lambda w: w["start"]) for ch in ("ring", "perf")}
    by_idx = _by_index(real)
    for ch, ws in chans.items():
        if not ws:
            ran = " then ".join(dict.fromkeys(modes)) or "no mode reported"
            why = {"ring": "the ring is read in DUAL and RING only", "perf": "perf is read in PERF and DUAL only"}[ch]
            notes["all"].append(f"no {ch} windows: host on {ran} ({why})")
            continue
        have = {w["index"] for w in ws}
        seen = False
        for k, e in enumerate(by_idx):
            has = e["index"] in have
            prev = by_idx[k - 1] if k else None
            if prev is not None and has != (prev["index"] in have):
                if not has:  # the channel's line stops: the host left the modes that read it
                    t = _transition_at(data, e["start"] - t0 + ws_len / 2)
                    notes["all"].append(f"{ch} line stops at {_fmt_t(prev['end'] - t0)} after "
                                        f"{name(prev['index'], first)}: host on {e['mode']} from "
                                        f"{name(e['index'], first)}{_move(t)}")
                else:
                    notes["all"].append(f"{ch} line {'resumes' if seen else 'starts'} at {_fmt_t(e['start'] - t0)} "
                                        f"with {name(e['index'], first)}: host on {e['mode']} "
                                        f"(on {prev['mode']} before)")
            seen = seen or has
        notes["all"] += _idle_runs(ch, ws, first)
        no_lag = sum(1 for w in ws if w["lag_p99_ms"] is None and w["delivered"])
        if no_lag:
            notes["lag"].append(f"{ch}: no lag p99 in {_n(no_lag, 'window')} with events delivered (not measured)")
    for a, b in gaps:
        notes["all"].append(f"no windows from {_fmt_t(a)} to {_fmt_t(b)}: the agent was silent (stopped, "
                            "restarted or cut off from the database)")
    if real:
        end = max(w["end"] for w in real) - t0
        if chart_end - end > 2 * ws_len:
            t = _transition_at(data, chart_end)
            final = t is not None and t["to"] in ("COMPLETE", "ROLLED_BACK", "ABORTED")
            tail = next((s for s in segs if s.from_report), None)
            if final:
                why = f"the migration ended{_move(t)}"
                if tail is not None:
                    why += f"; the host's lane shows {tail.mode} {tail.source} (hatched)"
            else:
                why = "the agent has not reported since"
            notes["all"].append(f"no windows after {_fmt_t(end)}: {why}")
    floor = max(CPU_MIN_EVENTS, data.migration["thresholds"].get("min_events") or 1)
    for ch, ws in chans.items():
        _, ys, skipped = cpu_points(ws, t0, floor)
        if skipped:
            notes["cpu"].append(f"{ch}: {_n(skipped, 'window')} with fewer than {floor} events left out (an idle "
                                "channel's polling CPU over a handful of events is no per-event cost)")
    shown = [y for ch in chans.values() for y in cpu_points(ch, t0, floor)[1]]
    top, n_above, highest = clip_top(shown)
    if top is not None:
        notes["cpu"].append(f"{_n(n_above, 'point')} above {top:.3g} µs/event ({CLIP_FACTOR:g} x the median) drawn on "
                            f"the top edge, up to {highest:.3g} µs/event")
    if not any(not math.isnan(y) for y in shown):
        notes["cpu"].append("no CPU per event: no window measured the consumer's CPU with enough events")
    return notes


def lanes(data, chart_end: float) -> dict[str, dict]:
    """Every host's lane: {host: {"segments": [...], "gaps": [...]}} (segments as dicts, windows named)."""
    by_host: dict[str, list[dict]] = {}
    for w in data.windows:
        if w["mode"] != "rollup":
            by_host.setdefault(w["host"], []).append(w)
    out = {}
    for h in data.hosts:
        segs, gaps = lane(by_host.get(h["name"], []), data.t0, data.migration["window_seconds"], h, chart_end,
                          data.transitions)
        out[h["name"]] = {"segments": [s.as_dict(data.first_index) for s in segs],
                          "gaps": [[round(a, 3), round(b, 3)] for a, b in gaps]}
    return out
