"""The operator's own bcc program ([source] kind = "bcc"): compile it, attach what bcc does not
attach by name, detach it again, and the read-only checks `migrator plan` runs on it.

bcc attaches tracepoint__*, raw_tracepoint__*, kfunc__* ... functions by their names when the
program is loaded; tc and XDP programs need a device, so canary.toml lists them as
[[source.attach]] entries. The program is compiled through channel.load() (rewrite.prepare()
expands its MIGRATOR_CHANNEL); attaching is a separate step so the caller can put a reader on
the channel first and no event meets a channel nobody reads.
"""
from __future__ import annotations

import ast
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from migrator.config import AttachPoint, SourceConfig
from migrator.dataplane.channel import SUFFIXES, Channel, load
from migrator.dataplane.netns import entered
from migrator.dataplane.schema import bcc_registry
from migrator.dataplane.attachments import AttachRecord
from migrator.dataplane.tc import FILTER_HANDLE, PRIO, TcFilter, attach_tc, detach_filter
from migrator.errors import AttachError, BPFLoadError, ChannelError, MigratorError

log = logging.getLogger("migrator.agent")
# linux/if_link.h XDP_FLAGS_*
XDP_FLAGS = {"auto": 0, "skb": 1 << 1, "native": 1 << 2}


@dataclass
class OperatorProgram:
    """One loaded operator program: its bcc object, its channel and the hooks it was attached to."""

    source: SourceConfig
    host: str
    bpf: object = None
    channel: Channel | None = None
    attached: list[AttachPoint] = field(default_factory=list)
    # What each entry of `attached` is in the kernel (a TcFilter's record entry, or the XDP one),
    # kept in `record` (dataplane/attachments.py) when the agent gives one.
    entries: list[dict] = field(default_factory=list)
    record: AttachRecord | None = None

    @classmethod
    def load(cls, source: SourceConfig, host: str) -> "OperatorProgram":
        """Compile and load the program (bcc attaches name-prefixed functions now), find its channel."""
        if source.kind != "bcc":
            raise MigratorError(f'[source] kind = "{source.kind}" is not a bcc program')
        prog = cls(source, host)
        prog.bpf = load(src_file=source.file, cflags=list(source.cflags))
        try:
            prog.channel = Channel(prog.bpf, source.channel)
        except ChannelError:
            prog.close()
            raise
        return prog

    def attach(self) -> None:
        """Attach every [[source.attach]] entry (with {host} replaced); all or nothing. A tc entry
        gets its own explicit priority (tc.PRIO + its place in the list) and handle, so it is
        swapped in place, never stacked, and removed exactly, never by name."""
        from bcc import BPF

        try:
            for slot, spec in enumerate(self.source.attach):
                a = spec.for_host(self.host)
                if a.type == "tc":
                    fn = self._func(a.function, BPF.SCHED_CLS)
                    f = TcFilter(a.device, a.netns or None, a.direction, PRIO + slot, FILTER_HANDLE, a.function)
                    self._note(a, f.to_dict())  # recorded first: a SIGKILL right after the attach leaks nothing
                    attach_tc(fn.fd, f.device, f.netns, direction=f.direction, name=f.name, prio=f.prio, handle=f.handle)
                else:
                    fn = self._func(a.function, BPF.XDP)
                    self._note(a, {"type": "xdp", "device": a.device, "netns": a.netns or None,
                                   "flags": XDP_FLAGS[a.mode], "name": a.function})
                    try:
                        with entered(a.netns or None):
                            self.bpf.attach_xdp(a.device, fn, XDP_FLAGS[a.mode])
                    except Exception as exc:  # bcc raises bare Exception
                        self.attached.pop()  # not attached: nothing of ours to remove there
                        entry = self.entries.pop()
                        if self.record is not None:
                            self.record.remove(entry)
                        raise AttachError(a.device, a.netns or None, f"XDP attach of {a.function}: {exc}",
                                          "check the device, its namespace and the XDP mode") from None
                log.info("%s: %s attached to %s %s%s", self.host, a.function, a.type, a.device,
                         f" in netns {a.netns}" if a.netns else "")
        except BaseException:
            self.detach()
            raise

    def _note(self, a: AttachPoint, entry: dict) -> None:
        """Count an attachment as made (detach() undoes it) and write it to the record."""
        self.attached.append(a)
        self.entries.append(entry)
        if self.record is not None:
            self.record.add(entry)

    def _func(self, name: str, prog_type: int):
        try:
            return self.bpf.load_func(name, prog_type)
        except Exception as exc:
            raise BPFLoadError(self.source.file, f"function {name}: {exc}") from None

    def detach(self) -> None:
        """Remove exactly what attach() attached (errors are logged: the device may be gone already)."""
        while self.attached:
            a, entry = self.attached.pop(), self.entries.pop()
            try:
                if a.type == "tc":
                    detach_filter(TcFilter.from_dict(entry))
                else:
                    with entered(a.netns or None):
                        self.bpf.remove_xdp(a.device, XDP_FLAGS[a.mode])
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.warning("%s: detaching %s from %s: %s", self.host, a.function, a.device, exc)
            if self.record is not None:
                self.record.remove(entry)

    def close(self) -> None:
        """Detach, then unload the program and its maps."""
        self.detach()
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            bpf.cleanup()

    # the ChannelSource side the agent's reload path expects of a probe
    def prog_fds(self) -> list[int]:
        """The fds of the program's loaded functions, for run-time statistics (its channel's prog_fds)."""
        return self.channel.prog_fds()


def import_sink(source: SourceConfig):
    """The operator's handler named by [source] sink ("module:function"), imported with sink_path
    first on sys.path. Raises MigratorError naming the field and the fix."""
    if source.sink_path and source.sink_path not in sys.path:
        sys.path.insert(0, source.sink_path)
    try:
        module = importlib.import_module(source.sink_module)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise MigratorError(f"[source] sink {source.sink!r}: importing {source.sink_module!r} from "
                            f"{source.sink_path} failed: {type(exc).__name__}: {exc} "
                            "(fix: check sink and sink_path in canary.toml)") from None
    fn = getattr(module, source.sink_function, None)
    if not callable(fn):
        raise MigratorError(f"[source] sink {source.sink!r}: {module.__file__} has no function "
                            f"{source.sink_function!r} (fix: define def {source.sink_function}(batch): ...)")
    return fn


def check_sink(source: SourceConfig) -> str:
    """Read-only: find the sink's module file under sink_path and check it defines the function
    at top level (parsed, never imported: importing runs the operator's code). Returns the file."""
    where = Path(source.sink_path or ".")
    spec = None
    sys.path.insert(0, str(where))
    try:
        spec = importlib.util.find_spec(source.sink_module)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path.remove(str(where))
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise MigratorError(f"[source] sink {source.sink!r}: no module {source.sink_module!r} under {where} "
                            "(fix: check sink and sink_path in canary.toml)")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if source.sink_function not in names:
        raise MigratorError(f"[source] sink {source.sink!r}: {spec.origin} defines no {source.sink_function!r} "
                            f"at top level (fix: def {source.sink_function}(batch): ...)")
    return spec.origin


def check_program(source: SourceConfig) -> dict:
    """Compile the program once, find its channel's maps and load every attach function with its
    program type (the verifier runs), then unload everything. Attaches nothing. Raises
    BPFLoadError / ChannelError on the first problem. The result carries the registry fingerprint
    the agents will report (what `migrator start` freezes for this program)."""
    from bcc import BPF

    prog = OperatorProgram.load(source, host="plan")
    try:
        ch = prog.channel
        reg = bcc_registry(prog.bpf, ch.name)
        payload = None
        if reg.types:
            t = reg.types[0]
            dt = t.versions[0]
            payload = {"size": dt.itemsize, "min_size": t.min_size(0), "fields": list(dt.names)}
        out = {"channel": ch.name, "maps": [ch.name + s for s in SUFFIXES], "ring_bytes": ch.ring_bytes,
               "payload": payload, "schema_fingerprint": reg.fingerprint(), "functions": []}
        for a in source.attach:
            prog._func(a.function, BPF.SCHED_CLS if a.type == "tc" else BPF.XDP)
            out["functions"].append({"function": a.function, "type": a.type})
        return out
    finally:
        prog.close()


def source_fingerprint(source: SourceConfig) -> str:
    """The event schema fingerprint of an operator's program (compiles it once; needs root and bcc)."""
    return check_program(source)["schema_fingerprint"]
