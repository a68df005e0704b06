"""``double-nat``: a home NAT behind another home NAT, neither hairpinning.

libwebrtc's NAT_DOUBLE_CONE (two cascaded cone NATs) in kernel parts: the inner router is a
port-restricted masquerade NAT whose WAN is a private LAN (192.168.0.0/16) of the outer one, a
full-cone NAT. What a host sees is the stricter of the two: endpoint-independent mapping,
address-and-port-dependent filtering.
"""

from natkit.lab.nats.kind import NatKind, combined_probe
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

INNER = NatBehaviour("inner-nat", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, udp_timeout=60)

KIND = NatKind(
    name="double-nat",
    summary="a port-restricted home NAT behind a full-cone home NAT, no hairpinning on either",
    built="two routers: masquerade on the inner one, full-cone (masquerade + DNAT map) on the outer one",
    model=NatBehaviour(
        "double-nat", Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, inner=INNER,
        inner_net="192.168.0.0/16",
    ),
    expected_probe=combined_probe,
)
