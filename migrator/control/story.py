"""One story in every view: which streak decides (or decided) a migration, with the same windows
and the same names in `status`, `history`, `report`, `what-if` and the live feed of `lab run`.

* A window's name for people is its number within the migration: `#n`, n = its index minus the
  migration's first window index, plus 1 (window indexes are epoch / window_seconds, shared by
  every host's windows of the same interval). The row id appears only in --json.
* The streak: after an automatic rollback (the controller's, actor `auto`, or a host's own,
  actor `host X`), the rollback's windows; otherwise the controller's current streak, each
  breaching group expanded to every judged host's window of its index.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migrator.store.models import Migration, Verdict, Window


def first_index(session: Session, migration_id: int) -> int | None:
    """The migration's first window index (None before any window), also after `migrator prune`
    deleted its first windows (their rollups keep it): names do not shift when windows go."""
    from migrator.store.models import WindowRollup

    kept = session.scalar(select(func.min(Window.index)).where(Window.migration_id == migration_id))
    rolled = session.scalar(select(func.min(WindowRollup.first_index)).where(WindowRollup.migration_id == migration_id))
    return min((i for i in (kept, rolled) if i is not None), default=None)


def window_name(index: int | None, first: int | None) -> str:
    """`#n`: the window's number within its migration (the first window is #1)."""
    if index is None:
        return "-"
    return f"#{index - first + 1}" if first is not None else f"#{index}"


def named_windows(session: Session, migration_id: int, ids: Iterable[int | None],
                  first: int | None = None) -> list[dict]:
    """The windows `ids` (in that order, unknown ids left out) with their names and host verdicts."""
    ids = [int(i) for i in ids if i is not None]
    if not ids:
        return []
    first = first_index(session, migration_id) if first is None else first
    rows = {r.id: r for r in session.execute(
        select(Window.id, Window.host, Window.channel, Window.index, Window.phase, Window.slice, Window.mode)
        .where(Window.migration_id == migration_id, Window.id.in_(ids)))}
    verdicts = dict(session.execute(select(Verdict.window_id, Verdict.verdict).where(
        Verdict.migration_id == migration_id, Verdict.scope == "host", Verdict.window_id.in_(ids))).all())
    out = []
    for i in ids:
        r = rows.get(i)
        if r is None:
            continue
        out.append({"id": r.id, "name": window_name(r.index, first), "number": r.index - first + 1,
                    "host": r.host, "channel": r.channel, "index": r.index, "phase": r.phase, "slice": r.slice,
                    "mode": r.mode, "verdict": verdicts.get(r.id)})
    return out


def describe(windows: list[dict]) -> str:
    """`ux1 #12 #13 #14` (per host, in order): the windows as every text view prints them."""
    by_host: dict[str, list[str]] = {}
    for w in windows:
        by_host.setdefault(w["host"], []).append(w["name"])
    return ", ".join(f"{h} {' '.join(names)}" for h, names in by_host.items())


def group_windows(session: Session, migration_id: int, phase: str, slice_: int,
                  representative: Iterable[int | None]) -> list[int]:
    """Every judged host's window of the groups named by their representative window ids (the
    controller's streak_window_ids), in index order: what the streak counted."""
    reps = [int(i) for i in representative if i is not None]
    if not reps:
        return []
    indexes = [i for (i,) in session.execute(select(Window.index).where(Window.id.in_(reps)))]
    if not indexes:
        return []
    rows = session.execute(select(Verdict.window_id).where(
        Verdict.migration_id == migration_id, Verdict.scope == "host", Verdict.phase == phase,
        Verdict.slice == slice_, Verdict.index.in_(indexes), Verdict.window_id.is_not(None))
        .order_by(Verdict.index, Verdict.id)).all()
    ids = [r[0] for r in rows]
    return ids or reps


def is_automatic_rollback(t: dict) -> bool:
    """A rollback by the controller's streak (actor auto) or by a host's own breaker (actor host ...)."""
    return t["to"] == "ROLLED_BACK" and (t["actor"] == "auto" or t["actor"].startswith("host"))


def rollback_story(session: Session, m: Migration, rollback_after: int, first: int | None = None) -> dict | None:
    """The last automatic rollback's streak: who, its windows (named), the streak k/N."""
    from migrator.store import api

    rbs = [t for t in api.history(session, m.id) if is_automatic_rollback(t) and t["window_ids"]]
    if not rbs:
        return None
    t = rbs[-1]
    ws = named_windows(session, m.id, t["window_ids"], first)
    return {"by": "controller" if t["actor"] == "auto" else t["actor"], "transition_id": t["id"],
            "streak": len({w["index"] for w in ws}) or len(t["window_ids"]), "rollback_after": rollback_after,
            "window_ids": [w["id"] for w in ws], "windows": ws, "reason": t["reason"]}


def streak_story(session: Session, m: Migration, rollback_after: int) -> dict:
    """The streak every view shows: an automatic rollback's once the migration ended rolled back,
    else the controller's current one in the position being judged."""
    first = first_index(session, m.id)
    if m.phase == "ROLLED_BACK":
        rb = rollback_story(session, m, rollback_after, first)
        if rb is not None:
            return rb
    phase, slice_ = (m.paused_phase, m.paused_slice or 0) if m.phase == "PAUSED" else (m.phase, m.slice)
    ids = group_windows(session, m.id, phase, slice_, json.loads(m.streak_window_ids or "[]"))
    ws = named_windows(session, m.id, ids, first)
    return {"by": "controller", "transition_id": None, "streak": m.streak, "rollback_after": rollback_after,
            "window_ids": [w["id"] for w in ws], "windows": ws, "reason": None}


def transition_windows(session: Session, migration_id: int, transitions: list[dict]) -> None:
    """Add to each transition dict its windows, named (`windows`): one query for them all."""
    first = first_index(session, migration_id)
    ids = [i for t in transitions for i in t["window_ids"]]
    by_id = {w["id"]: w for w in named_windows(session, migration_id, ids, first)}
    for t in transitions:
        t["windows"] = [by_id[i] for i in t["window_ids"] if i in by_id]


def consumer_account(session: Session, migration_id: int, hosts: Iterable[str],
                     sent: dict[str, int] | None = None) -> dict[str, dict]:
    """Per host: what the operator's consumer acted on, and, when the packets sent are known (`sent`:
    the lab counts them), whether that is every event exactly once.

    acted: the events the sink took (the agent's `sink_events` per window, summed; without a
    sink, the records the feed delivered). by_channel: records the feed delivered from perf
    and from ring (its cumulative `acted`, summed across reloads).
    drops: what the kernel counted as refused or lost on the acting channel (perf always; ring
    in windows not closed in DUAL, where it only shadows perf). expected = sent - drops;
    acted == expected means nothing was lost beyond what the kernel counted and nothing was
    delivered twice, across every mode switch. Without `sent`, expected, ok and the verdict are
    None: the account says what was acted on and dropped, and that the sent count is unknown.
    """
    rows = session.execute(select(Window.host, Window.channel, Window.mode, Window.dropped_full,
                                  Window.dropped_other, Window.lost, Window.extra)
                           .where(Window.migration_id == migration_id).order_by(Window.index)).all()
    books = {h: {"sink_events": 0, "sink_total": 0, "sink_errors": 0, "drops": 0,
                 "by_channel": {"perf": 0, "ring": 0}, "switches": set(), "has_sink": False} for h in hosts}
    prev: dict[tuple[str, str], int] = {}
    for host, ch, mode, dfull, dother, lost, extra in rows:
        b = books.get(host)
        if b is None:
            continue
        x = json.loads(extra) if extra else {}
        if "sink_total" in x:
            b["has_sink"] = True
            b["sink_events"] += x.get("sink_events", 0)
            b["sink_total"] = max(b["sink_total"], x["sink_total"])
            b["sink_errors"] = max(b["sink_errors"], x.get("sink_errors", 0))
        if "acted" in x:  # cumulative per feed: a reload starts a new count
            v, p = x["acted"], prev.get((host, ch), 0)
            b["by_channel"][ch] += v - p if v >= p else v
            prev[(host, ch)] = v
        if ch == "perf" or mode != "DUAL":
            b["drops"] += dfull + dother + lost
        if "mode_switch" in x:
            b["switches"].add(x["mode_switch"].get("at"))
    out = {}
    for h, b in books.items():
        acted = b["sink_events"] if b["has_sink"] else sum(b["by_channel"].values())
        n = None if sent is None else sent.get(h, 0)
        expected = verdict = ok = None
        if n is not None:
            expected, ok = n - b["drops"], acted == n - b["drops"]
            if ok:
                verdict = "none lost, none doubled" if not b["drops"] else \
                    f"none lost beyond the {b['drops']} the kernel counted, none doubled"
            elif acted < expected:
                verdict = f"{expected - acted} LOST without a kernel count"
            else:
                verdict = f"{acted - expected} MORE than sent: delivered twice?"
        out[h] = {"sent": n, "acted": acted, "by_channel": b["by_channel"], "drops": b["drops"],
                  "expected": expected, "ok": ok, "switches": len(b["switches"]),
                  "sink_total": b["sink_total"] if b["has_sink"] else None, "sink_errors": b["sink_errors"],
                  "verdict": verdict}
    return out
