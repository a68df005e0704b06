"""The RFC 4787 model of a NAT or firewall: what the expectation engine and the probes read.

A :class:`NatBehaviour` says how a router maps (§4.1) and filters (§5), whether it hairpins
(§6), how long a UDP mapping lives (§4.3) and whether it drops UDP altogether (a firewall that
passes only TCP). It is plain data: the nftables recipe of each NAT kind
(:mod:`natkit.lab.nats.nftables`) is derived from it, and :mod:`natkit.lab.expect` plays ICE
over it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import StrEnum

from natkit.errors import ConfigError

__all__ = ["Filtering", "Mapping", "NatBehaviour"]


class Mapping(StrEnum):
    """How a NAT chooses the public ``ip:port`` for an inside ``ip:port`` (RFC 4787 §4.1)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(StrEnum):
    """Which inbound packets a NAT lets through to a mapping (RFC 4787 §5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True)
class NatBehaviour:
    """What a router does to traffic between its inside and outside networks.

    ``name`` is the NAT kind it came from (a name of :mod:`natkit.lab.nats`, or ``custom``).
    ``mapping``/``filtering`` are ``None`` for a router without NAT (``open``). ``block_udp``
    drops forwarded UDP both ways (a firewall that passes TCP only). ``random_ports`` only
    matters for address-and-port-dependent mapping: ``True`` draws each port at random
    (``fully-random``), ``False`` derives it from a hash of the 5-tuple (repeatable).
    """

    name: str = "custom"
    mapping: Mapping | None = Mapping.ENDPOINT_INDEPENDENT
    filtering: Filtering | None = Filtering.ADDRESS_AND_PORT_DEPENDENT
    hairpinning: bool = False
    udp_timeout: int = 30
    block_udp: bool = False
    random_ports: bool = True

    def __post_init__(self) -> None:
        if (self.mapping is None) != (self.filtering is None):
            raise ConfigError(f"NAT {self.name!r}: mapping and filtering must both be set or both be none")
        if not isinstance(self.udp_timeout, int) or not 1 <= self.udp_timeout <= 86400:
            raise ConfigError(
                f"NAT {self.name!r}: udp_timeout {self.udp_timeout} s is out of range; give 1..86400 seconds",
                param="udp_timeout",
            )

    @property
    def nat(self) -> bool:
        """Whether the router translates addresses at all."""
        return self.mapping is not None

    @classmethod
    def preset(cls, name: str, **overrides: object) -> NatBehaviour:
        """The model of the registered NAT kind ``name`` with fields replaced by ``overrides``."""
        from natkit.lab.nats.registry import get

        return get(name).behaviour(**overrides)

    def with_overrides(self, **overrides: object) -> NatBehaviour:
        """A copy with fields replaced; a ConfigError names any unknown field."""
        bad = set(overrides) - {f.name for f in fields(self)}
        if bad:
            raise ConfigError(f"NAT {self.name!r}: unknown setting(s) {', '.join(sorted(bad))}")
        return replace(self, **overrides)  # type: ignore[arg-type]
