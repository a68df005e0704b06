"""The shape of one NAT kind of the lab: what a module of :mod:`natkit.lab.nats` declares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from natkit.errors import ConfigError
from natkit.lab.nats.model import Mapping, NatBehaviour, PortAllocation
from natkit.lab.nats.nftables import RouterRecipe, RouterSide, rfc4787_recipe

__all__ = ["GENERIC_KNOBS", "REQUIREMENTS", "NatKind", "combined_probe", "port_pattern", "rfc4787_probe"]

# Topology keys every kind accepts besides name/type/wan/lan, and the model field each sets.
GENERIC_KNOBS: dict[str, str] = {"hairpin": "hairpinning", "udp_timeout_s": "udp_timeout"}


# What a kind may need from the host, and how to get it (checked before anything is built).
REQUIREMENTS: dict[str, str] = {
    "ipv6": "IPv6 in the kernel (net.ipv6.conf.all.disable_ipv6 = 0; boot without ipv6.disable=1)",
    "tayga": "tayga for stateful NAT64 (apt-get install tayga) and /dev/net/tun (modprobe tun)",
    "nft-prefix-nat": "nftables >= 1.0 with prefix NAT ('snat ip6 prefix to', kernel >= 5.4)",
}


def port_pattern(behaviour: NatBehaviour) -> str | None:
    """The ``port_allocation`` ``natkit probe`` must report behind ``behaviour`` (None: none)."""
    ports = behaviour.ports
    if ports is None:
        return None
    if ports == PortAllocation.PRESERVE:
        return "preserved"
    if ports == PortAllocation.SEQUENTIAL:
        return "sequential"
    if behaviour.mapping == Mapping.ENDPOINT_INDEPENDENT:
        return "changed"  # one mapping per socket: another port, but no pattern to see
    return "random"


def rfc4787_probe(behaviour: NatBehaviour) -> dict[str, object]:
    """What ``natkit probe`` from behind ``behaviour`` must report (its JSON vocabulary)."""
    if behaviour.block_udp:
        return {"nat_type": "udp-blocked"}
    if behaviour.mapping is None or behaviour.filtering is None:
        # No NAT and no firewall: anyone may send to the host, i.e. endpoint-independent.
        return {"mapping": "none", "filtering": "endpoint-independent"}
    out: dict[str, object] = {"mapping": behaviour.mapping.value, "filtering": behaviour.filtering.value,
                              "hairpinning": behaviour.hairpinning}
    pattern = port_pattern(behaviour)
    if pattern is not None:
        out["port_allocation"] = pattern
    return out


def combined_probe(behaviour: NatBehaviour) -> dict[str, object]:
    """Behind two NATs: the combined behaviour, and that there is more than one NAT."""
    return {**rfc4787_probe(behaviour.combined()), "nat_layers": 2}


@dataclass(frozen=True)
class NatKind:
    """One NAT/firewall behaviour the topology can name (``type = "<name>"``).

    * ``model``: its RFC 4787 behaviour with default knobs (what :mod:`natkit.lab.expect` reads);
    * ``recipe(behaviour, side)``: the sysctls and nftables ruleset that build it on a router
      (sans-IO; both engines apply the same text);
    * ``expected_probe(behaviour)``: what ``natkit probe`` behind it must report;
    * ``knobs``: the topology keys it accepts (a subset of :data:`GENERIC_KNOBS`);
    * ``requires``: what the host must have (keys of :data:`REQUIREMENTS`);
    * ``summary`` / ``built``: one line each for people (docs, ``--help``, reports).
    """

    name: str
    summary: str
    built: str
    model: NatBehaviour
    recipe: Callable[[NatBehaviour, RouterSide], RouterRecipe] = rfc4787_recipe
    expected_probe: Callable[[NatBehaviour], dict[str, object]] = rfc4787_probe
    knobs: tuple[str, ...] = tuple(GENERIC_KNOBS)
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.model.name != self.name:
            raise ValueError(f"NAT kind {self.name!r}: its model is named {self.model.name!r}")
        unknown = set(self.knobs) - set(GENERIC_KNOBS)
        if unknown:
            raise ValueError(f"NAT kind {self.name!r}: unknown knobs {sorted(unknown)}")
        if set(self.requires) - set(REQUIREMENTS):
            raise ValueError(f"NAT kind {self.name!r}: unknown requirements {sorted(set(self.requires) - set(REQUIREMENTS))}")

    def behaviour(self, **overrides: object) -> NatBehaviour:
        """The model with model fields replaced (``hairpinning=True``, ``udp_timeout=20``)."""
        return self.model.with_overrides(**overrides)

    def from_knobs(self, knobs: dict[str, object]) -> NatBehaviour:
        """The model with topology knobs applied (``{"hairpin": True}``); ConfigError on a knob
        this kind does not take."""
        bad = [k for k in knobs if k not in self.knobs]
        if bad:
            raise ConfigError(f"NAT type {self.name!r} takes no {', '.join(bad)}", param=bad[0])
        return self.behaviour(**{GENERIC_KNOBS[k]: v for k, v in knobs.items()})
