"""Enter a network namespace from the calling thread (setns), for what netlink cannot do.

pyroute2 0.9 opens a namespaced netlink socket in a forked child and hands the socket back
(SCM_RIGHTS), so requests are sent from this process and fds in them (a BPF program fd) are
ours. /proc/sys/net, however, shows the namespace of the thread that opens it: sysctls inside
a namespace need the thread itself to be there for a moment.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import netns as _netns

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(name: str | None):
    """Run the body with this thread in namespace `name` (None: stay); always come back."""
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_RUN_DIR / name, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def list_netns() -> list[str]:
    """Names of the named network namespaces (/var/run/netns), sorted."""
    return sorted(_netns.listnetns())


def is_mounted(name: str) -> bool:
    """True if /var/run/netns/<name> is a bound namespace, not a file a crash left unbound."""
    try:
        return os.stat(NETNS_RUN_DIR / name).st_dev == os.stat("/proc/self/ns/net").st_dev
    except FileNotFoundError:
        return False


def create(name: str) -> None:
    """Create a named network namespace, first clearing a mount point a crash left unbound."""
    if (NETNS_RUN_DIR / name).exists() and not is_mounted(name):
        remove(name)  # a crash between creating the mount point and binding it
    _netns.create(name)


def remove(name: str) -> None:
    """Delete a named network namespace."""
    _netns.remove(name)


def write_sysctl(key: str, value: str, netns: str | None = None) -> None:
    """sysctl -w key=value (dots are separators, so interface names may contain '-')."""
    path = Path("/proc/sys") / key.replace(".", "/")
    with entered(netns):
        path.write_text(value)


def read_sysctl(key: str, netns: str | None = None) -> str:
    """sysctl key (dots are separators), read inside namespace `netns` when given."""
    path = Path("/proc/sys") / key.replace(".", "/")
    with entered(netns):
        return path.read_text().strip()
