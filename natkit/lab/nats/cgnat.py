"""``cgnat``: a subscriber's home NAT (port-restricted) behind a carrier-grade NAT.

The carrier NAT sits between the shared address space 100.64.0.0/10 (RFC 6598) and the
internet and behaves as RFC 6888 asks of a CGN: endpoint-independent mapping (REQ-1, via RFC
4787 REQ-1), hairpinning (RFC 4787 REQ-9), here with address-dependent filtering (RFC 4787
REQ-8's choice for a NAT that puts security first). Two subscribers of one carrier NAT (a
``[[same_lan]]`` entry of this type) each have their own home NAT and meet through the CGN's
hairpin. The knobs (``hairpin``, ``udp_timeout_s``) set the carrier NAT.
"""

from natkit.lab.nats.kind import NatKind, combined_probe
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

HOME = NatBehaviour("home-nat", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, udp_timeout=60)

KIND = NatKind(
    name="cgnat",
    summary="a port-restricted home NAT behind a carrier NAT (EIM, address-dependent filtering, hairpinning) on 100.64.0.0/10",
    built="two routers: masquerade on the home router; masquerade + ADF + hairpin on the carrier router",
    model=NatBehaviour(
        "cgnat", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, hairpinning=True,
        inner=HOME, inner_net="100.64.0.0/10",
    ),
    expected_probe=combined_probe,
)
