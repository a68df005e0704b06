"""The registry of NAT kinds: one module per kind, looked up by the topology's `type`."""

from __future__ import annotations

import dataclasses

import pytest

from natkit.errors import ConfigError
from natkit.lab import nats
from natkit.lab.nats import Filtering, Mapping, NatBehaviour, NatKind, RouterSide
from natkit.lab.topology import loads
from tests.lab.topologies import small_topology

SIDE = RouterSide("lan", "wan", "203.0.113.1", "10.0.0.0/24")


def test_each_module_registers_one_kind_in_order() -> None:
    assert nats.names() == ("open", "full-cone", "restricted-cone", "port-restricted", "symmetric", "udp-blocked",
                            "cgnat", "double-nat", "egress-443", "eim-no-preserve", "symmetric-sequential",
                            "ipv6-firewall", "nptv6", "nat64")
    renamed = {"sequential": "symmetric-sequential"}
    for module, kind in zip(nats.MODULES, nats.kinds(), strict=True):
        assert kind.name == renamed.get(module, module.replace("_", "-")) and kind.model.name == kind.name
        assert kind.summary and kind.built
        assert nats.get(kind.name) is kind


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown NAT type 'cone'; choose one of: open, full-cone"):
        nats.get("cone")


def test_a_kind_registered_elsewhere_is_usable_in_a_topology_with_its_own_recipe() -> None:
    # What adding a NAT takes: a kind with a model and (here) a recipe of its own.
    def recipe(b: NatBehaviour, side: RouterSide) -> nats.RouterRecipe:
        base = nats.rfc4787_recipe(b, side)
        return nats.RouterRecipe({**base.sysctls, "net.ipv4.ip_default_ttl": "32"}, base.nft)

    kind = NatKind(
        name="test-cone", summary="a test", built="as full-cone",
        model=NatBehaviour("test-cone", Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT),
        recipe=recipe, knobs=("udp_timeout_s",),
    )
    nats.register(kind)
    try:
        with pytest.raises(ValueError, match="already registered"):
            nats.register(dataclasses.replace(kind, summary="another"))
        topo = loads(small_topology("test-cone"))
        b = topo.nat("test-cone").behaviour
        assert b.name == "test-cone" and b.udp_timeout == 60
        assert nats.recipe(b, SIDE).sysctls["net.ipv4.ip_default_ttl"] == "32"
        assert nats.expected_probe(b) == {"mapping": "endpoint-independent", "filtering": "endpoint-independent",
                                          "hairpinning": False, "port_allocation": "preserved"}
        # the kind takes no hairpin knob: the topology says so with the key's path
        with pytest.raises(ConfigError, match=r"nat\[0\].hairpin': NAT type 'test-cone' takes no hairpin"):
            loads(small_topology("test-cone") + "hairpin = true\n")
    finally:
        nats.unregister("test-cone")


def test_a_kind_and_its_model_agree() -> None:
    with pytest.raises(ValueError, match="model is named"):
        NatKind("x", "s", "b", NatBehaviour("y"))
    with pytest.raises(ValueError, match="unknown knobs"):
        NatKind("x", "s", "b", NatBehaviour("x"), knobs=("colour",))
