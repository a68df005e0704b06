"""``udp-blocked``: a firewall that masquerades TCP and drops all forwarded UDP."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

KIND = NatKind(
    name="udp-blocked",
    summary="UDP blocked both ways; TCP masqueraded (only TURN over TCP gets through)",
    built="masquerade, forwarded UDP dropped",
    model=NatBehaviour(
        "udp-blocked", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, block_udp=True
    ),
)
