"""`migrator wrap`: run an unmodified bcc Python tool inside the migration, in this process.

The tool is run with runpy (its own `__main__`, its own sys.argv) after bcc is patched here:

* `bcc.BPF.__init__`: a program text (text= or src_file=) with a file-scope BPF_PERF_OUTPUT goes
  through rewrite.wrap_text() (every perf output becomes a migrator channel) and is compiled with
  rewrite.cflags(); a text without one is left alone. A Feed is put on every channel once the
  object is compiled and before bcc auto-attaches its programs (`_trace_autoload`), so the first
  event already finds the perf fds, the ring consumer and the mode: standalone
  `Feed(bpf, name, mode=..., window_seconds=...)`, with a config `attach(bpf, name, config=,
  host=)`.
* `bcc.table.PerfEventArray.open_perf_buffer` on the anchor table of a wrapped channel hands the
  tool's callback to the feed (`feed.open_perf_buffer(callback, page_cnt, lost_cb)`); on any other
  table it is bcc's own.
* `bcc.BPF.perf_buffer_poll(timeout)` / `perf_buffer_consume()` of an object with wrapped channels
  poll / consume its feeds (and bcc's own readers, if the object also has some); `cleanup()`
  finishes the object's feeds before bcc tears the object down.

`bpf["events"].event(data)` keeps decoding the tool's struct: the anchor table `events` records
it (bpf/migrator.h), and the feed hands the callback the payload's address.

What the feeds see is kept per channel: every window (perf and ring side by side), the events
the tool acted on, and whether each of them was also delivered by the ring (matched by the
channel's sequence number, so "the ring would have given the tool the same events" is checked
event by event, not by counts). With a config, the windows of all channels of one host are
merged per (channel, window) before they go to the database, whose rows are unique per host,
channel and window.
"""
from __future__ import annotations

import ctypes as ct
import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import runpy
import select
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from migrator.agent.attach import attach
from migrator.agent.feed import Feed
from migrator.agent.loop import serve_migration
from migrator.config import load_config
from migrator.dataplane.router import ActedMatches
from migrator.dataplane import rewrite
from migrator.dataplane.channel import check_bpf_privileges
from migrator.errors import MigratorError, OptionError, SourceError
from migrator.shared.records import ChannelWindow, merge_windows
from migrator.shared.signals import own_process
from migrator.store import open_store
from migrator.shared.vocab import DEFAULT_RING_BYTES, MODES, PAGE_SIZE

# The perf side of a feed wakes its reader at a watermark (a quarter of the buffer), not per
# event: a blocking perf_buffer_poll() looks at the buffers at least this often, so a quiet tool
# prints its events at most this late.
POLL_STEP_S = 0.05
_PERF_DECL = re.compile(r"\bBPF_PERF_OUTPUT\b")
_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
_NO_PERF_OUTPUT = "no file-scope BPF_PERF_OUTPUT"


class WrapError(MigratorError):
    """The command given to `migrator wrap` cannot be run as a wrapped bcc tool."""

    def __init__(self, command: str, problem: str, fix: str) -> None:
        self.command, self.problem, self.fix = command, problem, fix
        super().__init__(f"cannot wrap {command!r}: {problem} (fix: {fix})")


class _Terminated(BaseException):
    """SIGTERM arrived while the tool ran (raised in the main thread by our handler)."""


# ---- the command ------------------------------------------------------------------------------

_FIX = ("give a bcc Python tool: `migrator wrap -- tcpstates-bpfcc`, `-- /path/tool.py ARGS` or "
        "`-- python3 tool.py ARGS`")


def _what_is(path: Path) -> str | None:
    """None if `path` is a Python script; else what it is, for the error message."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if head.startswith(b"\x7fELF"):
        return "it is an ELF executable, not a Python script"
    if head.startswith(b"#!"):
        line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        words = line.split()
        if any(_PYTHON.fullmatch(os.path.basename(w)) for w in words[:2]):
            return None
        return f"it is a script for {line or 'an unnamed interpreter'!r}, not a Python script"
    if path.suffix == ".py":
        return None
    if b"\0" in head:
        return "it is a binary file, not a Python script"
    return "it has no python shebang line (#!/usr/bin/python3) and no .py suffix: not a Python script"


def resolve_command(argv: list[str]) -> tuple[Path, list[str]]:
    """(script, its arguments) of `python3 SCRIPT ARGS`, `SCRIPT ARGS` or `NAME ARGS` (on PATH).

    The script path is the one Python would see as sys.argv[0]: as given, or as found on PATH.

    Raises WrapError naming the command and why it is not a Python script to run.
    """
    if not argv:
        raise OptionError("COMMAND", "", "is missing", "write `migrator wrap -- TOOL [ARGS...]`")
    first = argv[0]
    if _PYTHON.fullmatch(os.path.basename(first)):
        # An interpreter: the script comes next.
        rest = argv[1:]
        if not rest:
            raise WrapError(" ".join(argv), "the interpreter is given without a script", _FIX)
        if rest[0].startswith("-"):
            raise WrapError(" ".join(argv), f"interpreter options ({rest[0]}) are not supported: the tool runs "
                            "inside migrator's own interpreter", "give the script right after python3")
        script, args = Path(rest[0]), rest[1:]
        if not script.is_file():
            raise WrapError(rest[0], "no such file" if not script.exists() else "it is not a regular file", _FIX)
        return script, args
    if "/" in first:
        path = Path(first)
        if not path.exists():
            raise WrapError(first, "no such file", _FIX)
    else:
        found = shutil.which(first)
        if found is None:
            raise WrapError(first, "no such command on PATH", _FIX)
        path = Path(found)
    if not path.is_file():
        raise WrapError(first, "it is not a regular file", _FIX)
    why = _what_is(path)
    if why is not None:
        raise WrapError(first, why, _FIX)
    return path, argv[1:]


# ---- one wrapped channel ------------------------------------------------------------------------

@dataclass(eq=False)
class Tap:
    """One wrapped channel: its feed, and what the tool got from it (the router's ActedMatches
    while the tool's callback is open)."""

    bpf: object
    name: str
    feed: Feed
    object_no: int  # which BPF object of the tool (0 for the first one made)
    opened: bool = False  # the tool called open_perf_buffer on the anchor
    tracking: bool = False  # the tool's callback is installed (opened, not finished)
    unread: int = 0  # read while no callback of the tool was open (before open, after the end)
    callback_errors: int = 0
    lost_reported: int = 0  # counts handed to the tool's lost_cb
    closed: bool = False
    perf_pages: int = 0  # the buffers' sizes, kept at close for the report
    cpus: int = 0
    ring_bytes: int = 0
    matches: ActedMatches = field(default_factory=ActedMatches)

    def __post_init__(self) -> None:
        self.feed.keep_windows = True  # the report prints them, with a database link too
        self.feed.deliver_to(self._discard)

    @property
    def windows(self) -> list[ChannelWindow]:
        """Every window the feed closed."""
        return self.feed.windows

    @property
    def acted(self) -> int:
        """Events handed to the tool's callback."""
        return self.matches.acted

    @property
    def matched(self) -> int:
        """Of the events acted on, those also delivered by the ring (same seq)."""
        return self.matches.matched

    @property
    def perf_mode_only(self) -> int:
        """Of the events acted on, those emitted in PERF mode (the ring was never written)."""
        return self.matches.perf_mode_only

    def _discard(self, cpu, data, size) -> None:
        self.unread += 1

    # -- the tool's side --
    def open(self, callback: Callable, page_cnt: int, lost_cb: Callable | None, wakeup_events: int = 1) -> None:
        """The tool's open_perf_buffer on the anchor: its callback, lost_cb, page_cnt and wakeup_events
        go to the feed, so perf is the buffer the tool asked bcc for."""
        def on_event(cpu, data, size):
            # bcc hands a perf callback the sample's raw size: the payload padded so that it and
            # its u32 size end on 8 bytes. The bytes are there in a perf record; a ring record is
            # only padded to 8, so it is copied out when the tool is given more than it holds.
            padded = ((size + 11) & ~7) - 4
            if padded != size and self.feed.router.channel_now == "ring":
                copy = ct.create_string_buffer(padded)
                ct.memmove(copy, data, size)
                data = ct.addressof(copy)
            try:
                callback(cpu, data, padded)
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - what a ctypes callback of bcc's does with it
                self.callback_errors += 1
                _unraisable(callback)

        def on_lost(count):
            self.lost_reported += count
            try:
                lost_cb(count)
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001
                self.callback_errors += 1
                _unraisable(lost_cb)

        self.feed.open_perf_buffer(on_event, page_cnt, on_lost if lost_cb is not None else None, wakeup_events)
        self.feed.router.matches = self.matches
        self.opened = self.tracking = True

    @property
    def label(self) -> str:
        """The channel's name, with the BPF object's number after the tool's first object."""
        return self.name if self.object_no == 0 else f"{self.name}@{self.object_no}"

    def fds(self) -> list[int]:
        """The feed's ring and perf fds to wait on ([] once closed)."""
        return [] if self.closed else [self.feed.pipe.ring.fileno(), *self.feed.pipe.perf.fds()]

    def next_close(self) -> float:
        """Wall time of the next window boundary of this feed (the shared clock)."""
        ws = self.feed.window_seconds
        return (math.floor(time.time() / ws) + 1) * ws

    def stop_delivery(self) -> None:
        """The tool is done with this channel: nothing more reaches its callbacks."""
        self.tracking = False
        self.feed.router.matches = None
        self.feed.deliver_to(self._discard)

    def close_last_window(self) -> None:
        """Close the feed's current window, the last one, before the feed is closed.

        By the feed's own clock, not the time now: closing each channel's books takes a grace period,
        and a boundary passing between two channels' closes must not split the host's last window."""
        if not self.closed:
            self.feed.close_window(self.feed.next_index)

    def close(self) -> None:
        """Close the feed (once), keeping the sizes its buffers had for the report."""
        if not self.closed:
            self.closed = True
            pipe = self.feed.pipe
            self.perf_pages, self.cpus, self.ring_bytes = pipe.perf.pages, len(pipe.perf.fds()), pipe.ring.capacity()
            self.feed.close()

    @property
    def not_on_ring(self) -> int:
        """Acted events the ring never delivered (emitted in PERF mode, or missing from the ring)."""
        return self.matches.not_on_ring

    @property
    def ring_not_acted(self) -> int:
        """Ring deliveries of events the tool never acted on (perf lost them, or they came late)."""
        return self.matches.ring_not_acted


def _unraisable(fn) -> None:
    print(f"Exception ignored on calling ctypes callback function: {fn!r}", file=sys.stderr)
    traceback.print_exc()


# ---- one host's windows to the database ---------------------------------------------------------

def combined_fingerprint(fingerprints: dict[str, str]) -> str:
    """One schema fingerprint for several channels: the channel's own when there is one."""
    if len(fingerprints) == 1:
        return next(iter(fingerprints.values()))
    digest = hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()[:16]
    return f"c{len(fingerprints)}:{digest}"


def merge_channels(ws: list[ChannelWindow], names: list[str], fingerprint: str) -> ChannelWindow:
    """One window of the host from the same (channel, index) window of several migrator channels
    (records.merge_windows side by side); each channel's own extra is kept under
    extra["channels"][name]."""
    if len(ws) == 1:
        return ws[0]
    merged = merge_windows(ws, side_by_side=True)
    extra = {"channels": dict(zip(names, (w.extra for w in ws))), "schema_fingerprint": fingerprint,
             "acted": sum(int(w.extra.get("acted", 0)) for w in ws), **merged.extra}
    for w in ws:
        for key in ("mode_switch", "db_gap_since"):
            if key in w.extra and key not in extra:
                extra[key] = w.extra[key]
    if any("payload_compared" in w.extra for w in ws):
        extra["payload_compared"] = sum(int(w.extra.get("payload_compared", 0)) for w in ws)
    modes = sorted({w.mode for w in ws})
    if len(modes) > 1:
        extra["modes"] = dict(zip(names, (w.mode for w in ws)))
    merged.extra = extra
    return merged


class HostMerger:
    """Takes the windows every feed of the host closes, sends one per (channel, index).

    Window `k` goes out once every feed that exists for it has closed `k` (or a later one, if it
    skipped `k`) or has finished. It is sent through one link, the first feed's, which the
    session stops itself after the last flush.
    """

    def __init__(self) -> None:
        self.taps: list[Tap] = []
        self._first: dict[int, int] = {}  # id(tap) -> first window index it exists for
        self._last: dict[int, int] = {}  # id(tap) -> last index it closed
        self._pending: dict[int, dict[str, list[tuple[Tap, ChannelWindow]]]] = {}  # index -> channel -> parts
        self.link = None
        self.sent = 0
        self._protections: list[dict] = []

    def add(self, tap: Tap) -> None:
        """Take in a new feed: its closed windows now come here, and the first feed's link sends them all."""
        if self.link is None:
            self.link = tap.feed.link
            tap.feed.owns_link = False  # the session stops it, after the last flush
        self.taps.append(tap)
        self._first[id(tap)] = tap.feed.next_index
        tap.feed.link.send = lambda ws, protection=None, tap=tap: self._take(tap, ws, protection)

    def _take(self, tap: Tap, ws: list[ChannelWindow], protection: dict | None = None) -> None:
        if protection is not None:  # a feed protected itself: the host's reason goes out at the next flush
            self._protections.append(protection)
        for w in ws:
            self._pending.setdefault(w.index, {}).setdefault(w.channel, []).append((tap, w))
            self._last[id(tap)] = max(self._last.get(id(tap), w.index), w.index)
        self.flush()

    def _ready(self, index: int) -> bool:
        return all(t.closed or self._first[id(t)] > index or self._last.get(id(t), -1) >= index for t in self.taps)

    def flush(self, final: bool = False) -> None:
        """Send the merged windows every feed is done with (all pending ones if `final`)."""
        out = []
        for index in sorted(self._pending):
            if not (final or self._ready(index)):
                break
            for channel, parts in sorted(self._pending.pop(index).items()):
                fps = {t.label: t.feed.fingerprint for t, _ in parts}
                out.append(merge_channels([w for _, w in parts], list(fps), combined_fingerprint(fps)))
        if out and self.link is not None:
            self.sent += len(out)
            protections, self._protections = self._protections, []
            type(self.link).send(self.link, out)
            for p in protections:
                type(self.link).send(self.link, [], protection=p)

    def stop(self) -> None:
        """Stop the database link (after the last flush)."""
        if self.link is not None:
            self.link.stop()


# ---- the session: bcc patched, feeds made and finished --------------------------------------------

@dataclass
class WrapSettings:
    """The options of one `migrator wrap` run: mode, ring size, window length, and config/host if any."""

    mode: str | None = None  # standalone mode (default DUAL); None with a config
    ring_bytes: int = DEFAULT_RING_BYTES
    window_seconds: float = 1.0  # --window, else 1 s standalone and the config's with one
    config: str | None = None
    host: str | None = None
    migration_id: int | None = None


class WrapSession:
    """bcc patched for one run of a tool: every wrapped channel's Tap, by BPF object."""

    def __init__(self, settings: WrapSettings) -> None:
        self.s = settings
        self.objects: list[tuple[object, list[Tap]]] = []
        self.not_wrapped: list[str] = []  # why a BPF() of the tool was left alone
        self.merger = HostMerger() if settings.config else None
        self._orig: dict[str, object] = {}
        self._epolls: dict[int, tuple[tuple, select.epoll]] = {}
        self.finished = False

    # -- lookup --
    def taps_of(self, bpf) -> list[Tap] | None:
        """The Taps of BPF object `bpf`, or None if none of its channels was wrapped."""
        for obj, taps in self.objects:
            if obj is bpf:
                return taps
        return None

    @property
    def taps(self) -> list[Tap]:
        """Every Tap of the run, over all BPF objects."""
        return [t for _, taps in self.objects for t in taps]

    def _anchor_tap(self, table) -> Tap | None:
        taps = self.taps_of(getattr(table, "bpf", None))
        for t in taps or ():
            if t.feed.channel.anchor is table:
                return t
        return None

    # -- patching --
    def install(self) -> None:
        """Patch bcc (BPF.__init__, polling, cleanup, open_perf_buffer) so the tool's perf outputs are wrapped."""
        try:
            import bcc
            import bcc.table
        except Exception as e:  # noqa: BLE001 - ImportError, or libbcc missing (OSError)
            raise MigratorError(f"cannot wrap a bcc tool: bcc is not importable here ({e}) "
                                "(fix: apt-get install python3-bpfcc)") from None
        BPF, PerfEventArray = bcc.BPF, bcc.table.PerfEventArray
        orig = self._orig = {
            "init": BPF.__init__, "autoload": BPF._trace_autoload, "poll": BPF.perf_buffer_poll,
            "consume": BPF.perf_buffer_consume, "cleanup": BPF.cleanup, "open": PerfEventArray.open_perf_buffer,
            "find_file": BPF._find_file, "BPF": BPF, "PerfEventArray": PerfEventArray}
        sig = inspect.signature(orig["init"])
        session = self

        def __init__(bpf, *args, **kwargs):
            bound = sig.bind(bpf, *args, **kwargs).arguments
            bound.pop("self", None)
            names = session._rewrite(bound)
            if names:
                bpf._migrator_channels = names
            try:
                orig["init"](bpf, **bound)
                if names:
                    session._make_feeds(bpf)  # if bcc did not call _trace_autoload
            except BaseException:
                taps = session.taps_of(bpf)
                for t in taps or ():
                    t.stop_delivery()
                    t.close()
                raise

        def _trace_autoload(bpf):
            if getattr(bpf, "_migrator_channels", None):
                session._make_feeds(bpf)
            return orig["autoload"](bpf)

        def perf_buffer_poll(bpf, timeout=-1):
            if session.taps_of(bpf) is None or session.finished:
                return orig["poll"](bpf, timeout)
            return session.poll(bpf, timeout)

        def perf_buffer_consume(bpf):
            if session.taps_of(bpf) is None or session.finished:
                return orig["consume"](bpf)
            return session.consume(bpf)

        def cleanup(bpf):
            if session.taps_of(bpf) is not None:
                session.finish_object(bpf)
            return orig["cleanup"](bpf)

        def open_perf_buffer(table, callback, page_cnt=8, lost_cb=None, wakeup_events=1):
            tap = session._anchor_tap(table)
            if tap is None or tap.closed:
                return orig["open"](table, callback, page_cnt, lost_cb, wakeup_events)
            if page_cnt & (page_cnt - 1) != 0:
                raise Exception("Perf buffer page_cnt must be a power of two")  # bcc's own check and words
            tap.open(callback, page_cnt, lost_cb, wakeup_events)

        BPF.__init__ = __init__
        BPF._trace_autoload = _trace_autoload
        BPF.perf_buffer_poll = perf_buffer_poll
        BPF.perf_buffer_consume = perf_buffer_consume
        BPF.cleanup = cleanup
        PerfEventArray.open_perf_buffer = open_perf_buffer

    def uninstall(self) -> None:
        """Put bcc's own functions back and close the epolls."""
        o = self._orig
        if not o:
            return
        BPF, PerfEventArray = o["BPF"], o["PerfEventArray"]
        BPF.__init__, BPF._trace_autoload = o["init"], o["autoload"]
        BPF.perf_buffer_poll, BPF.perf_buffer_consume, BPF.cleanup = o["poll"], o["consume"], o["cleanup"]
        PerfEventArray.open_perf_buffer = o["open"]
        self._orig = {}
        for _, ep in self._epolls.values():
            ep.close()
        self._epolls.clear()

    def _rewrite(self, args: dict) -> list[str]:
        """Rewrite the program in bcc's arguments `args` in place; the channel names, or [] if left alone."""
        text, src_file = args.get("text"), args.get("src_file") or b""
        extra_flags: list[str] = []
        if src_file:
            found = self._orig["find_file"](src_file if isinstance(src_file, bytes) else str(src_file).encode())
            filename = found.decode("utf-8", "replace")
            try:
                text = Path(filename).read_bytes()
            except OSError:
                return []  # bcc reports the missing file itself
            extra_flags.append(f"-I{Path(filename).resolve().parent}")
        else:
            filename = "<bpf text>"
        if text is None:
            return []
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                self.not_wrapped.append(f"{filename}: not UTF-8 text")
                return []
        if not _PERF_DECL.search(text):
            self.not_wrapped.append(f"{filename}: no BPF_PERF_OUTPUT")
            return []
        try:
            new, names = rewrite.wrap_text(text, self.s.ring_bytes, filename=filename)
        except SourceError as e:
            if e.problem.startswith(_NO_PERF_OUTPUT):
                self.not_wrapped.append(f"{filename}: no file-scope BPF_PERF_OUTPUT")
                return []
            raise
        args.pop("src_file", None)
        args["text"] = new
        args["cflags"] = [*rewrite.cflags(), *extra_flags, *list(args.get("cflags") or [])]
        return names

    def _make_feeds(self, bpf) -> None:
        names = bpf.__dict__.pop("_migrator_channels", None)
        if not names or self.taps_of(bpf) is not None:
            return
        taps: list[Tap] = []
        self.objects.append((bpf, taps))
        s = self.s
        for name in names:
            if s.config:
                feed = attach(bpf, name, config=s.config, host=s.host, migration_id=s.migration_id,
                              window_seconds=s.window_seconds)
            else:
                feed = Feed(bpf, name, host=s.host or "local", mode=s.mode or "DUAL", window_seconds=s.window_seconds)
            if taps:
                feed.join_clock(taps[0].feed)
            tap = Tap(bpf, name, feed, object_no=len(self.objects) - 1)
            taps.append(tap)
            if self.merger is not None:
                self.merger.add(tap)

    # -- reading --
    def _epoll(self, bpf, taps: list[Tap]) -> select.epoll:
        fds = [fd for t in taps for fd in t.fds()]
        try:
            from bcc.libbcc import lib

            fds += [lib.perf_reader_fd(r) for r in bpf.perf_buffers.values()]
        except Exception:  # noqa: BLE001 - bcc's own readers are an extra; the feeds are what counts
            pass
        key = tuple(sorted(fds))
        have = self._epolls.get(id(bpf))
        if have is not None and have[0] == key:
            return have[1]
        if have is not None:
            have[1].close()
        ep = select.epoll()
        for fd in key:
            ep.register(fd, select.EPOLLIN)
        self._epolls[id(bpf)] = (key, ep)
        return ep

    def _delivered(self, taps: list[Tap]) -> int:
        return sum(t.acted + t.lost_reported for t in taps)

    def consume(self, bpf) -> None:
        """bcc's perf_buffer_consume: deliver what is waiting now, without blocking."""
        for t in self.taps_of(bpf) or ():
            if not t.closed:
                t.feed.consume()
        if bpf.perf_buffers:
            self._orig["consume"](bpf)

    def poll(self, bpf, timeout) -> None:
        """bcc's perf_buffer_poll: block until the tool got events (or timeout ms passed; -1: no limit)."""
        taps = [t for t in self.taps_of(bpf) or () if not t.closed]
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout / 1000
        before = self._delivered(taps)
        while True:
            for t in taps:
                t.feed.poll(0)
            if bpf.perf_buffers:
                self._orig["consume"](bpf)
            if self._delivered(taps) != before:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = POLL_STEP_S
            if taps:
                wait = min(wait, min(t.next_close() for t in taps) - time.time() + 1e-3)
            if deadline is not None:
                wait = min(wait, deadline - now)
            self._epoll(bpf, taps).poll(max(wait, 0.0))

    # -- the end --
    def finish_object(self, bpf) -> None:
        """The tool is done with `bpf` (cleanup, or the end of the run): close its feeds' last windows."""
        taps = [t for t in self.taps_of(bpf) or () if not t.closed]
        for t in taps:
            t.stop_delivery()
        for t in taps:
            t.close_last_window()
        for t in taps:
            t.close()
        have = self._epolls.pop(id(bpf), None)
        if have is not None:
            have[1].close()
        if self.merger is not None:
            self.merger.flush()

    def finish(self) -> None:
        """Close every feed (each closes its last window), flush the host's windows, stop the link."""
        if self.finished:
            return
        self.finished = True
        errors = []
        try:
            live = [t for t in self.taps if not t.closed]
            for t in live:
                t.stop_delivery()
            for t in live:
                try:
                    t.close_last_window()
                except Exception as e:  # noqa: BLE001 - close the others anyway
                    errors.append(e)
            for t in live:
                try:
                    t.close()
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            if self.merger is not None:
                self.merger.flush(final=True)
                self.merger.stop()
        finally:
            self.uninstall()
        if errors:
            raise errors[0]


# ---- the report ------------------------------------------------------------------------------

@dataclass
class ChannelReport:
    """What one wrapped channel gave the tool, and its windows, for the wrap report."""

    name: str
    object_no: int
    opened: bool
    acted: int
    matched: int
    not_on_ring: int
    perf_mode_only: int
    ring_not_acted: int
    unread: int
    callback_errors: int
    schema_fingerprint: str
    windows: list[ChannelWindow]
    perf_pages: int = 0  # per CPU, as the tool asked bcc (page_cnt) or the feed's default
    cpus: int = 0
    ring_bytes: int = 0

    @property
    def memory(self) -> dict:
        """Bytes each buffer pins: perf pages x CPUs x page size (data, plus a metadata page per
        CPU), and the ring's data area (mapped twice by the kernel, charged once)."""
        return {"perf_bytes": self.perf_pages * self.cpus * PAGE_SIZE, "ring_bytes": self.ring_bytes}

    def totals(self, channel: str) -> dict:
        """Attempts, delivered, dropped, lost and residual of the "perf" or "ring" side over the run."""
        ws = [w for w in self.windows if w.channel == channel]
        return {"attempts": sum(w.attempts for w in ws), "delivered": sum(w.delivered for w in ws),
                "dropped": sum(w.dropped for w in ws), "lost": sum(w.lost for w in ws),
                "filled_from_ring": sum(w.filled_from_ring for w in ws),
                "residual": ws[-1].residual if ws else 0}  # a window's residual is cumulative

    def to_dict(self) -> dict:
        """The channel's report as JSON-ready data, with perf/ring totals and its windows."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "windows"}
        d["memory"] = self.memory
        d["perf"], d["ring"] = self.totals("perf"), self.totals("ring")
        d["windows"] = [w.to_dict() for w in self.windows]
        return d


@dataclass
class WrapReport:
    """The report of one `migrator wrap` run: how the tool ended, and every channel's report."""

    command: list[str]
    script: str
    mode: str | None
    host: str
    config: str | None
    window_seconds: float
    ended_by: str  # "exit", "SIGINT", "SIGTERM", "exception", "error"
    exit_code: int
    channels: list[ChannelReport]
    not_wrapped: list[str]
    windows_sent: int | None  # with a config: merged windows handed to the database link

    @property
    def summary(self) -> dict:
        """What this tool would see on the ring buffer, over every channel."""
        perf = [c.totals("perf") for c in self.channels]
        ring = [c.totals("ring") for c in self.channels]
        acted = sum(c.acted for c in self.channels)
        not_on_ring = sum(c.not_on_ring for c in self.channels)
        return {"acted": acted, "acted_seen_on_ring": sum(c.matched for c in self.channels),
                "not_on_ring": not_on_ring, "emitted_in_perf_mode": sum(c.perf_mode_only for c in self.channels),
                "ring_delivered": sum(r["delivered"] for r in ring),
                "ring_dropped": sum(r["dropped"] + r["lost"] for r in ring),
                "perf_lost": sum(p["dropped"] + p["lost"] for p in perf),
                "filled_from_ring": sum(p["filled_from_ring"] for p in perf),
                "ring_not_acted": sum(c.ring_not_acted for c in self.channels),
                "unread": sum(c.unread for c in self.channels),
                "every_acted_event_on_ring": bool(self.channels) and not_on_ring == 0}

    @property
    def schema_fingerprint(self) -> str | None:
        """The fingerprint the tool's windows carry to the database (all its channels together):
        what `migrator start --schema-fingerprint` should freeze for it."""
        fps = {c.name if c.object_no == 0 else f"{c.name}@{c.object_no}": c.schema_fingerprint for c in self.channels}
        return combined_fingerprint(fps) if fps else None

    def to_dict(self) -> dict:
        """The report as JSON-ready data, with the schema fingerprint and the summary."""
        return {"type": "wrap", "command": self.command, "script": self.script, "mode": self.mode, "host": self.host,
                "schema_fingerprint": self.schema_fingerprint,
                "config": self.config, "window_seconds": self.window_seconds, "ended_by": self.ended_by,
                "exit_code": self.exit_code, "not_wrapped": self.not_wrapped, "windows_sent": self.windows_sent,
                "channels": [c.to_dict() for c in self.channels], "summary": self.summary}


def _report(session: WrapSession, command: list[str], script: Path, ended_by: str, exit_code: int) -> WrapReport:
    s = session.s
    chans = [ChannelReport(t.name, t.object_no, t.opened, t.acted, t.matched, t.not_on_ring, t.perf_mode_only,
                           t.ring_not_acted, t.unread, t.callback_errors, t.feed.fingerprint, list(t.windows),
                           t.perf_pages, t.cpus, t.ring_bytes)
             for t in session.taps]
    ws = None
    if session.merger is not None:
        ws = session.merger.sent
    return WrapReport(command=list(command), script=str(script), mode=None if s.config else (s.mode or "DUAL"),
                      host=s.host or "local", config=s.config, window_seconds=s.window_seconds,
                      ended_by=ended_by, exit_code=exit_code, channels=chans, not_wrapped=list(session.not_wrapped),
                      windows_sent=ws)


# ---- running the tool ----------------------------------------------------------------------------

@dataclass
class WrapOutcome:
    """How the wrapped tool ended: its exit code, or the signal that ended it (the caller re-raises
    it, so the exit status is the unwrapped tool's), the report, and a migrator error if one of
    ours stopped the tool."""

    exit_code: int
    signal: int | None
    report: WrapReport
    error: MigratorError | None = None


def check_options(config, host, mode, window_seconds) -> None:
    """Refuse (OptionError) a bad --mode, --mode with --config, --config without --host, or a --window <= 0."""
    if mode is not None and mode not in MODES:
        raise OptionError("--mode", mode, "is not a mode", f"use one of {', '.join(MODES)}")
    if config is not None and mode is not None:
        raise OptionError("--mode", mode, "cannot be given with --config: the migration decides the host's mode",
                          "drop --mode, or drop -c to run standalone")
    if config is not None and not host:
        raise OptionError("--host", "", "is needed with --config", "give the name this machine has in canary.toml")
    if window_seconds is not None and not window_seconds > 0:
        raise OptionError("--window", window_seconds, "is not a positive duration", "write e.g. 1s or 500ms")


def _trimmed_tb(exc: BaseException, script: Path):
    """The traceback from the tool's own first frame on, as Python prints it for a script."""
    tb = exc.__traceback__
    while tb is not None and Path(tb.tb_frame.f_code.co_filename) != script:
        tb = tb.tb_next
    return tb or exc.__traceback__


def run_wrapped(command: list[str], *, config: str | Path | None = None, host: str | None = None,
                mode: str | None = None, ring_bytes: int = DEFAULT_RING_BYTES,
                window_seconds: float | None = None) -> WrapOutcome:
    """Run `command` (a bcc Python tool) in this process with its perf outputs migrated.

    Returns once the tool ended, however it ended; the feeds are closed by then.
    """
    check_options(config, host, mode, window_seconds)
    rewrite.check_ring_bytes(ring_bytes)
    script, args = resolve_command(list(command))
    settings = WrapSettings(mode=mode, ring_bytes=ring_bytes, window_seconds=window_seconds,
                            config=str(config) if config is not None else None, host=host)
    if config is not None:
        cfg = load_config(config)
        sf = open_store(cfg.database_url, readonly=True)  # never creates a database: init does
        try:
            settings.migration_id = serve_migration(sf, host, None)
        finally:
            sf.dispose()
        settings.window_seconds = window_seconds or cfg.window_seconds
    else:
        settings.window_seconds = window_seconds or 1.0
    check_bpf_privileges(f"wrap {script.name}")  # name the capability before bcc's compiler noise
    session = WrapSession(settings)
    session.install()

    def on_term(signum, frame):
        raise _Terminated()

    saved_argv, saved_path = sys.argv, list(sys.path)
    saved_int, saved_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, sig, ended_by, error = 0, None, "exit", None
    try:
        signal.signal(signal.SIGTERM, own_process(on_term))  # a child the tool forks dies of it as usual
        sys.argv = [str(script), *args]
        sys.path.insert(0, str(script.resolve().parent))  # as Python does for a script: symlinks resolved
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = int(e.code or 0)
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt as e:
            traceback.print_exception(type(e), e, _trimmed_tb(e, script))
            code, sig, ended_by = 130, signal.SIGINT, "SIGINT"
        except _Terminated:
            code, sig, ended_by = 128 + signal.SIGTERM, signal.SIGTERM, "SIGTERM"
        except MigratorError as e:
            code, ended_by, error = e.exit_code, "error", e
        except Exception as e:  # noqa: BLE001 - the tool's own crash: print it as Python would
            traceback.print_exception(type(e), e, _trimmed_tb(e, script))
            code, ended_by = 1, "exception"
    finally:
        # Finishing must not be cut short by a second Ctrl-C or a late SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            session.finish()
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path
            signal.signal(signal.SIGINT, saved_int if saved_int is not None else signal.SIG_DFL)
            signal.signal(signal.SIGTERM, saved_term if saved_term is not None else signal.SIG_DFL)
    return WrapOutcome(exit_code=code, signal=sig, report=_report(session, command, script, ended_by, code),
                       error=error)
