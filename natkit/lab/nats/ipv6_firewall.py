"""``ipv6-firewall``: a dual-stack LAN: global IPv6 addresses behind RFC 6092's stateful
firewall (no NAT, only replies admitted: address-and-port-dependent filtering), IPv4 behind a
port-restricted NAT."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

FIREWALL = NatBehaviour("ipv6-firewall", None, Filtering.ADDRESS_AND_PORT_DEPENDENT, udp_timeout=60)

KIND = NatKind(
    name="ipv6-firewall",
    summary="global IPv6 behind a stateful firewall (RFC 6092: replies only) + IPv4 port-restricted NAT",
    built="ip6 forward: established/related accept, inbound drop; ip: masquerade",
    model=NatBehaviour(
        "ipv6-firewall", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, ipv6=FIREWALL,
    ),
    requires=("ipv6",),
)
