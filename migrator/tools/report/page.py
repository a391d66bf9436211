"""The report's page: inline CSS, the tables, the charts pasted in; every database text escaped."""
from __future__ import annotations

import html
import json
import math
import time
from collections import defaultdict
from typing import Any

from migrator import __version__
from migrator.control.phases import label
from migrator.control.story import describe, window_name
from migrator.tools.report.charts import (BREACH, DUAL, MAX_HOST_CHARTS, MAX_LANES, PASS, PERF, RING, _chart_end,
                                          host_chart, lanes_chart, streak_chart, timeline_chart)
from migrator.tools.report.data import ReportData
from migrator.tools.report.lanes import CPU_MIN_EVENTS, host_notes, lanes

# The per-window table stops here; the charts still draw every window.
MAX_TABLE_ROWS = 20000


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
ul.notes{margin:2px 0 10px;padding-left:20px;color:#444;font-size:12.5px}
.mode{display:inline-block;padding:0 5px;border-radius:3px;color:#fff;font-size:11.5px;font-weight:600}
.mode.from-report{background:#fff!important;border:1px dashed currentColor}
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


def _name(data: ReportData, index: int | None) -> str:
    """A window's name for people, `#n` (its number within the migration), as every view says it."""
    return window_name(index, data.first_index)


def _window_refs(t: dict) -> str:
    """A transition's deciding windows as every view names them (`h1 #5 #6, h2 #5 #6`); the row ids
    are in `report --json` only."""
    named = t.get("windows") or []
    text = describe(named)
    gone = len(t["window_ids"]) - len(named)
    if gone > 0:
        text += ("; " if text else "") + f"{gone} window{'s' if gone > 1 else ''} no longer stored"
    return text or "-"


def _transitions_table(data: ReportData) -> str:
    t0 = data.t0
    rows = []
    for t in data.transitions:
        rb = t["to"] == "ROLLED_BACK"
        cls = ' class="rollback"' if rb else ""
        when = t["confirmed_at"] or t["at"]
        wins = esc(_window_refs(t)) if t["window_ids"] else "-"
        rows.append(
            f'<tr id="t{esc(t["id"])}"{cls}>'
            f'<td class="n">{esc(t["id"])}</td><td>{_utc(when)}</td><td class="n">{when - t0:+.1f}</td>'
            f"<td>{esc(t['from_label'])}</td><td>{esc(t['to_label'])}{' &#9888; ROLLBACK' if rb else ''}</td>"
            f"<td>{esc(t['actor'])}</td><td>{esc(_status(t))}</td><td>{esc(t['reason'])}</td><td>{wins}</td></tr>")
    return ('<table id="transitions"><thead><tr><th>#</th><th>confirmed (UTC)</th><th>t (s)</th><th>from</th>'
            "<th>to</th><th>actor</th><th>status</th><th>reason</th><th>deciding windows</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _status(t: dict) -> str:
    """The transition's status, and the hosts it could not reach (lost: dead or silent, as `history` says)."""
    lost = sorted(h for h, o in (t.get("hosts") or {}).items() if o.get("status") == "lost")
    return f"{t['status']}; lost: {', '.join(lost)} (not confirmed there)" if lost else t["status"]


def _deciding_table(data: ReportData) -> str:
    rows = []
    for t in data.transitions:
        rb = t["to"] == "ROLLED_BACK"
        for i in t["window_ids"]:
            w = data.deciding.get(i)
            if w is None:
                rows.append(f'<tr><td class="n">{esc(t["id"])}</td><td>-</td>'
                            '<td colspan="8">window no longer in this database</td></tr>')
                continue
            cls = ' class="rollback"' if rb else ""
            rows.append(
                f'<tr{cls}><td class="n">{esc(t["id"])}</td><td class="n">{esc(_name(data, w["index"]))}</td>'
                f'<td>{esc(w["host"])}</td><td>{esc(w["channel"])}</td>'
                f'<td>{esc(label(w["phase"], w["slice"], data.migration["slices"]))}</td>'
                f'<td class="n">{esc(w["attempts"])}</td><td class="n">{_pct(w["loss_rate"])}</td>'
                f'<td class="n">{_num(w["lag_p99_ms"])}</td><td>{esc(w["verdict"])}</td><td>{esc(w["rule"])}</td></tr>')
    if not rows:
        return "<p>No transition names deciding windows (manual moves only).</p>"
    # Every judged host's window of every deciding index: long on a fleet, so folded under one line
    # (the transitions table above already names them); the charts below stay in view.
    moves = sum(1 for t in data.transitions if t["window_ids"])
    return (f"<details><summary>{len(rows)} windows decided {moves} moves (every judged host's, per index)</summary>"
            '<table id="deciding"><thead><tr><th>transition</th><th>window</th><th>host</th><th>channel</th>'
            "<th>phase</th><th>attempts</th><th>loss %</th><th>lag p99 ms</th><th>verdict</th>"
            "<th>rule</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>")


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
        filled = (perf or {}).get("filled_from_ring", 0)
        rows.append(f'<tr{cls}><td>{esc(host)}</td><td class="n">{esc(_name(data, index))}</td>'
                    f'<td>{esc(label(any_w["phase"], any_w["slice"], data.migration["slices"]))}</td>'
                    f"<td>{esc(ring['mode'] if ring else perf['mode'])}</td>{cells(ring)}{cells(perf)}"
                    f'<td class="n">{esc(filled)}</td><td class="n">{errors}</td><td class="n">{esc(mism)}</td>'
                    f"<td>{esc(verdict)}</td><td>{esc(ring['rule'] if ring else None)}</td></tr>")
    table = ('<table id="windows"><thead><tr><th rowspan="2">host</th><th rowspan="2">window</th>'
             '<th rowspan="2">phase</th><th rowspan="2">mode</th><th colspan="4">ring</th><th colspan="4">perf</th>'
             '<th rowspan="2" title="records perf lost that were delivered from their ring copy">filled from ring</th>'
             '<th rowspan="2">parse errors</th><th rowspan="2">payload mismatches</th><th rowspan="2">verdict</th>'
             '<th rowspan="2">rule</th></tr><tr>'
             + "<th>attempts</th><th>loss %</th><th>lag p99 ms</th><th>CPU µs/event</th>" * 2
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return table, len(keys)


def _lanes_section(data: ReportData, hosts: list[str]) -> str:
    """Each host's mode over the migration: the lanes chart and the same lanes as text, with the
    stretches of windows (named #n) in each mode and the gaps."""
    end = _chart_end(data)
    all_lanes = lanes(data, end)
    colour = {"PERF": PERF, "DUAL": DUAL, "RING": RING}
    rows = []
    for h in hosts:
        ln = all_lanes.get(h, {"segments": [], "gaps": []})
        parts = []
        for sg in ln["segments"]:
            c = colour.get(sg["mode"], "#9aa0a8")
            if sg["from_report"]:
                parts.append(f'<span class="mode from-report" style="color:{c}" data-mode="{esc(sg["mode"])}">'
                             f'{esc(sg["mode"])}</span> {esc(sg["source"])} at {sg["start"]:+.1f} s (no window since)')
            else:
                span = sg["first"] if sg["first"] == sg["last"] else f'{sg["first"]}..{sg["last"]}'
                parts.append(f'<span class="mode" style="background:{c}" data-mode="{esc(sg["mode"])}">'
                             f'{esc(sg["mode"])}</span> {esc(span)} ({sg["start"]:+.1f} to {sg["end"]:+.1f} s, '
                             f'{sg["windows"]} windows)')
        for a, b in ln["gaps"]:
            parts.append(f"no windows {a:+.1f} to {b:+.1f} s")
        rows.append(f'<tr data-host="{esc(h)}"><td>{esc(h)}</td><td>{" &rarr; ".join(parts) or "no window, no mode reported"}'
                    "</td></tr>")
    shown = hosts[:MAX_LANES]
    more = (f"<p>{len(hosts) - len(shown)} more hosts are in the table only.</p>" if len(hosts) > len(shown) else "")
    return ('<h2 id="modes">Host modes</h2><p>When each host ran PERF, DUAL or RING: the mode its mode map had at '
            "each window's close; after its last window, hatched, the mode its agent applied or a final transition asked.</p>"
            f'<figure class="chart" id="chart-lanes">{lanes_chart(data, shown)}</figure>{more}'
            '<details><summary>the lanes as text</summary><table id="lanes"><thead><tr><th>host</th>'
            "<th>modes, in order</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>")


def _notes(data: ReportData, host: str, windows: list[dict]) -> str:
    """Under a host's chart: why a panel is empty or a line stops, points left out or clipped."""
    n = host_notes(data, host, windows, _chart_end(data))
    items = n["all"] + [f"loss: {x}" for x in n["loss"]] + [f"lag p99: {x}" for x in n["lag"]] + \
        [f"CPU per event: {x}" for x in n["cpu"]]
    if not items:
        return ""
    return f'<ul class="notes" id="notes-{esc(host)}">' + "".join(f"<li>{esc(x)}</li>" for x in items) + "</ul>"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    v, unit = (n / 1048576, "MiB") if n >= 1048576 else (n / 1024, "KiB")
    return (f"{v:g}" if v == int(v) else f"{v:.2f}") + f" {unit}"


def _advice_section(a: dict | None, first: int | None = None) -> str:
    """`migrator advise` on this migration: ring size, wakeup policy, go / no-go per host (control/advise.py)."""
    if a is None:
        return ""
    r, k = a["ring"], a["wakeup"]
    where = ", ".join(f"{esc(w['host'])} {esc(window_name(w['index'], first))}" for w in r["evidence"][:5]) or "-"
    m = r["memory"]
    facts = [
        ("ring size", f"recommend <b>{_bytes(r['recommended_bytes'])}</b> (configured {_bytes(r['configured_bytes'])}); "
                      f"worst burst {esc(r['worst_peak_bytes'])} bytes x 2 in {where}"),
        ("drops the size caused", f"{esc(r['drops_caused'])} in {len(r['drop_windows'])} window(s) that filled the ring; "
                                  f"the recommended size avoids {esc(r['drops_avoided'])}"),
        ("memory", f"ring {_bytes(m['configured_ring'])} configured, {_bytes(m['recommended_ring'])} recommended; perf "
                   f"{_bytes(m['perf'])} ({esc(r['perf_pages'])} pages + 1 x {esc(r['cpus'])} CPUs, from {esc(r['cpus_from'])})"),
        ("wakeup", f"recommend <b>{esc(k['recommended'])}</b> (configured {esc(k['configured'])}, "
                   f"{_num(k['observed_ns'], '.0f')} ns per event over {esc(k['evidence_windows'])} ring windows; "
                   f"lag budget {esc(k['budget_ms'])} ms)"),
        ("go / no-go", esc(a["summary"])),
    ]
    rows = "".join(
        f"<tr><td>{esc(h['host'])}</td><td>{esc(h['verdict'])}</td><td class=\"n\">{esc(h['windows'])}</td>"
        f"<td class=\"n\">{_pct(h['ring']['loss_rate'])} / {_pct(h['perf']['loss_rate'])}</td>"
        f"<td class=\"n\">{_num(h['ring']['lag_p99_ms'])} / {_num(h['perf']['lag_p99_ms'])}</td>"
        f"<td class=\"n\">{esc(h['ring']['inversions'])} / {esc(h['perf']['inversions'])}</td>"
        f"<td class=\"n\">{_num(h['ring']['cpu_us_per_event'], '.3f')} / {_num(h['perf']['cpu_us_per_event'], '.3f')}</td>"
        f"<td class=\"n\">{_num(h['ring']['producer_ns'], '.0f')} / {_num(h['perf']['producer_ns'], '.0f')}</td>"
        f"<td>{esc('; '.join(h['upsides'] + h['reasons']))}</td></tr>" for h in a["hosts"])
    table = ('<table id="advice-hosts"><thead><tr><th>host</th><th>verdict</th><th>DUAL windows</th>'
             "<th>loss % ring / perf</th><th>lag p99 ms ring / perf</th><th>inversions ring / perf</th>"
             "<th>CPU µs/event ring / perf</th><th>producer ns ring / perf</th><th>why</th></tr></thead><tbody>"
             + rows + "</tbody></table>") if rows else ""
    notes = "".join(f"<li>{esc(n)}</li>" for n in a["notes"])
    return ('<h2 id="advice">Advice</h2><p>What the stored windows say (<code>migrator advise -m '
            f'{esc(a["migration_id"])}</code>): keep perf unless a clear KPI upside justifies the ring.</p>'
            '<dl class="facts">' + "".join(f"<dt>{t}</dt><dd>{v}</dd>" for t, v in facts) + "</dl>"
            + table + (f"<ul>{notes}</ul>" if notes else ""))


def _consumer_section(data: ReportData) -> str:
    """The exactly-once account as far as the database knows it: per host, the events the operator's
    consumer acted on (its sink's count, else the records delivered to it), from which channel, and
    what the kernel counted as dropped on the acting channel."""
    acc = data.consumer
    if not acc or not any(b["acted"] or b["drops"] for b in acc.values()):
        return ('<h2 id="consumer">Consumer account</h2><p>No window recorded what a consumer acted on (a demo probe '
                "without a sink, or no window yet).</p>")
    rows = "".join(
        f"<tr><td>{esc(h)}</td><td>{b['acted']}</td><td>{b['by_channel']['perf']}</td><td>{b['by_channel']['ring']}</td>"
        f"<td>{b['drops']}</td><td>{b['switches']}</td><td>{'-' if b['sink_total'] is None else b['sink_total']}</td>"
        f"<td>{b['sink_errors']}</td></tr>" for h, b in acc.items())
    acted = sum(b["acted"] for b in acc.values())
    drops = sum(b["drops"] for b in acc.values())
    return ('<h2 id="consumer">Consumer account</h2><p>Per host, the events the operator\'s consumer acted on (its '
            "sink's count; without a sink, the records delivered to it), the channel each came from, and what the "
            "kernel counted as refused or lost on the acting channel. Every event reaches the consumer once across "
            "every mode switch, so acted + dropped is what was emitted; the packets or events sent are known to "
            f"whoever sent them (<code>migrator lab run</code> prints that comparison). In all: {acted} acted on, "
            f"{drops} dropped by count.</p>"
            '<table id="consumer-account"><thead><tr><th>host</th><th>acted</th><th>from perf</th><th>from ring</th>'
            "<th>dropped (kernel count)</th><th>mode switches</th><th>sink total</th><th>sink errors</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


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
    max_streak = max([v["streak"] for v in data.streak] + [(data.story or {}).get("streak", 0)])
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
           _lanes_section(data, hosts),
           '<h2 id="streak">Breach streak against N</h2>',
           f"<p>After each judged window index: the group verdict (green pass, red breach, grey no-data) and the "
           f"streak of consecutive breaches; N = {esc(m['rollback_after'])} rolls back.</p>",
           f'<figure class="chart" id="chart-streak">{streak_chart(data)}</figure>',
           '<h2 id="deciding-windows">Windows that decided each move</h2>',
           _deciding_table(data),
           _consumer_section(data),
           _advice_section(data.advice, data.first_index),
           '<h2 id="hosts">Per host and window</h2>',
           f'<p class="legend"><span><i class="sw" style="background:{RING}"></i>ring</span>'
           f'<span><i class="sw" style="background:{PERF}"></i>perf</span>'
           f'<span><i class="sw" style="border:2px solid {PASS}"></i>window that decided an advance</span>'
           f'<span><i class="sw" style="border:2px solid {BREACH}"></i>window that decided the rollback</span>'
           "<span>dotted line: the threshold</span><span>&#9650; on the top edge: a point above the scale</span></p>"
           f"<p>CPU per event leaves out windows with fewer than {max(CPU_MIN_EVENTS, th.get('min_events') or 1)} "
           "delivered events (an idle channel's polling CPU is no per-event cost); the notes under a chart say "
           "why a panel is empty or a line stops.</p>"]
    for h in charted:
        out.append(f'<h3>{esc(h)}</h3><figure class="chart" id="chart-host-{esc(h)}">{host_chart(data, h, by_host[h])}'
                   f"</figure>{_notes(data, h, by_host[h])}")
    if len(hosts) > len(charted):
        out.append(f"<p>{len(hosts) - len(charted)} more hosts are in the table below only.</p>")
    table, n_rows = _windows_table(data)
    more = f" (first {MAX_TABLE_ROWS} of {n_rows})" if n_rows > MAX_TABLE_ROWS else ""
    out += ['<h2 id="every-window">Every window</h2>',
            f"<details><summary>{min(n_rows, MAX_TABLE_ROWS)} rows{more}: one per host and window index, "
            "ring and perf side by side</summary>", table, "</details>", "</body></html>"]
    return "\n".join(out) + "\n"
