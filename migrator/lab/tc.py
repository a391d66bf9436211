"""Attach a SCHED_CLS program to a lab host's interface, inside the host's namespace.

The program fd belongs to this process. pyroute2 0.9's `IPRoute(netns=...)` forks only to
create the netlink socket in the namespace and passes the socket back, so the RTM_NEWTFILTER
carrying the fd is sent by this process and the kernel resolves the fd in our fd table: the
fd number is meaningful, no setns of our own is needed. (Before 0.9, NetNS proxied requests
through a child process where the number meant nothing.) tests/test_lab.py proves it by
counting packets through the attached program.
"""
from __future__ import annotations

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from migrator.errors import LabConfigError, LabError
from migrator.lab.topology import HOOKS, LabHost, _has_clsact, _link

FILTER_HANDLE = 1


def _host_link(nsr: IPRoute, host: LabHost) -> int:
    link = _link(nsr, host.host_if)
    if link is None:
        raise LabError(f"lab host {host.name}: interface {host.host_if} is missing; "
                       f"repair with `migrator lab up --prefix {host.name.rstrip('0123456789')}`")
    return link["index"]


def attach_probe(host: LabHost, prog_fd: int, direction: str = "ingress", name: str = "tc_packet") -> None:
    """Attach (or replace) the BPF filter, direct-action, on one clsact hook of the host's interface."""
    if direction not in HOOKS:
        raise LabConfigError("direction", direction, f"choose one of {', '.join(HOOKS)}")
    with IPRoute(netns=host.netns, flags=0) as nsr:
        idx = _host_link(nsr, host)
        if not _has_clsact(nsr, idx):
            nsr.tc("add", "clsact", idx)
        try:
            nsr.tc("replace-filter", "bpf", idx, handle=FILTER_HANDLE, fd=prog_fd, name=name,
                   parent=HOOKS[direction], classid=1, direct_action=True)
        except NetlinkError as exc:
            raise LabError(f"lab host {host.name}: attaching BPF fd {prog_fd} on {direction}: {exc}") from None


def detach_probe(host: LabHost, direction: str | None = None) -> int:
    """Remove the BPF filters from one hook (None: both); returns how many were removed."""
    hooks = HOOKS if direction is None else {direction: HOOKS[direction]}
    removed = 0
    with IPRoute(netns=host.netns, flags=0) as nsr:
        idx = _host_link(nsr, host)
        if not _has_clsact(nsr, idx):
            return 0
        for parent in hooks.values():
            for f in nsr.get_filters(index=idx, parent=parent):
                if f.get("TCA_KIND") != "bpf" or not f["handle"]:
                    continue  # the chain/protocol header entry carries no handle
                nsr.tc("del-filter", "bpf", idx, handle=f["handle"], parent=parent, info=f["info"])
                removed += 1
    return removed
