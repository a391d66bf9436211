"""Lab naming: every lab object is found again from its name, so names are the only state."""
from __future__ import annotations

import os
import re

from migrator.errors import LabConfigError, LabPermissionError
from migrator.shared.vocab import LAB_PREFIX_RULE, is_lab_prefix

IFNAMSIZ = 15  # kernel limit on interface names, without the NUL
MAX_HOSTS = 64


def check_prefix(prefix: str) -> str:
    """Refuse prefixes that could match non-lab names or overflow an interface name."""
    if not is_lab_prefix(prefix):
        raise LabConfigError("prefix", prefix, f"use {LAB_PREFIX_RULE}")
    return prefix


def check_hosts(n_hosts: int) -> int:
    """Refuse a lab size outside 1..MAX_HOSTS before anything is created."""
    if not isinstance(n_hosts, int) or not 1 <= n_hosts <= MAX_HOSTS:
        raise LabConfigError("hosts", n_hosts, f"choose 1 to {MAX_HOSTS} hosts")
    return n_hosts


def require_root(action: str) -> None:
    """Refuse a lab `action` with a clear error unless running as root."""
    if os.geteuid() != 0:
        raise LabPermissionError(action)


def ns_name(prefix: str, i: int) -> str:
    """Name of lab host i and of its network namespace (mig3)."""
    return f"{prefix}{i}"


def root_ifname(prefix: str, i: int) -> str:
    """Root-namespace end of lab host i's veth pair (mig3-h)."""
    return f"{prefix}{i}-h"


def host_ifname(prefix: str, i: int) -> str:
    """Lab host i's own end of its veth pair, inside its namespace, where the probe attaches (mig3-n)."""
    return f"{prefix}{i}-n"


def ns_index(prefix: str, name: str) -> int | None:
    """Host number of a namespace name of this prefix (mig3 -> 3), else None."""
    m = re.fullmatch(re.escape(prefix) + r"([1-9][0-9]*)", name)
    return int(m.group(1)) if m else None


def if_index(prefix: str, ifname: str) -> int | None:
    """Host number of a lab interface name of this prefix (mig3-h, mig3-n -> 3), else None."""
    m = re.fullmatch(re.escape(prefix) + r"([1-9][0-9]*)-[hn]", ifname)
    return int(m.group(1)) if m else None
