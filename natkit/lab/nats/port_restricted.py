"""``port-restricted``: endpoint-independent mapping, address-and-port-dependent filtering."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

KIND = NatKind(
    name="port-restricted",
    summary="endpoint-independent mapping + address-and-port-dependent filtering",
    built="plain masquerade (conntrack)",
    model=NatBehaviour("port-restricted", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT),
)
