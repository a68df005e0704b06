"""``open``: a router without NAT or firewall; the peer's address is public (routed)."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import NatBehaviour

KIND = NatKind(
    name="open",
    summary="no NAT: the router only forwards and the peer's address is public",
    built="forwarding only, no NAT",
    model=NatBehaviour("open", None, None),
)
