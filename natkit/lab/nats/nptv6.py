"""``nptv6``: IPv6 prefix translation: the LAN's ULA prefix (fd00::/8) is rewritten to a
global prefix on the way out (the interface identifier and the ports stay: endpoint-
independent), behind RFC 6092's stateful firewall; IPv4 behind a port-restricted NAT."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

NPT = NatBehaviour("nptv6", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, udp_timeout=60)

KIND = NatKind(
    name="nptv6",
    summary="IPv6 prefix translation (ULA -> global, nftables 'snat ip6 prefix to') + stateful firewall; IPv4 port-restricted",
    built="ip6: snat/dnat ip6 prefix, forward replies only; ip: masquerade",
    model=NatBehaviour(
        "nptv6", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, ipv6=NPT,
    ),
    requires=("ipv6", "nft-prefix-nat"),
)
