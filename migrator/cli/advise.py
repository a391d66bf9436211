"""`migrator advise`: ring size, wakeup policy and go / no-go from a migration's stored windows (read-only).

The core is migrator.control.advise (imported inside the command: `--help` loads no store)."""
from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli import app
from migrator.cli._out import emit_json
from migrator.cli._options import config_option, json_option, migration_option


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    v, unit = (n / 1048576, "MiB") if n >= 1048576 else (n / 1024, "KiB")
    return f"{v:g} {unit}" if v == int(v) else f"{v:.2f} {unit}"


def _where(w: dict) -> str:
    return f"{w['host']} {w['name']} ({w['phase']})"


def render(a: dict) -> list[str]:
    """The plain text of `migrator advise` from Advice.to_dict()."""
    r, k = a["ring"], a["wakeup"]
    lines = [f"migration {a['migration_id']} ({a['phase']}): advice from its DUAL_INSTRUMENT, SHADOW and CANARY windows"]
    if r["recommended_bytes"] is None:
        lines.append(f"ring size: configured {_mib(r['configured_bytes'])}; no ring window measured its peak")
    else:
        ev = ", ".join(f"{_where(w)} peak {w['peak_bytes']} B" for w in r["evidence"][:5])
        lines.append(f"ring size: recommend {_mib(r['recommended_bytes'])} ({r['recommended_bytes']} bytes; configured "
                     f"{_mib(r['configured_bytes'])}): worst burst {r['worst_peak_bytes']} bytes x 2, in {ev}")
        lines.append(f"  drops the configured size caused: {r['drops_caused']} in {len(r['drop_windows'])} window(s) "
                     f"that filled it; the recommended size avoids {r['drops_avoided']}")
    m = r["memory"]
    lines.append(f"  memory: configured ring {_mib(m['configured_ring'])}, recommended ring {_mib(m['recommended_ring'])} "
                 f"(charged once; the kernel maps it twice), perf {_mib(m['perf'])} "
                 f"({r['perf_pages']} pages + 1 x {r['cpus']} CPUs x 4 KiB; CPUs from {r['cpus_from']})")
    obs = "-" if k["observed_ns"] is None else f"{k['observed_ns']:g} ns"
    lines.append(f"wakeup: recommend {k['recommended'] or '- (none fits the lag budget)'} (configured {k['configured']}, "
                 f"{obs} per event over {k['evidence_windows']} ring window(s); lag budget {k['budget_ms']:g} ms)")
    for p in k["policies"]:
        ns = "-" if p["predicted_ns"] is None else f"{p['predicted_ns']:g} ns"
        idle = "-" if p["idle_consumer_pct"] is None else f"{p['idle_consumer_pct']:g} %"
        lines.append(f"  {p['policy']:<13} {ns:>10}  lag p99 {p['predicted_lag_p99_ms']:g} ms"
                     f"{'' if p['fits'] else ' (over budget)'}  idle consumer {idle}  [{p['basis']}]")
    if k["evidence"]:
        lines.append("  evidence: " + ", ".join(f"{_where(w)} {w['producer_ns']:g} ns" for w in k["evidence"]))
    lines.append(f"go / no-go: {a['summary']}")
    for h in a["hosts"]:
        lines.append(f"  {h['host']}: {h['verdict']} over {h['windows']} DUAL window(s)"
                     + (f"; upside: {'; '.join(h['upsides'])}" if h["upsides"] else "")
                     + (f"; {'; '.join(h['reasons'])}" if h["reasons"] else ""))
    lines += [f"note: {n}" for n in a["notes"]]
    return lines


@app.command("advise")
def advise_cmd(config: Path = config_option(),
               migration: int = migration_option(),
               cpus: int = typer.Option(None, "--cpus", min=1, metavar="N",
                                        help="CPUs perf's buffers span (default: the windows', else this machine's)."),
               as_json: bool = json_option()) -> None:
    """Read-only: the ring size and wakeup policy a migration's windows call for, and go / no-go per host.

    Ring size: the smallest power of two that holds the worst burst seen twice over, the drops the configured size caused, and the memory of each choice against perf's. Wakeup: the policy with the lowest producer cost within the lag budget. Go / no-go: on the same events, is the ring no worse on loss and lag and clearly better on producer cost, consumer CPU, memory or ordering?

    Example: migrator advise -c canary.toml --json
    """
    from migrator.cli.views import reader
    from migrator.control.advise import advise
    from migrator.store import database_errors

    sf = reader(config)
    with database_errors(sf), sf() as s:
        doc = advise(s, migration, cpus=cpus).to_dict()
    if as_json:
        emit_json(doc)
        return
    for line in render(doc):
        typer.echo(line)
