"""``symmetric-sequential``: a symmetric NAT that allocates ports in sequence.

A new mapping per destination (address-and-port-dependent), its port the next of a counter
(40960, 40961, ...): the NAT behind port prediction schemes. ICE stacks do not predict
ports, so to them it is as symmetric as one with random ports.
"""

from natkit.lab.nats.kind import NatKind
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour, PortAllocation

KIND = NatKind(
    name="symmetric-sequential",
    summary="address-and-port-dependent mapping with sequentially allocated ports + APDF",
    built="snat to the public address, port = 40960 + a counter per new mapping",
    model=NatBehaviour(
        "symmetric-sequential", Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT,
        random_ports=False, port_allocation=PortAllocation.SEQUENTIAL,
    ),
)
