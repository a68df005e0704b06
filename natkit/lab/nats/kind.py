"""The shape of one NAT kind of the lab: what a module of :mod:`natkit.lab.nats` declares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from natkit.errors import ConfigError
from natkit.lab.nats.model import NatBehaviour
from natkit.lab.nats.nftables import RouterRecipe, RouterSide, rfc4787_recipe

__all__ = ["GENERIC_KNOBS", "NatKind", "rfc4787_probe"]

# Topology keys every kind accepts besides name/type/wan/lan, and the model field each sets.
GENERIC_KNOBS: dict[str, str] = {"hairpin": "hairpinning", "udp_timeout_s": "udp_timeout"}


def rfc4787_probe(behaviour: NatBehaviour) -> dict[str, str]:
    """What ``natkit probe`` from behind ``behaviour`` must report (its JSON vocabulary)."""
    if behaviour.block_udp:
        return {"nat_type": "udp-blocked"}
    if behaviour.mapping is None or behaviour.filtering is None:
        # No NAT and no firewall: anyone may send to the host, i.e. endpoint-independent.
        return {"mapping": "none", "filtering": "endpoint-independent"}
    return {"mapping": behaviour.mapping.value, "filtering": behaviour.filtering.value}


@dataclass(frozen=True)
class NatKind:
    """One NAT/firewall behaviour the topology can name (``type = "<name>"``).

    * ``model``: its RFC 4787 behaviour with default knobs (what :mod:`natkit.lab.expect` reads);
    * ``recipe(behaviour, side)``: the sysctls and nftables ruleset that build it on a router
      (sans-IO; both engines apply the same text);
    * ``expected_probe(behaviour)``: what ``natkit probe`` behind it must report;
    * ``knobs``: the topology keys it accepts (a subset of :data:`GENERIC_KNOBS`);
    * ``summary`` / ``built``: one line each for people (docs, ``--help``, reports).
    """

    name: str
    summary: str
    built: str
    model: NatBehaviour
    recipe: Callable[[NatBehaviour, RouterSide], RouterRecipe] = rfc4787_recipe
    expected_probe: Callable[[NatBehaviour], dict[str, str]] = rfc4787_probe
    knobs: tuple[str, ...] = tuple(GENERIC_KNOBS)

    def __post_init__(self) -> None:
        if self.model.name != self.name:
            raise ValueError(f"NAT kind {self.name!r}: its model is named {self.model.name!r}")
        unknown = set(self.knobs) - set(GENERIC_KNOBS)
        if unknown:
            raise ValueError(f"NAT kind {self.name!r}: unknown knobs {sorted(unknown)}")

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
