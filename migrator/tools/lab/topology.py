"""Lab topology: N simulated hosts, each a network namespace joined to the root by a veth pair.

Nothing is remembered between runs: hosts, links, addresses and qdiscs are found again by the
name prefix (namespace `<prefix><i>`, root end `<prefix><i>-h`, host end `<prefix><i>-n`), so
`lab_up` repairs whatever a crash left half-made and `lab_down` finds every leftover.
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from migrator.errors import LabError, LabHostNotFound, LabNameCollision
from migrator.dataplane import netns
from migrator.dataplane.tc import HOOKS, attach_tc, detach_tc, find_link, has_clsact, netns_route
from migrator.tools.lab import names

LAB_NET = ipaddress.ip_network("10.213.0.0/16")  # private block; one /30 per host, never routed out
PREFIXLEN = 30
CLSACT_HANDLE = 0xFFFF0000
LOCK_PATH = "/run/migrator-lab.lock"


@dataclass
class LabHost:
    """One simulated host: its namespace, both veth ends and their /30 addresses."""

    name: str
    index: int
    netns: str
    root_if: str
    host_if: str
    root_addr: str | None = None
    host_addr: str | None = None
    prefixlen: int = PREFIXLEN
    qdisc: bool = False
    filters: dict[str, list[str]] = field(default_factory=dict)  # hook -> BPF filter names

    def to_dict(self) -> dict:
        """The host as a plain dict, for `lab up` / `lab status` --json."""
        return asdict(self)


@contextmanager
def _lab_lock():
    """Serialise lab set-up and tear-down so two `lab up`s never pick the same /30."""
    with open(LOCK_PATH, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _kind(link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def _addrs_v4(ipr: IPRoute, index: int) -> list[tuple[str, int]]:
    return [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(family=socket.AF_INET, index=index)]


def _lab_addr(addrs: list[tuple[str, int]]) -> str | None:
    for a, plen in addrs:
        if plen == PREFIXLEN and ipaddress.ip_address(a) in LAB_NET:
            return a
    return None


def _free_subnet(ipr: IPRoute) -> ipaddress.IPv4Network:
    """Lowest /30 of LAB_NET no root-namespace address uses: labs with other prefixes coexist."""
    used = set()
    for a in ipr.get_addr(family=socket.AF_INET):
        addr = ipaddress.ip_address(a.get("IFA_ADDRESS"))
        if addr in LAB_NET:
            used.add(ipaddress.ip_network(f"{addr}/{PREFIXLEN}", strict=False))
    for net in LAB_NET.subnets(new_prefix=PREFIXLEN):
        if net not in used and net.network_address.packed[2] != 0:  # skip 10.213.0.x: easy to mistype
            return net
    raise LabError(f"no free /{PREFIXLEN} left in {LAB_NET}; remove old labs with `migrator lab down`")


def _check_free(ipr: IPRoute, ifname: str, fix: str) -> None:
    link = find_link(ipr, ifname)
    if link is not None and _kind(link) != "veth":
        raise LabNameCollision(ifname, f"a {_kind(link) or 'non-veth'} link", fix)


def _up_host(ipr: IPRoute, prefix: str, i: int) -> LabHost:
    ns, rif, hif = names.ns_name(prefix, i), names.root_ifname(prefix, i), names.host_ifname(prefix, i)
    fix = f"choose another --prefix than {prefix!r} or remove the link yourself"
    _check_free(ipr, rif, fix)
    _check_free(ipr, hif, fix)
    if not netns.is_mounted(ns):
        netns.create(ns)
    with netns_route(ns) as nsr:
        root = find_link(ipr, rif)
        peer = find_link(nsr, hif)
        if root is not None and peer is None:  # half a pair (peer elsewhere): rebuild it
            ipr.link("del", index=root["index"])
            root = None
        stray = find_link(ipr, hif)
        if stray is not None:  # a host end that never made it into the namespace
            ipr.link("del", index=stray["index"])
        if root is None:
            if peer is not None:
                nsr.link("del", index=peer["index"])
            ipr.link("add", ifname=rif, kind="veth", peer={"ifname": hif, "net_ns_fd": ns})
            root, peer = find_link(ipr, rif), find_link(nsr, hif)
        # IPv6 off on both ends before they come up: no RS/ND/MLD, only the traffic we send.
        netns.write_sysctl(f"net.ipv6.conf.{rif}.disable_ipv6", "1")
        netns.write_sysctl(f"net.ipv6.conf.{hif}.disable_ipv6", "1", netns=ns)
        root_addr = _lab_addr(_addrs_v4(ipr, root["index"]))
        if root_addr is None:
            net = _free_subnet(ipr)
            root_addr = str(net.network_address + 1)
            ipr.addr("add", index=root["index"], address=root_addr, prefixlen=PREFIXLEN)
        host_addr = str(ipaddress.ip_address(root_addr) + 1)
        if host_addr not in [a for a, _ in _addrs_v4(nsr, peer["index"])]:
            nsr.addr("add", index=peer["index"], address=host_addr, prefixlen=PREFIXLEN)
        # Static neighbours both ways: no ARP on the wire, so the probe sees only our packets.
        ipr.neigh("replace", dst=host_addr, lladdr=peer.get("IFLA_ADDRESS"), ifindex=root["index"], state="permanent")
        nsr.neigh("replace", dst=root_addr, lladdr=root.get("IFLA_ADDRESS"), ifindex=peer["index"], state="permanent")
        ipr.link("set", index=root["index"], state="up")
        nsr.link("set", index=peer["index"], state="up")
        nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
        if not has_clsact(nsr, peer["index"]):
            nsr.tc("add", "clsact", peer["index"])
        return _describe(nsr, prefix, i, root_addr)


def _filter_names(nsr: IPRoute, index: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for hook, parent in HOOKS.items():
        for f in nsr.get_filters(index=index, parent=parent):
            name = f.get_nested("TCA_OPTIONS", "TCA_BPF_NAME")
            if name is not None:
                out.setdefault(hook, []).append(name)
    return out


def _describe(nsr: IPRoute | None, prefix: str, i: int, root_addr: str | None) -> LabHost:
    host = LabHost(name=names.ns_name(prefix, i), index=i, netns=names.ns_name(prefix, i),
                   root_if=names.root_ifname(prefix, i), host_if=names.host_ifname(prefix, i), root_addr=root_addr)
    if nsr is None:
        return host
    peer = find_link(nsr, host.host_if)
    if peer is not None:
        host.host_addr = _lab_addr(_addrs_v4(nsr, peer["index"]))
        host.qdisc = has_clsact(nsr, peer["index"])
        if host.qdisc:
            host.filters = _filter_names(nsr, peer["index"])
    return host


def lab_up(n_hosts: int, prefix: str = "mig", progress: Callable[[LabHost], None] | None = None) -> list[LabHost]:
    """Create (or repair) hosts 1..n_hosts of the lab `prefix`; return them in order."""
    names.check_prefix(prefix)
    names.check_hosts(n_hosts)
    names.require_root("up")
    hosts = []
    with _lab_lock(), IPRoute() as ipr:
        for i in range(1, n_hosts + 1):
            try:
                host = _up_host(ipr, prefix, i)
            except NetlinkError as exc:
                raise LabError(f"lab up: host {names.ns_name(prefix, i)}: {exc}; "
                               f"clean up with `migrator lab down --prefix {prefix}` and retry") from None
            hosts.append(host)
            if progress:
                progress(host)
    return hosts


def _found(ipr: IPRoute, prefix: str) -> tuple[set[int], dict[int, object]]:
    """Host numbers that have a namespace or a root-side link of this prefix."""
    nums = {n for n in (names.ns_index(prefix, ns) for ns in netns.list_netns()) if n is not None}
    links = {}
    for link in ipr.get_links():
        n = names.if_index(prefix, link.get("IFLA_IFNAME"))
        if n is not None and _kind(link) == "veth":
            nums.add(n)
            if link.get("IFLA_IFNAME").endswith("-h"):
                links[n] = link
    return nums, links


def lab_status(prefix: str = "mig") -> list[LabHost]:
    """Every host of the lab `prefix` as found now (read-only)."""
    names.check_prefix(prefix)
    names.require_root("status")
    out = []
    with IPRoute() as ipr:
        nums, links = _found(ipr, prefix)
        have_ns = set(netns.list_netns())
        for i in sorted(nums):
            root = links.get(i)
            root_addr = _lab_addr(_addrs_v4(ipr, root["index"])) if root is not None else None
            if names.ns_name(prefix, i) in have_ns and netns.is_mounted(names.ns_name(prefix, i)):
                with netns_route(names.ns_name(prefix, i)) as nsr:
                    out.append(_describe(nsr, prefix, i, root_addr))
            else:
                out.append(_describe(None, prefix, i, root_addr))
    return out


def get_host(name: str, prefix: str | None = None) -> LabHost:
    """The lab host called `name` (e.g. 'mig2'); prefix defaults to the name without its number."""
    if prefix is None:
        prefix = name.rstrip("0123456789") or name
    for host in lab_status(prefix):
        if host.name == name and host.host_addr and host.root_addr:
            return host
    raise LabHostNotFound(name, prefix)


def lab_down(prefix: str = "mig") -> dict[str, list[str]]:
    """Remove every qdisc, veth and namespace of the lab `prefix`, also leftovers of a crash."""
    names.check_prefix(prefix)
    names.require_root("down")
    removed: dict[str, list[str]] = {"qdiscs": [], "links": [], "netns": []}
    with _lab_lock(), IPRoute() as ipr:
        for ns in netns.list_netns():
            if names.ns_index(prefix, ns) is None:
                continue
            if not netns.is_mounted(ns):  # an unbound mount point: nothing inside to clean
                netns.remove(ns)
                removed["netns"].append(ns)
                continue
            with netns_route(ns) as nsr:
                for link in nsr.get_links():
                    ifname = link.get("IFLA_IFNAME")
                    if names.if_index(prefix, ifname) is None:
                        continue
                    if has_clsact(nsr, link["index"]):
                        nsr.tc("del", "clsact", link["index"])
                        removed["qdiscs"].append(f"{ns}/{ifname}")
                    nsr.link("del", index=link["index"])  # takes its root-side peer with it
                    removed["links"].append(f"{ns}/{ifname}")
            netns.remove(ns)
            removed["netns"].append(ns)
        # Root-side ends whose namespace is gone or whose peer never got there.
        for link in ipr.get_links():
            ifname = link.get("IFLA_IFNAME")
            if names.if_index(prefix, ifname) is not None and _kind(link) == "veth":
                try:
                    ipr.link("del", index=link["index"])
                    removed["links"].append(ifname)
                except NetlinkError as exc:
                    if exc.code != 19:  # ENODEV: went with its peer meanwhile
                        raise
    return removed


def attach_probe(host: LabHost, prog_fd: int, direction: str = "ingress", name: str = "tc_packet") -> None:
    """Attach a SCHED_CLS program on the lab host's interface, inside its namespace."""
    attach_tc(prog_fd, host.host_if, host.netns, direction, name)


def detach_probe(host: LabHost, direction: str | None = None) -> int:
    """Remove the lab host's BPF filters from one hook (None: both); returns how many."""
    return detach_tc(host.host_if, host.netns, direction)
