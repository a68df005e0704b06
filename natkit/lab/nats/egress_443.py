"""``egress-443``: an office firewall that lets out only TCP to ports 80 and 443.

Outbound UDP and TCP to any other port are dropped (both ways), replies to what was let out
pass, nothing comes in unsolicited; addresses are masqueraded. Only TURN over TLS on port 443
(``turns:``, the ``relay-tls`` path) gets a peer out.
"""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

KIND = NatKind(
    name="egress-443",
    summary="only outbound TCP to ports 80/443 passes (UDP and other TCP dropped); masquerade",
    built="masquerade; forward: replies, new TCP to 80/443 from inside, nothing else",
    model=NatBehaviour(
        "egress-443", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, block_udp=True,
        egress_tcp_ports=(80, 443),
    ),
)
