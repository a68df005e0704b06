"""natkit.lab.choose: --peer-caps declares what a user's peer supports, and the run follows."""

from __future__ import annotations

import pytest

from natkit.errors import ConfigError
from natkit.lab import stacks
from natkit.lab.choose import choose, peer_capabilities
from natkit.lab.topology import DEFAULT_TOPOLOGY, load

TRUE = "/bin/true"


@pytest.fixture(autouse=True)
def forget_peers() -> object:
    before = dict(stacks.STACKS)
    yield
    for name in set(stacks.STACKS) - set(before):
        del stacks.STACKS[name]
        stacks._cache.pop(name, None)


def test_peer_caps_must_name_a_peer_once() -> None:
    with pytest.raises(ConfigError, match="no --peer of that name"):
        peer_capabilities(["other=ipv6"], ["mine"])
    with pytest.raises(ConfigError, match="given twice"):
        peer_capabilities(["mine=ipv6", "mine=idle"], ["mine"])
    with pytest.raises(ConfigError, match="expected NAME=LIST"):
        peer_capabilities(["mine"], ["mine"])


def test_a_peer_declared_without_idle_has_no_longevity_cases_and_gets_derived_expectations() -> None:
    topo = load(DEFAULT_TOPOLOGY)
    plain = choose(topo, peers=[f"mine={TRUE}"], full=True, only=["longevity"])
    assert any("mine" in c.stacks for c in plain.cases)  # unknown: it is trusted to idle
    stacks.STACKS.pop("mine")
    stacks._cache.pop("mine")
    sel = choose(topo, peers=[f"mine={TRUE}"], peer_caps=["mine=relay-udp,relay-tcp,keepalive=5"], full=True)
    assert not any(c.path == "longevity" and "mine" in c.stacks for c in sel.cases)
    assert any(c.path == "longevity" for c in sel.cases)  # the reference's own stay
    caps = stacks.capabilities_of("mine")
    assert caps.known and caps.turn == ("udp", "tcp") and caps.ipv6 is False and caps.keepalive_s == 5.0
