"""The NAT model and recipes under their earlier names (``natkit.lab.nat``).

The NATs live in :mod:`natkit.lab.nats` (one module per kind); this module keeps the names that
code outside the lab imports (``natkit.bench.probe``, the probe tests): :data:`PRESETS`,
:func:`nat_ruleset`, :func:`router_sysctls` and the model types.
"""

from __future__ import annotations

from collections.abc import Mapping as _Mapping

from natkit.lab.nats import RouterSide, kinds, recipe, router_sysctls
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

__all__ = ["PRESETS", "Filtering", "Mapping", "NatBehaviour", "nat_ruleset", "router_sysctls"]

# The textbook kinds: one router, IPv4 only (what a probe topology of one NAT can build).
PRESETS: _Mapping[str, NatBehaviour] = {
    k.name: k.model for k in kinds()
    if k.model.inner is None and k.model.ipv6 is None and k.model.egress_tcp_ports is None and k.model.port_allocation is None
}


def nat_ruleset(
    behaviour: NatBehaviour, *, inside_if: str, outside_if: str, public_ip: str, inside_net: str, table: str = "natkit"
) -> str:
    """The ``nft -f`` text of ``behaviour``'s recipe for a router with these interfaces."""
    return recipe(behaviour, RouterSide(inside_if, outside_if, public_ip, inside_net, table)).nft
