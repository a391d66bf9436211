"""The report's charts: matplotlib figures rendered to inline SVG (text as paths: no font is fetched).

matplotlib is imported inside the functions only: no other command pays for it."""
from __future__ import annotations

import io
import math
import re

from migrator.tools.report.data import ReportData
from migrator.tools.report.lanes import clip_top, cpu_points, host_notes, lane

# Chart colours; the browser test looks for RING, PERF and DUAL pixels in the screenshot.
RING, PERF, DUAL = "#1f5fd6", "#f07818", "#1a9e8f"
MODE_COLOUR = {"PERF": PERF, "DUAL": DUAL, "RING": RING}
# Above this many hosts the mode lanes show the first ones (the table under them names every host).
MAX_LANES = 40
BREACH, PASS, NO_DATA, MISMATCH = "#d62020", "#189a48", "#9aa0a8", "#7a2fb0"
PHASE_FILL = {"PLANNED": "#f2f2f2", "DUAL_INSTRUMENT": "#e6eefc", "SHADOW": "#e4f5ea", "CANARY": "#fdf5d8",
              "PAUSED": "#ececec", "COMPLETE": "#c9efd6", "ROLLED_BACK": "#f8d0d0", "ABORTED": "#dddddd"}
# Above this many hosts only the first ones get charts (every window stays in the table).
MAX_HOST_CHARTS = 16


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # lazy: only `migrator report` pays for matplotlib

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
    """The figure as an <svg> element to paste into HTML (no XML prolog, no DOCTYPE)."""
    import matplotlib

    buf = io.StringIO()
    # Text as paths: the page needs no font; a fixed salt keeps element ids stable between runs.
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "migrator-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    # The RDF <metadata> block only names matplotlib and Dublin Core vocabularies by URL: drop it.
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], count=1, flags=re.S)


def _phase_spans(data: ReportData, t_end: float) -> list[tuple[float, float, str, str]]:
    """(start, end, phase, label) of each phase position on the chart clock (seconds from t0)."""
    t0 = data.t0
    confirmed = [t for t in data.transitions if t["status"] == "confirmed"]
    spans = []
    for k, t in enumerate(confirmed):
        a = (t["confirmed_at"] or t["at"]) - t0
        b = ((confirmed[k + 1]["confirmed_at"] or confirmed[k + 1]["at"]) - t0) if k + 1 < len(confirmed) else t_end
        spans.append((a, max(b, a), t["to"], t["to_label"]))
    return spans


def _shade(ax, spans, transitions, t0: float) -> None:
    for a, b, phase, _ in spans:
        if b > a:
            ax.axvspan(a, b, color=PHASE_FILL.get(phase, "#f4f4f4"), zorder=0, lw=0)
    for t in transitions:
        x = (t["confirmed_at"] or t["at"]) - t0
        rb = t["to"] == "ROLLED_BACK"
        ax.axvline(x, color=BREACH if rb else "#606060", lw=2.0 if rb else 0.8, ls="-" if t["actor"] == "auto" else "--",
                   zorder=1)


def _chart_end(data: ReportData) -> float:
    last_t = max(((t["confirmed_at"] or t["at"]) for t in data.transitions), default=data.t0)
    end = max(max(w["end"] for w in data.windows), last_t) - data.t0
    return end + max(data.migration["window_seconds"], 0.02 * max(end, 1.0))


def timeline_chart(data: ReportData) -> str:
    """The phase timeline: one bar per phase position, a line per transition (red: the rollback)."""
    t0, end = data.t0, _chart_end(data)
    spans = _phase_spans(data, end)
    fig = _figure(11, 1.9)
    ax = fig.add_subplot()
    for a, b, phase, text in spans:
        width = max(b - a, end * 0.004)
        ax.barh(0, width, left=a, height=0.8, color=PHASE_FILL.get(phase, "#f4f4f4"),
                edgecolor=BREACH if phase == "ROLLED_BACK" else "#808080", lw=1.5 if phase == "ROLLED_BACK" else 0.6)
        if b - a > end * 0.09:
            ax.text(a + (b - a) / 2, 0, text.replace("CANARY slice", "CANARY"), ha="center", va="center", fontsize=8)
    for t in data.transitions:
        x = (t["confirmed_at"] or t["at"]) - t0
        rb = t["to"] == "ROLLED_BACK"
        ax.axvline(x, color=BREACH if rb else "#404040", lw=2.2 if rb else 0.8, ls="-" if t["actor"] == "auto" else "--")
        ax.text(x, 0.47, f"#{t['id']}", color=BREACH if rb else "#303030", fontsize=7, ha="center", va="bottom")
    ax.set_xlim(min(0.0, *(w["start"] - t0 for w in data.windows)), end)
    ax.set_ylim(-0.5, 0.75)
    ax.set_yticks([])
    ax.set_xlabel("seconds since start (solid line: auto transition, dashed: manual, red: rollback)", fontsize=8)
    return _svg(fig)


def _series(ws: list[dict], key: str, t0: float, scale: float = 1.0) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for w in ws:
        v = w[key]
        xs.append((w["start"] + w["end"]) / 2 - t0)
        ys.append(math.nan if v is None else v * scale)
    return xs, ys


def _broken(xs: list[float], ys: list[float], window_seconds: float) -> tuple[list[float], list[float]]:
    """The series with a NaN between two points more than 1.5 windows apart: a line stops where the
    channel has no window (the host ran a mode that does not read it, or its agent was silent)."""
    ox, oy = [], []
    for k, (x, y) in enumerate(zip(xs, ys)):
        if k and x - xs[k - 1] > 1.5 * window_seconds:
            ox.append((x + xs[k - 1]) / 2)
            oy.append(math.nan)
        ox.append(x)
        oy.append(y)
    return ox, oy


def host_chart(data: ReportData, host: str, windows: list[dict]) -> str:
    """Four panels for one host: loss %, lag p99, CPU per event, parse errors and payload mismatches."""
    t0, end = data.t0, _chart_end(data)
    spans = _phase_spans(data, end)
    th = data.migration["thresholds"]
    chans = {ch: [w for w in windows if w["channel"] == ch] for ch in ("ring", "perf")}
    rb = data.rollback
    rb_ids = set(rb["window_ids"]) if rb else set()
    adv_ids = {i for t in data.transitions if t["to"] != "ROLLED_BACK" for i in t["window_ids"]}
    fig = _figure(11, 6.2)
    axes = fig.subplots(4, 1, sharex=True)
    panels = [("loss_rate", 100.0, "loss %", th["max_loss_rate"] * 100),
              ("lag_p99_ms", 1.0, "lag p99 ms", th["max_lag_p99_ms"]),
              ("cpu_per_event_us", 1.0, "CPU µs/event", None)]
    notes = host_notes(data, host, windows, end)
    floor = max(1, th.get("min_events") or 1)

    def series(ws: list[dict], key: str, scale: float) -> tuple[list[float], list[float]]:
        # CPU per event: no point for a window with too few events to say what one costs (lanes.py)
        return cpu_points(ws, t0, floor)[:2] if key == "cpu_per_event_us" else _series(ws, key, t0, scale)

    for ax, (key, scale, ylabel, limit) in zip(axes, panels):
        _shade(ax, spans, data.transitions, t0)
        shown: list[float] = []
        for ch, colour in (("ring", RING), ("perf", PERF)):
            xs, ys = series(chans[ch], key, scale)
            shown += ys
            xs, ys = _broken(xs, ys, data.migration["window_seconds"])
            if xs:
                # A dot per window while they can be told apart; past that, dots only weigh down the SVG.
                ax.plot(xs, ys, color=colour, lw=1.6, marker="o" if len(xs) <= 150 else None, ms=2.5, label=ch, zorder=3)
        if limit is not None:
            ax.axhline(limit, color="#505050", lw=0.8, ls=":", zorder=2)
        # The windows that decided a move: green rings for advances, red for the rollback.
        for ids, colour in ((adv_ids, PASS), (rb_ids, BREACH)):
            hit = [w for w in chans["ring"] if w["id"] in ids]
            pts = [(x, y) for x, y in zip(*series(hit, key, scale)) if not math.isnan(y)]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=70, facecolors="none",
                           edgecolors=colour, linewidths=2.0, zorder=4)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        if key == "cpu_per_event_us":
            top, _, _ = clip_top(shown)
            if top is not None:  # a few towering points: on the top edge, as triangles, not off scale
                ax.set_ylim(0, top * 1.05)
                for ch, colour in (("ring", RING), ("perf", PERF)):
                    over = [(x, y) for x, y in zip(*series(chans[ch], key, scale)) if not math.isnan(y) and y > top]
                    if over:
                        ax.scatter([p[0] for p in over], [top * 1.05] * len(over), marker="^", s=40, color=colour,
                                   clip_on=False, zorder=5)
        # Why a panel is empty or a line stops, in the panel itself (the page lists every note).
        said = [n.split(" (")[0] for n in notes["all"] if n.startswith("no ") and " windows: host on " in n]
        if key == "cpu_per_event_us":
            said += [n.split(" (")[0] for n in notes["cpu"] if n.startswith("no CPU")]
            said += ["triangles: " + n.split(" drawn")[0] for n in notes["cpu"] if " drawn on the top edge" in n]
        if said:
            ax.text(0.005, 0.96, "; ".join(said), transform=ax.transAxes, fontsize=7, color="#505050",
                    va="top", ha="left", zorder=6, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax = axes[3]
    _shade(ax, spans, data.transitions, t0)
    for ch, colour in (("ring", RING), ("perf", PERF)):
        xs, ys = _broken(*_series(chans[ch], "parse_errors", t0), data.migration["window_seconds"])
        if xs:
            ax.step(xs, ys, where="mid", color=colour, lw=1.4, label=f"{ch} parse errors", zorder=3)
    xs, ys = _broken(*_series(chans["ring"], "payload_mismatches", t0), data.migration["window_seconds"])
    if xs:
        ax.step(xs, ys, where="mid", color=MISMATCH, lw=1.4, ls="--", label="payload mismatches", zorder=3)
    ax.set_ylabel("errors", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    ax.set_xlim(min(0.0, *(w["start"] - t0 for w in windows)), end)
    ax.set_xlabel("seconds since start", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    h3, l3 = ax.get_legend_handles_labels()
    fig.legend(handles + h3[2:], labels + l3[2:], loc="outside upper right", ncols=4, fontsize=8, frameon=False)
    fig.suptitle(f"host {host}", fontsize=10, x=0.06, ha="left")
    return _svg(fig)


def lanes_chart(data: ReportData, hosts: list[str]) -> str:
    """One lane per host: when it ran PERF, DUAL or RING (its windows' modes), the mode its agent
    applied after its last window hatched, the transitions as lines, gaps left blank."""
    from matplotlib.patches import Patch

    t0, end = data.t0, _chart_end(data)
    spans = _phase_spans(data, end)
    by_host: dict[str, list[dict]] = {}
    for w in data.windows:
        if w["mode"] != "rollup":
            by_host.setdefault(w["host"], []).append(w)
    rows = {h["name"]: h for h in data.hosts}
    fig = _figure(11, 0.9 + 0.34 * len(hosts))
    ax = fig.add_subplot()
    _shade(ax, spans, data.transitions, t0)
    for k, h in enumerate(hosts):
        y = len(hosts) - 1 - k
        segs, _ = lane(by_host.get(h, []), t0, data.migration["window_seconds"], rows.get(h), end, data.transitions)
        for sg in segs:
            colour = MODE_COLOUR.get(sg.mode, NO_DATA)
            ax.barh(y, max(sg.end - sg.start, end * 0.002), left=sg.start, height=0.62, zorder=3,
                    color="white" if sg.from_report else colour, edgecolor=colour, lw=1.0,
                    hatch="///" if sg.from_report else None)
            if sg.end - sg.start > end * 0.06 and not sg.from_report:
                ax.text((sg.start + sg.end) / 2, y, sg.mode, ha="center", va="center", fontsize=7, color="white",
                        zorder=4)
    ax.set_yticks(range(len(hosts)), list(reversed(hosts)), fontsize=8)
    ax.set_ylim(-0.6, len(hosts) - 0.4)
    ax.set_xlim(min(0.0, *(w["start"] - t0 for w in data.windows)), end)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("seconds since start (hatched: after the host's last window, the mode its agent applied or a "
                  "final transition asked; blank: no window)", fontsize=8)
    handles = [Patch(color=MODE_COLOUR[m], label=m) for m in ("PERF", "DUAL", "RING")]
    fig.legend(handles=handles, loc="outside upper right", ncols=3, fontsize=8, frameon=False)
    return _svg(fig)


def streak_chart(data: ReportData) -> str:
    """The breach streak after each judged window index against N; the rollback marked in red."""
    t0, end = data.t0, _chart_end(data)
    spans = _phase_spans(data, end)
    n = data.migration["rollback_after"]
    ends: dict[int, float] = {}
    for w in data.windows:
        ends[w["index"]] = max(ends.get(w["index"], -math.inf), w["end"] - t0)
    fig = _figure(11, 2.6)
    ax = fig.add_subplot()
    _shade(ax, spans, data.transitions, t0)
    pts = [(ends.get(v["index"], math.nan), v["streak"], v["verdict"]) for v in data.streak]
    if pts:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="#404040", lw=1.2, zorder=3)
        for verdict, colour in (("pass", PASS), ("breach", BREACH), ("no-data", NO_DATA)):
            sel = [p for p in pts if p[2] == verdict]
            if sel:
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], color=colour, s=22, zorder=4, label=verdict)
    ax.axhline(n, color=BREACH, lw=1.2, ls="--", zorder=2)
    ax.text(end, n, f" N = {n}", color=BREACH, va="center", ha="right", fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    rb = data.rollback
    if rb is not None:
        x = (rb["confirmed_at"] or rb["at"]) - t0
        ax.annotate(f"rollback #{rb['id']}", (x, n), xytext=(-70, -8), textcoords="offset points", fontsize=8,
                    color=BREACH, arrowprops={"arrowstyle": "->", "color": BREACH})
    ax.set_ylim(-0.3, n + 0.8)
    ax.set_yticks(range(0, n + 1))
    ax.set_ylabel("breach streak", fontsize=8)
    ax.set_xlabel("seconds since start (one point per judged window index)", fontsize=8)
    ax.set_xlim(min(0.0, *(w["start"] - t0 for w in data.windows)), end)
    ax.tick_params(labelsize=7)
    if pts:
        ax.legend(loc="upper left", fontsize=8, ncols=3, frameon=False)
    return _svg(fig)


# ---- the page --------------------------------------------------------------------------------
