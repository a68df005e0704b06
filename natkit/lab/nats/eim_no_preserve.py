"""``eim-no-preserve``: endpoint-independent mapping without port preservation.

Every destination sees the same public port for an inside endpoint (EIM), but it is not the
inside port: it is a hash of the inside address and port (RFC 4787 §4.2.1 allows either).
Filtering is conntrack's, address-and-port-dependent.
"""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour, PortAllocation

KIND = NatKind(
    name="eim-no-preserve",
    summary="endpoint-independent mapping to a port other than the inside one + address-and-port-dependent filtering",
    built="snat to the public address, port = jhash(inside ip . inside port)",
    model=NatBehaviour(
        "eim-no-preserve", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT,
        port_allocation=PortAllocation.HASH,
    ),
)
