"""What the host must have for a topology's NAT kinds, checked before anything is built.

Each kind names its needs (:attr:`natkit.lab.nats.NatKind.requires`, keys of
:data:`natkit.lab.nats.REQUIREMENTS`); :func:`check_kinds` looks for each on this host and stops
with one line naming the NAT, the missing piece and what to install (PrerequisiteError: exit
status 2).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from natkit.errors import PrerequisiteError
from natkit.lab import nats
from natkit.lab.topology import Topology

__all__ = ["check_kinds", "missing"]


def missing(need: str) -> bool:
    """Whether requirement ``need`` is missing on this host."""
    if need == "ipv6":
        flag = Path("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        return not flag.exists() or flag.read_text().strip() == "1"
    if need == "tayga":
        return (shutil.which("tayga") is None and not Path("/usr/sbin/tayga").exists()) or not Path("/dev/net/tun").exists()
    if need == "nft-prefix-nat":
        return shutil.which("nft") is None  # nftables >= 1.0 is the lab's baseline; nft -c checks the rest
    return False


def check_kinds(topo: Topology) -> None:
    """PrerequisiteError for the first NAT of ``topo`` whose kind needs what the host lacks."""
    for spec in topo.nats:
        kind = nats.lookup(spec.type)
        for need in kind.requires if kind is not None else ():
            if missing(need):
                raise PrerequisiteError(f"NAT {spec.name!r} ({spec.type}) needs {nats.REQUIREMENTS[need]}; "
                                        "install it or remove that NAT from the topology")
