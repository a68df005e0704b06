"""The lab's NATs: one module per NAT/firewall behaviour, each registered here by name.

A module declares one :class:`~natkit.lab.nats.kind.NatKind` named ``KIND``: its RFC 4787
model (:class:`~natkit.lab.nats.model.NatBehaviour`, what the expectation engine reads), its
nftables recipe (sans-IO data, :mod:`natkit.lab.nats.nftables`) and what a probe behind it must
see. Adding a NAT is adding a module and its name to :data:`MODULES` (or calling
:func:`register` with a kind built elsewhere, e.g. in a test).

==================  =====================  ======================  ================================
name                mapping                filtering               how it is built
==================  =====================  ======================  ================================
open                none (routed)          none                    forwarding only, no NAT
full-cone           endpoint-independent   endpoint-independent    masquerade + DNAT from a dynamic
                                                                   map ``mapped port -> inside
                                                                   ip . port``
restricted-cone     endpoint-independent   address-dependent       same, DNAT only from remote IPs
                                                                   in the set ``mapped port .
                                                                   remote ip``
port-restricted     endpoint-independent   address-and-port-dep.   plain masquerade (conntrack)
symmetric           address-and-port-dep.  address-and-port-dep.   ``masquerade fully-random``
udp-blocked         endpoint-independent   address-and-port-dep.   masquerade, forwarded UDP dropped
cgnat               EIM (home) + EIM (CGN) APDF (home), ADF (CGN)  two routers, CGN on 100.64.0.0/10,
                                                                   hairpinning
double-nat          EIM + EIM              APDF (inner), EIF       two home routers, no hairpinning
egress-443          endpoint-independent   address-and-port-dep.   only outbound TCP to 80/443 passes
eim-no-preserve     EIM, port = hash       address-and-port-dep.   snat port jhash(inside ip.port)
symmetric-sequ...   APDM, ports +1         address-and-port-dep.   snat port numgen inc
ipv6-firewall       IPv4 EIM; IPv6 none    APDF both               RFC 6092 firewall on global IPv6
nptv6               IPv4 EIM; IPv6 prefix  APDF both               snat/dnat ip6 prefix + firewall
nat64               IPv6-only; NAT64 EIM   APDF                    tayga + masquerade, DNS64
==================  =====================  ======================  ================================
"""

from __future__ import annotations

import importlib

from natkit.lab.nats.kind import (
    GENERIC_KNOBS,
    REQUIREMENTS,
    NatKind,
    combined_probe,
    port_pattern,
    rfc4787_probe,
)
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour, PortAllocation
from natkit.lab.nats.nftables import (
    Nat64Plan,
    RouterRecipe,
    RouterSide,
    rfc4787_recipe,
    router_sysctls,
)
from natkit.lab.nats.registry import get, kinds, lookup, names, register, unregister

__all__ = [
    "GENERIC_KNOBS",
    "MODULES",
    "REQUIREMENTS",
    "Filtering",
    "Mapping",
    "Nat64Plan",
    "NatBehaviour",
    "NatKind",
    "PortAllocation",
    "RouterRecipe",
    "RouterSide",
    "combined_probe",
    "expected_probe",
    "get",
    "kinds",
    "lookup",
    "names",
    "port_pattern",
    "recipe",
    "register",
    "rfc4787_probe",
    "rfc4787_recipe",
    "router_sysctls",
    "unregister",
]

# The modules of this package that each hold one NAT kind, in the order reports list them.
MODULES = (
    "open", "full_cone", "restricted_cone", "port_restricted", "symmetric", "udp_blocked",
    "cgnat", "double_nat", "egress_443", "eim_no_preserve", "sequential", "ipv6_firewall", "nptv6", "nat64",
)


def recipe(behaviour: NatBehaviour, side: RouterSide) -> RouterRecipe:
    """The recipe of ``behaviour``'s kind (a behaviour of no registered kind, ``custom``, gets
    the recipe derived from its model)."""
    kind = lookup(behaviour.name)
    return (kind.recipe if kind is not None else rfc4787_recipe)(behaviour, side)


def expected_probe(behaviour: NatBehaviour) -> dict[str, object]:
    """What ``natkit probe`` behind ``behaviour`` must report (its kind decides)."""
    kind = lookup(behaviour.name)
    return (kind.expected_probe if kind is not None else rfc4787_probe)(behaviour)


for _module in MODULES:
    register(importlib.import_module(f"{__name__}.{_module}").KIND)
