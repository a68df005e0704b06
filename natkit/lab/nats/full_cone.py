"""``full-cone``: endpoint-independent mapping and filtering (RFC 4787 EIM + EIF)."""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour

KIND = NatKind(
    name="full-cone",
    summary="endpoint-independent mapping + endpoint-independent filtering",
    built="masquerade + DNAT from a dynamic map 'mapped port -> inside ip . port'",
    model=NatBehaviour("full-cone", Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT),
)
