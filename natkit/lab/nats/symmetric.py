"""``symmetric``: address-and-port-dependent mapping and filtering (APDM + APDF)."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

KIND = NatKind(
    name="symmetric",
    summary="address-and-port-dependent mapping + address-and-port-dependent filtering",
    built="masquerade fully-random: a new random public port per destination",
    model=NatBehaviour("symmetric", Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT),
)
