"""Attach a SCHED_CLS program to a network device's clsact hook, optionally inside a namespace.

The program fd belongs to this process. pyroute2 0.9's `IPRoute(netns=...)` forks only to
create the netlink socket in the namespace and passes the socket back, so the RTM_NEWTFILTER
carrying the fd is sent by this process and the kernel resolves the fd in our fd table: the
fd number is meaningful, no setns of our own is needed. (Before 0.9, NetNS proxied requests
through a child process where the number meant nothing.) tests/test_lab.py proves it by
counting packets through the attached program.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from migrator.errors import AttachError

HOOKS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
FILTER_HANDLE = 1
# migrator's filters sit at priority PRIO + slot (slot: the attachment's place in its program's
# list), with FILTER_HANDLE: an explicit (prio, handle) makes `replace` swap that one filter in
# place (a reload) instead of adding one at a kernel-chosen priority each time, and lets exactly
# that filter be removed later, by this process or, from its record, by the next agent.
PRIO = 0xC000


@dataclass(frozen=True)
class TcFilter:
    """One attached filter, exactly: where (device, namespace, hook), which (prio, handle), and
    the program name it carries (checked again before a removal)."""

    device: str
    netns: str | None
    direction: str
    prio: int
    handle: int
    name: str

    def to_dict(self) -> dict:
        """The attachment record's entry (dataplane/attachments.py)."""
        return {"type": "tc", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "TcFilter":
        return cls(d["device"], d.get("netns") or None, d["direction"], int(d["prio"]), int(d["handle"]), d["name"])


def netns_route(netns: str | None) -> IPRoute:
    """A netlink socket in `netns` (None: this one); flags=0 never creates the namespace."""
    return IPRoute(netns=netns, flags=0) if netns else IPRoute()


def find_link(ipr: IPRoute, ifname: str):
    """The link message of `ifname`, or None."""
    found = ipr.get_links(ifname=ifname) if ipr.link_lookup(ifname=ifname) else []
    return found[0] if found else None


def has_clsact(ipr: IPRoute, index: int) -> bool:
    """True if the device already has a clsact qdisc."""
    return any(q.get("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index))


def _index(ipr: IPRoute, device: str, netns: str | None) -> int:
    link = find_link(ipr, device)
    if link is None:
        raise AttachError(device, netns, "no such device", "check the device name (ip link) and its namespace")
    return link["index"]


def attach_tc(prog_fd: int, device: str, netns: str | None = None, direction: str = "ingress",
              name: str = "tc_packet", *, prio: int = PRIO, handle: int = FILTER_HANDLE) -> TcFilter:
    """Attach (or atomically replace) a direct-action BPF filter at (prio, handle) on one clsact
    hook of `device`; returns the filter, for detach_filter and the attachment record."""
    if direction not in HOOKS:
        raise AttachError(device, netns, f"direction {direction!r} unknown", f"choose one of {', '.join(HOOKS)}")
    try:
        with netns_route(netns) as ipr:
            idx = _index(ipr, device, netns)
            if not has_clsact(ipr, idx):
                ipr.tc("add", "clsact", idx)
            ipr.tc("replace-filter", "bpf", idx, handle=handle, prio=prio, fd=prog_fd, name=name,
                   parent=HOOKS[direction], classid=1, direct_action=True)
    except (NetlinkError, OSError) as exc:
        raise AttachError(device, netns, f"attaching BPF fd {prog_fd} on {direction}: {exc}",
                          "check that the namespace exists and this process is root") from None
    return TcFilter(device, netns, direction, prio, handle, name)


def detach_filter(f: TcFilter) -> bool:
    """Remove exactly filter `f` (its hook, prio and handle, and only if it still carries program
    name `f.name`); False when it is not there (or its device or namespace is gone)."""
    parent = HOOKS[f.direction]
    try:
        with netns_route(f.netns) as ipr:
            link = find_link(ipr, f.device)
            if link is None or not has_clsact(ipr, link["index"]):
                return False
            idx = link["index"]
            for cur in ipr.get_filters(index=idx, parent=parent):
                if cur.get("TCA_KIND") != "bpf" or cur["handle"] != f.handle or (cur["info"] >> 16) != f.prio:
                    continue
                if cur.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") != f.name:
                    return False  # someone else's filter now sits there: not ours to remove
                ipr.tc("del-filter", "bpf", idx, handle=f.handle, parent=parent, info=cur["info"])
                return True
    except (NetlinkError, OSError):  # the namespace went (lab down) and the filter with it
        return False
    return False


def list_filters(device: str, netns: str | None = None, direction: str = "ingress") -> list[dict]:
    """The BPF filters on one hook of `device`: [{prio, handle, name}] (for views and tests)."""
    out = []
    with netns_route(netns) as ipr:
        idx = _index(ipr, device, netns)
        if not has_clsact(ipr, idx):
            return []
        for cur in ipr.get_filters(index=idx, parent=HOOKS[direction]):
            if cur.get("TCA_KIND") == "bpf" and cur["handle"]:
                out.append({"prio": cur["info"] >> 16, "handle": cur["handle"],
                            "name": cur.get_nested("TCA_OPTIONS", "TCA_BPF_NAME")})
    return out


def detach_tc(device: str, netns: str | None = None, direction: str | None = None, name: str | None = None) -> int:
    """Remove the BPF filters from one hook (None: both), only those named `name` when given
    (the name attach_tc gave them); returns how many were removed."""
    hooks = HOOKS if direction is None else {direction: HOOKS[direction]}
    removed = 0
    with netns_route(netns) as ipr:
        idx = _index(ipr, device, netns)
        if not has_clsact(ipr, idx):
            return 0
        for parent in hooks.values():
            for f in ipr.get_filters(index=idx, parent=parent):
                if f.get("TCA_KIND") != "bpf" or not f["handle"]:
                    continue  # the chain/protocol header entry carries no handle
                if name is not None and f.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") != name:
                    continue
                ipr.tc("del-filter", "bpf", idx, handle=f["handle"], parent=parent, info=f["info"])
                removed += 1
    return removed
