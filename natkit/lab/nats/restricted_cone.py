"""``restricted-cone``: endpoint-independent mapping, address-dependent filtering (EIM + ADF)."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

KIND = NatKind(
    name="restricted-cone",
    summary="endpoint-independent mapping + address-dependent filtering",
    built="as full-cone, DNAT only from remote IPs in the set 'mapped port . remote ip'",
    model=NatBehaviour("restricted-cone", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT),
)
