"""``nat64``: an IPv6-only LAN (global addresses behind RFC 6092's stateful firewall) whose
router does stateful NAT64 for 2001:db8:64::/96 (RFC 6146; a network-specific prefix, RFC 6052) and serves DNS64 (RFC 6147).

tayga translates each IPv6 host to an address of a private IPv4 pool; nftables masquerades the
pool behind the router's public IPv4 address (so the IPv4 side maps endpoint-independently and
filters by address and port, like ``port-restricted``). A lab resolver on the router answers
AAAA queries for the lab's IPv4-only names with addresses under that prefix, so a peer reaches the
IPv4 TURN server by name.
"""

from __future__ import annotations

from dataclasses import replace

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour
from natkit.lab.nats.nftables import (
    Nat64Plan,
    RouterRecipe,
    RouterSide,
    ipv6_ruleset,
    rfc4787_recipe,
)

FIREWALL = NatBehaviour("nat64", None, Filtering.ADDRESS_AND_PORT_DEPENDENT, udp_timeout=60)


def recipe(b: NatBehaviour, side: RouterSide) -> RouterRecipe:
    """IPv4: the RFC 4787 rules with tayga's tun device as the inside and its pool as the inside
    network; IPv6: the firewall on the LAN."""
    plan = Nat64Plan()
    v4 = rfc4787_recipe(replace(b, ipv6=None, nat64=False, ipv4=True), replace(side, inside_if=plan.tun, inside_net=plan.pool))
    assert b.ipv6 is not None
    nft = v4.nft + ipv6_ruleset(b.ipv6, side, b.udp_timeout)
    sysctls = {**v4.sysctls, "net.ipv6.conf.all.forwarding": "1"}
    return RouterRecipe(sysctls, nft, plan)


def nat64_probe(b: NatBehaviour) -> dict[str, object]:
    """The lab probes a NAT64 LAN over IPv6 (it has no IPv4): no NAT on that family (its
    firewall's filtering is not asserted: the RFC 5780 tests over IPv6 end undecided there)."""
    return {"mapping": "none"}


KIND = NatKind(
    name="nat64",
    summary="IPv6-only LAN behind a stateful firewall; stateful NAT64 (2001:db8:64::/96, tayga) + DNS64",
    built="tayga (IPv6 -> IPv4 pool) + masquerade of the pool; ip6 forward: replies only",
    model=NatBehaviour(
        "nat64", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, ipv6=FIREWALL, ipv4=False,
        nat64=True,
    ),
    recipe=recipe,
    expected_probe=nat64_probe,
    requires=("ipv6", "tayga"),
)
