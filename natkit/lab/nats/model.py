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

__all__ = ["Filtering", "Mapping", "NatBehaviour", "PortAllocation"]


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


class PortAllocation(StrEnum):
    """Which public port a new mapping gets (RFC 4787 §4.2.1, and the patterns probes see)."""

    PRESERVE = "preserve"  # the inside port when it is free (Linux masquerade)
    HASH = "hash"  # a port derived from the mapping's key: stable, not the inside port
    RANDOM = "random"  # a port drawn at random per mapping
    SEQUENTIAL = "sequential"  # the next port of a counter per mapping


@dataclass(frozen=True)
class NatBehaviour:
    """What a router does to traffic between its inside and outside networks.

    ``name`` is the NAT kind it came from (a name of :mod:`natkit.lab.nats`, or ``custom``).
    ``mapping``/``filtering`` are ``None`` for a router without NAT (``open``). ``block_udp``
    drops forwarded UDP both ways (a firewall that passes TCP only). ``random_ports`` only
    matters for address-and-port-dependent mapping: ``True`` draws each port at random
    (``fully-random``), ``False`` derives it from a hash of the 5-tuple (repeatable).

    The fields past ``random_ports`` describe what the textbook set does not have:

    * ``port_allocation``: how a mapping's public port is chosen (None: what the mapping
      implies: inside port kept for endpoint-independent, ``random_ports`` for APDM);
    * ``inner``: a second NAT between the peers and this one (a subscriber's home NAT behind a
      carrier NAT, a home NAT behind another); ``inner_net`` is the network between the two
      (``100.64.0.0/10`` for a carrier NAT, RFC 6598);
    * ``egress_tcp_ports``: only outbound TCP to these ports passes (with ``block_udp``: an
      office firewall that lets out only web traffic);
    * ``ipv6``: how the router treats IPv6 (None: the LAN has none): a behaviour whose
      ``mapping`` is None for a routed prefix behind a stateful firewall (``filtering``), or
      endpoint-independent for prefix translation (NPTv6);
    * ``ipv4``: False for an IPv6-only LAN; with ``nat64`` its router translates IPv6 packets
      to the lab's NAT64 prefix into IPv4 (stateful NAT64, mapping and filtering as the IPv4 fields
      say) and serves DNS64, so IPv4-only servers are reached by name.
    """

    name: str = "custom"
    mapping: Mapping | None = Mapping.ENDPOINT_INDEPENDENT
    filtering: Filtering | None = Filtering.ADDRESS_AND_PORT_DEPENDENT
    hairpinning: bool = False
    udp_timeout: int = 30
    block_udp: bool = False
    random_ports: bool = True
    port_allocation: PortAllocation | None = None
    inner: NatBehaviour | None = None
    inner_net: str = "192.168.0.0/16"
    egress_tcp_ports: tuple[int, ...] | None = None
    ipv6: NatBehaviour | None = None
    ipv4: bool = True
    nat64: bool = False

    def __post_init__(self) -> None:
        if self.mapping is not None and self.filtering is None:
            raise ConfigError(f"NAT {self.name!r}: mapping and filtering must both be set or both be none")
        if self.inner is not None and (self.mapping is None or self.inner.inner is not None):
            raise ConfigError(f"NAT {self.name!r}: an inner NAT needs an outer NAT, and only one level")
        if self.nat64 and (self.ipv4 or self.ipv6 is None or self.mapping is None):
            raise ConfigError(f"NAT {self.name!r}: NAT64 needs an IPv6-only LAN (ipv4 = false, ipv6 set) and a mapping")
        if not isinstance(self.udp_timeout, int) or not 1 <= self.udp_timeout <= 86400:
            raise ConfigError(
                f"NAT {self.name!r}: udp_timeout {self.udp_timeout} s is out of range; give 1..86400 seconds",
                param="udp_timeout",
            )

    @property
    def nat(self) -> bool:
        """Whether the router translates addresses at all."""
        return self.mapping is not None

    @property
    def ports(self) -> PortAllocation | None:
        """How this NAT allocates public ports (None without NAT)."""
        if self.mapping is None:
            return None
        if self.port_allocation is not None:
            return self.port_allocation
        if self.mapping == Mapping.ENDPOINT_INDEPENDENT:
            return PortAllocation.PRESERVE
        if self.mapping == Mapping.ADDRESS_AND_PORT_DEPENDENT and self.random_ports:
            return PortAllocation.RANDOM
        return PortAllocation.HASH

    @property
    def families(self) -> tuple[int, ...]:
        """The address families the LAN has natively (4, 6)."""
        return tuple(f for f, on in ((4, self.ipv4), (6, self.ipv6 is not None)) if on)

    def combined(self) -> NatBehaviour:
        """The behaviour a host behind both stages sees (the stricter of each, as a probe
        measures it): mapping and filtering of the stricter NAT, hairpinning of neither
        the outer NAT's hairpinning (a hairpinned packet's reply passes the inner NAT, which just sent to that address), the shorter timeout, ports preserved only if both preserve."""
        if self.inner is None:
            return self
        a, b = self.inner, self
        order = list(Mapping)
        forder = list(Filtering)
        assert a.mapping is not None and b.mapping is not None and a.filtering and b.filtering
        mapping = max(a.mapping, b.mapping, key=order.index)
        filtering = max(a.filtering, b.filtering, key=forder.index)
        ports = a.ports if a.ports != PortAllocation.PRESERVE else b.ports
        return replace(
            self, mapping=mapping, filtering=filtering, hairpinning=b.hairpinning,
            udp_timeout=min(a.udp_timeout, b.udp_timeout), block_udp=a.block_udp or b.block_udp,
            port_allocation=ports, inner=None,
        )

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
