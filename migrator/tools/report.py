"""`migrator report`: one self-contained HTML file for one migration, charts as inline SVG.

What it shows: the phase timeline with every transition (actor, reason, the windows that decided
it, the rollback highlighted), the breach streak against N, and per host and window the loss and
lag p99 of ring and perf, consumer CPU per event, parse errors and payload mismatches.

The file needs no network to open: CSS is inline, charts are matplotlib SVG (text drawn as
paths, so no font is fetched) pasted into the page, no script at all. matplotlib is imported
inside the chart functions only: every other command starts without paying for it.
Everything read from the database goes into the page through html.escape.
"""
from __future__ import annotations

import html
import io
import json
import math
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator import __version__
from migrator.control.moves import snapshot_config
from migrator.control.phases import label, slice_count
from migrator.errors import MigratorError, StoreError
from migrator.store import api
from migrator.store.models import Migration, Verdict

# Chart colours; the browser test looks for RING and PERF pixels in the screenshot.
RING, PERF = "#1f5fd6", "#f07818"
BREACH, PASS, NO_DATA, MISMATCH = "#d62020", "#189a48", "#9aa0a8", "#7a2fb0"
PHASE_FILL = {"PLANNED": "#f2f2f2", "DUAL_INSTRUMENT": "#e6eefc", "SHADOW": "#e4f5ea", "CANARY": "#fdf5d8",
              "PAUSED": "#ececec", "COMPLETE": "#c9efd6", "ROLLED_BACK": "#f8d0d0", "ABORTED": "#dddddd"}
# Above this many hosts only the first ones get charts (every window stays in the table).
MAX_HOST_CHARTS = 16
# The per-window table stops here; the charts still draw every window.
MAX_TABLE_ROWS = 20000


@dataclass
class ReportData:
    """Everything the page shows, read in one read-only transaction."""

    migration: dict
    hosts: list[dict]
    transitions: list[dict]
    windows: list[dict]
    streak: list[dict]  # slice-scope verdicts: the group verdict and streak after each judged index
    deciding: dict[int, dict] = field(default_factory=dict)  # window id -> window, for transitions' window_ids
    generated_at: float = 0.0

    @property
    def t0(self) -> float:
        """Time zero of every chart: the start (first transition), else the first window."""
        if self.transitions:
            t = self.transitions[0]
            return t["confirmed_at"] or t["at"]
        return min(w["start"] for w in self.windows)

    @property
    def rollback(self) -> dict | None:
        """The transition into ROLLED_BACK, if the migration ended that way."""
        return next((t for t in self.transitions if t["to"] == "ROLLED_BACK"), None)


def _migration(session: Session, migration_id: int | None) -> Migration:
    ids = session.scalars(select(Migration.id).order_by(Migration.id)).all()
    if not ids:
        raise StoreError("no migration in this database (fix: run `migrator init` and `migrator start` first, "
                         "or pass -c with the canary.toml of the run to report)")
    if migration_id is None:
        return session.get(Migration, ids[-1])
    m = session.get(Migration, migration_id)
    if m is None:
        shown = ", ".join(str(i) for i in ids[-10:]) + (" ..." if len(ids) > 10 else "")
        raise StoreError(f"no migration {migration_id} in this database (fix: pass -m with one of {shown}, "
                         "or leave -m out for the newest)")
    return m


def _cpu_per_event_us(cpu_s: float | None, delivered: int | None) -> float | None:
    return cpu_s / delivered * 1e6 if cpu_s and delivered else None


def collect(session: Session, migration_id: int | None = None) -> ReportData:
    """Read one migration (default: the newest) for the report; StoreError when it is missing or has no windows."""
    m = _migration(session, migration_id)
    cfg = snapshot_config(m)
    slices = slice_count(session, m.id)
    host_verdicts = {wid: (v, rule) for wid, v, rule in session.execute(
        select(Verdict.window_id, Verdict.verdict, Verdict.rule)
        .where(Verdict.migration_id == m.id, Verdict.scope == "host", Verdict.window_id.is_not(None)))}
    windows = []
    for w in api.iter_window_rows(session, m.id):
        v, rule = host_verdicts.get(w.id, (None, None))
        windows.append({"id": w.id, "phase": w.phase, "slice": w.slice, "host": w.host, "channel": w.channel,
                        "index": w.index, "start": w.start, "end": w.end, "mode": w.mode, "attempts": w.attempts,
                        "delivered": w.delivered, "lost": w.lost, "dropped": w.dropped_full + w.dropped_other,
                        "loss_rate": w.loss_rate, "lag_p99_ms": w.lag_p99_ms, "consumer_cpu_s": w.consumer_cpu_s,
                        "cpu_per_event_us": _cpu_per_event_us(w.consumer_cpu_s, w.delivered),
                        "parse_errors": w.parse_errors, "payload_mismatches": w.payload_mismatches,
                        "residual": w.residual, "verdict": v, "rule": rule})
    if not windows:
        raise StoreError(f"migration {m.id} ({m.phase}) has no windows yet, so there is nothing to report "
                         "(fix: run `migrator start` and one `migrator agent` per host until windows are "
                         "recorded, or pass -m with a migration that ran)")
    transitions = api.history(session, m.id)
    for t in transitions:
        t["from_label"] = label(t["from"], t["from_slice"], slices)
        t["to_label"] = label(t["to"], t["to_slice"], slices)
    by_id = {w["id"]: w for w in windows}
    deciding = {i: by_id[i] for t in transitions for i in t["window_ids"] if i in by_id}
    streak = [{"index": v.index, "phase": v.phase, "slice": v.slice, "verdict": v.verdict, "rule": v.rule,
               "streak": v.streak, "window_id": v.window_id}
              for v in session.scalars(select(Verdict).where(Verdict.migration_id == m.id, Verdict.scope == "slice")
                                       .order_by(Verdict.id))]
    th = cfg.thresholds
    mig = {"id": m.id, "name": m.name, "phase": m.phase, "slice": m.slice, "label": label(m.phase, m.slice, slices),
           "created_at": m.created_at, "config_path": m.config_path, "config_hash": m.config_hash,
           "schema_fingerprint": m.schema_fingerprint, "slices": slices, "slice_specs": list(cfg.slices),
           "rollback_after": cfg.rollback_after, "no_data": cfg.no_data, "window_seconds": cfg.window_seconds,
           "thresholds": {"max_loss_rate": th.max_loss_rate, "max_lag_p99_ms": th.max_lag_p99_ms,
                          "max_parse_errors": th.max_parse_errors, "max_payload_mismatch": th.max_payload_mismatch,
                          "min_events": th.min_events}}
    return ReportData(mig, api.hosts(session, m.id), transitions, windows, streak, deciding, time.time())


# ---- charts ----------------------------------------------------------------------------------

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
    for ax, (key, scale, ylabel, limit) in zip(axes, panels):
        _shade(ax, spans, data.transitions, t0)
        for ch, colour in (("ring", RING), ("perf", PERF)):
            xs, ys = _series(chans[ch], key, t0, scale)
            if xs:
                # A dot per window while they can be told apart; past that, dots only weigh down the SVG.
                ax.plot(xs, ys, color=colour, lw=1.6, marker="o" if len(xs) <= 150 else None, ms=2.5, label=ch, zorder=3)
        if limit is not None:
            ax.axhline(limit, color="#505050", lw=0.8, ls=":", zorder=2)
        # The windows that decided a move: green rings for advances, red for the rollback.
        for ids, colour in ((adv_ids, PASS), (rb_ids, BREACH)):
            hit = [w for w in chans["ring"] if w["id"] in ids]
            pts = [(x, y) for x, y in zip(*_series(hit, key, t0, scale)) if not math.isnan(y)]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=70, facecolors="none",
                           edgecolors=colour, linewidths=2.0, zorder=4)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
    ax = axes[3]
    _shade(ax, spans, data.transitions, t0)
    for ch, colour in (("ring", RING), ("perf", PERF)):
        xs, ys = _series(chans[ch], "parse_errors", t0)
        if xs:
            ax.step(xs, ys, where="mid", color=colour, lw=1.4, label=f"{ch} parse errors", zorder=3)
    xs, ys = _series(chans["ring"], "payload_mismatches", t0)
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

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#1b1b1b;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:18px 0 4px}
.meta{color:#555}.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:13px}
.COMPLETE{background:#c9efd6;color:#0b5a2a}.ROLLED_BACK{background:#f8d0d0;color:#8a0f0f}.other{background:#eee}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.rollback td{background:#fde2e2;color:#7a0c0c;font-weight:600}tr.breach td{background:#fff1f1}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}dl.facts dt{color:#555}dl.facts dd{margin:0}
figure{margin:6px 0}figure svg{width:100%;height:auto;display:block}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px}
details summary{cursor:pointer;color:#1f5fd6}code{font-size:12px}
"""


def esc(v: Any) -> str:
    """Text for the page: html.escape of anything, '-' for None."""
    return "-" if v is None else html.escape(str(v), quote=True)


def _utc(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.3f}"


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _window_ref(w: dict) -> str:
    return f"#{w['id']} {w['host']} {w['channel']} w{w['index']}"


def _transitions_table(data: ReportData) -> str:
    t0 = data.t0
    rows = []
    for t in data.transitions:
        rb = t["to"] == "ROLLED_BACK"
        cls = ' class="rollback"' if rb else ""
        when = t["confirmed_at"] or t["at"]
        wins = ", ".join(esc(_window_ref(data.deciding[i])) if i in data.deciding else f"#{esc(i)}"
                         for i in t["window_ids"]) or "-"
        rows.append(
            f'<tr id="t{esc(t["id"])}"{cls}>'
            f'<td class="n">{esc(t["id"])}</td><td>{_utc(when)}</td><td class="n">{when - t0:+.1f}</td>'
            f"<td>{esc(t['from_label'])}</td><td>{esc(t['to_label'])}{' &#9888; ROLLBACK' if rb else ''}</td>"
            f"<td>{esc(t['actor'])}</td><td>{esc(t['status'])}</td><td>{esc(t['reason'])}</td><td>{wins}</td></tr>")
    return ('<table id="transitions"><thead><tr><th>#</th><th>confirmed (UTC)</th><th>t (s)</th><th>from</th>'
            "<th>to</th><th>actor</th><th>status</th><th>reason</th><th>deciding windows</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _deciding_table(data: ReportData) -> str:
    rows = []
    for t in data.transitions:
        rb = t["to"] == "ROLLED_BACK"
        for i in t["window_ids"]:
            w = data.deciding.get(i)
            if w is None:
                rows.append(f'<tr><td class="n">{esc(t["id"])}</td><td class="n">{esc(i)}</td>'
                            '<td colspan="9">window not in this database</td></tr>')
                continue
            cls = ' class="rollback"' if rb else ""
            rows.append(
                f'<tr{cls}><td class="n">{esc(t["id"])}</td><td class="n">{esc(w["id"])}</td><td>{esc(w["host"])}</td>'
                f'<td>{esc(w["channel"])}</td><td class="n">{esc(w["index"])}</td>'
                f'<td>{esc(label(w["phase"], w["slice"], data.migration["slices"]))}</td>'
                f'<td class="n">{esc(w["attempts"])}</td><td class="n">{_pct(w["loss_rate"])}</td>'
                f'<td class="n">{_num(w["lag_p99_ms"])}</td><td>{esc(w["verdict"])}</td><td>{esc(w["rule"])}</td></tr>')
    if not rows:
        return "<p>No transition names deciding windows (manual moves only).</p>"
    return ('<table id="deciding"><thead><tr><th>transition</th><th>window id</th><th>host</th><th>channel</th>'
            "<th>index</th><th>phase</th><th>attempts</th><th>loss %</th><th>lag p99 ms</th><th>verdict</th>"
            "<th>rule</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _windows_table(data: ReportData) -> tuple[str, int]:
    pairs: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    order = {h["name"]: k for k, h in enumerate(data.hosts)}
    for w in data.windows:
        pairs[(w["host"], w["index"])][w["channel"]] = w
    keys = sorted(pairs, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    rows = []
    for host, index in keys[:MAX_TABLE_ROWS]:
        ring, perf = pairs[(host, index)].get("ring"), pairs[(host, index)].get("perf")
        any_w = ring or perf
        verdict = ring["verdict"] if ring else None
        cls = ' class="breach"' if verdict == "breach" else ""

        def cells(w: dict | None) -> str:
            if w is None:
                return '<td colspan="4">-</td>'
            return (f'<td class="n">{esc(w["attempts"])}</td><td class="n">{_pct(w["loss_rate"])}</td>'
                    f'<td class="n">{_num(w["lag_p99_ms"])}</td><td class="n">{_num(w["cpu_per_event_us"], ".3f")}</td>')
        errors = sum((w or {}).get("parse_errors", 0) for w in (ring, perf))
        mism = (ring or {}).get("payload_mismatches", 0)
        rows.append(f'<tr{cls}><td>{esc(host)}</td><td class="n">{esc(index)}</td>'
                    f'<td>{esc(label(any_w["phase"], any_w["slice"], data.migration["slices"]))}</td>'
                    f"<td>{esc(ring['mode'] if ring else perf['mode'])}</td>{cells(ring)}{cells(perf)}"
                    f'<td class="n">{errors}</td><td class="n">{esc(mism)}</td>'
                    f"<td>{esc(verdict)}</td><td>{esc(ring['rule'] if ring else None)}</td></tr>")
    table = ('<table id="windows"><thead><tr><th rowspan="2">host</th><th rowspan="2">window</th>'
             '<th rowspan="2">phase</th><th rowspan="2">mode</th><th colspan="4">ring</th><th colspan="4">perf</th>'
             '<th rowspan="2">parse errors</th><th rowspan="2">payload mismatches</th><th rowspan="2">verdict</th>'
             '<th rowspan="2">rule</th></tr><tr>'
             + "<th>attempts</th><th>loss %</th><th>lag p99 ms</th><th>CPU µs/event</th>" * 2
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return table, len(keys)


def render_html(data: ReportData) -> str:
    """The whole page: facts, phase timeline and transitions, streak against N, deciding windows, per-host charts."""
    m = data.migration
    rb = data.rollback
    hosts = [h["name"] for h in data.hosts]
    by_host: dict[str, list[dict]] = defaultdict(list)
    for w in data.windows:
        by_host[w["host"]].append(w)
    charted = [h for h in hosts if by_host.get(h)][:MAX_HOST_CHARTS]
    badge = m["phase"] if m["phase"] in ("COMPLETE", "ROLLED_BACK") else "other"
    t_first, t_last = min(w["start"] for w in data.windows), max(w["end"] for w in data.windows)
    max_streak = max((v["streak"] for v in data.streak), default=0)
    th = m["thresholds"]
    facts = [
        ("migration", f'{esc(m["id"])}: {esc(m["name"])}'),
        ("outcome", f'<span class="badge {badge}">{esc(m["label"])}</span>'),
        ("config", f'<code>{esc(m["config_path"])}</code> (hash {esc((m["config_hash"] or "")[:12])})'),
        ("schema fingerprint", esc(m["schema_fingerprint"])),
        ("hosts", f"{len(hosts)}: " + esc(", ".join(hosts[:40])) + (" ..." if len(hosts) > 40 else "")),
        ("slices", esc(json.dumps(m["slice_specs"]))),
        ("rollback after (N)", f'{esc(m["rollback_after"])} consecutive breaching windows; no-data: {esc(m["no_data"])}'),
        ("thresholds", esc(", ".join(f"{k} {v}" for k, v in th.items()))),
        ("windows", f"{len(data.windows)} of {esc(m['window_seconds'])} s, {_utc(t_first)} to {_utc(t_last)} UTC "
                    f"({t_last - t_first:.1f} s)"),
        ("transitions", str(len(data.transitions))),
        ("highest breach streak", f"{max_streak}/{esc(m['rollback_after'])}"),
    ]
    if rb is not None:
        facts.append(("rollback", f'<a href="#t{esc(rb["id"])}">transition {esc(rb["id"])}</a> ({esc(rb["actor"])}): '
                                  f'{esc(rb["reason"])}'))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>migrator report: migration {esc(m['id'])} ({esc(m['label'])})</title>",
           f"<style>{CSS}</style></head><body>",
           f'<h1>Migration {esc(m["id"])}: <span class="badge {badge}">{esc(m["label"])}</span></h1>',
           f'<p class="meta">generated by migrator {esc(__version__)} at {_utc(data.generated_at)} UTC; '
           "read-only from the migration's database</p>",
           '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>",
           '<h2 id="timeline">Phase timeline</h2>',
           f'<figure class="chart" id="chart-timeline">{timeline_chart(data)}</figure>',
           _transitions_table(data),
           '<h2 id="streak">Breach streak against N</h2>',
           f"<p>After each judged window index: the group verdict (green pass, red breach, grey no-data) and the "
           f"streak of consecutive breaches; N = {esc(m['rollback_after'])} rolls back.</p>",
           f'<figure class="chart" id="chart-streak">{streak_chart(data)}</figure>',
           '<h2 id="deciding-windows">Windows that decided each move</h2>',
           _deciding_table(data),
           '<h2 id="hosts">Per host and window</h2>',
           f'<p class="legend"><span><i class="sw" style="background:{RING}"></i>ring</span>'
           f'<span><i class="sw" style="background:{PERF}"></i>perf</span>'
           f'<span><i class="sw" style="border:2px solid {PASS}"></i>window that decided an advance</span>'
           f'<span><i class="sw" style="border:2px solid {BREACH}"></i>window that decided the rollback</span>'
           "<span>dotted line: the threshold</span></p>"]
    for h in charted:
        out.append(f'<h3>{esc(h)}</h3><figure class="chart" id="chart-host-{esc(h)}">{host_chart(data, h, by_host[h])}</figure>')
    if len(hosts) > len(charted):
        out.append(f"<p>{len(hosts) - len(charted)} more hosts are in the table below only.</p>")
    table, n_rows = _windows_table(data)
    more = f" (first {MAX_TABLE_ROWS} of {n_rows})" if n_rows > MAX_TABLE_ROWS else ""
    out += ['<h2 id="every-window">Every window</h2>',
            f"<details><summary>{min(n_rows, MAX_TABLE_ROWS)} rows{more}: one per host and window index, "
            "ring and perf side by side</summary>", table, "</details>", "</body></html>"]
    return "\n".join(out) + "\n"


def summary(data: ReportData, path: str | None = None, size: int | None = None) -> dict:
    """What `migrator report --json` prints: where the file went and what it covers."""
    rb = data.rollback
    return {"path": path, "bytes": size, "migration_id": data.migration["id"], "phase": data.migration["phase"],
            "label": data.migration["label"], "hosts": [h["name"] for h in data.hosts],
            "transitions": len(data.transitions), "windows": len(data.windows),
            "charts": 2 + min(MAX_HOST_CHARTS, len({w["host"] for w in data.windows})),
            "rollback_after": data.migration["rollback_after"],
            "max_streak": max((v["streak"] for v in data.streak), default=0),
            "rollback": ({"transition_id": rb["id"], "actor": rb["actor"], "reason": rb["reason"],
                          "window_ids": rb["window_ids"]} if rb else None),
            "deciding": {str(t["id"]): t["window_ids"] for t in data.transitions if t["window_ids"]}}


def build_report(session: Session, migration_id: int | None = None) -> str:
    """The report of one migration (default: the newest) as one self-contained HTML page."""
    return render_html(collect(session, migration_id))


def write_report(text: str, path: Path) -> int:
    """Write the page atomically (temp file in the same directory, then rename); returns its size in bytes.

    Raises MigratorError naming the path and the fix; nothing is left half-written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fix = "pass -o with a file in a directory that exists and is writable"
    if path.is_dir():
        raise MigratorError(f"cannot write the report to {path}: it is a directory (fix: {fix}, e.g. -o {path / 'report.html'})")
    if parent.exists() and not parent.is_dir():
        raise MigratorError(f"cannot write the report to {path}: {parent} is not a directory (fix: {fix})")
    if not parent.is_dir():
        raise MigratorError(f"cannot write the report to {path}: directory {parent} does not exist "
                            f"(fix: create it with `mkdir -p {parent}` or {fix})")
    data = text.encode("utf-8")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise MigratorError(f"cannot write the report to {path}: {exc.strerror or exc} (fix: {fix})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return len(data)


__all__ = ["ReportData", "collect", "render_html", "build_report", "write_report", "summary", "esc"]
