"""The expectation model (sans-IO): derived from NAT behaviours, it must agree with what is known."""

from __future__ import annotations

import itertools

import pytest

from natkit.lab import nats
from natkit.lab.expect import expect, expected_probe
from natkit.lab.nats import Filtering, Mapping, NatBehaviour, PortAllocation

PRESETS = {k.name: k.model for k in nats.kinds()}

pytestmark = pytest.mark.timeout(30)

UDP_TYPES = ["open", "full-cone", "restricted-cone", "port-restricted", "symmetric"]
ALL = [*UDP_TYPES, "udp-blocked"]
NEEDS_RELAY = {frozenset(["symmetric"]), frozenset(["symmetric", "port-restricted"])}


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations_with_replacement(UDP_TYPES, 2)))
def test_direct_works_except_symmetric_with_symmetric_or_port_restricted(a: str, b: str) -> None:
    e = expect(PRESETS[a], PRESETS[b], "srflx")
    assert e.connected == (frozenset([a, b]) not in NEEDS_RELAY), e.reason
    if e.connected:
        assert e.route == "direct"


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations_with_replacement(ALL, 2)))
def test_relay_works_for_every_pair(a: str, b: str) -> None:
    e = expect(PRESETS[a], PRESETS[b], "relay")
    assert e.connected and e.route == "relay"


@pytest.mark.parametrize(("a", "b"), list(itertools.product(ALL, repeat=2)))
def test_outcome_does_not_depend_on_who_calls(a: str, b: str) -> None:
    for path in ("host", "srflx", "relay"):
        assert expect(PRESETS[a], PRESETS[b], path).connected == expect(PRESETS[b], PRESETS[a], path).connected


def test_udp_blocked_has_no_direct_path_but_relays_over_tcp() -> None:
    for other in ALL:
        assert not expect(PRESETS["udp-blocked"], PRESETS[other], "srflx").connected
        assert not expect(PRESETS["udp-blocked"], PRESETS[other], "host").connected
    e = expect(PRESETS["udp-blocked"], PRESETS["full-cone"], "srflx")
    assert "no srflx candidate" in e.reason
    # Without TURN over TCP the firewall leaves nothing.
    e = expect(PRESETS["udp-blocked"], PRESETS["open"], "relay", turn_transports=("udp",))
    assert not e.connected and "TCP" in e.reason


@pytest.mark.parametrize("kind", ALL)
def test_same_lan_connects_over_host(kind: str) -> None:
    e = expect(PRESETS[kind], PRESETS[kind], "host", same_lan=True)
    assert e.connected and e.route == "lan"


def test_host_candidates_cross_nats_only_toward_a_host_without_nat() -> None:
    for a, b in itertools.combinations_with_replacement(ALL, 2):
        e = expect(PRESETS[a], PRESETS[b], "host")
        reachable = "open" in (a, b) and "udp-blocked" not in (a, b)
        assert e.connected == reachable, (a, b, e.reason)
    e = expect(PRESETS["full-cone"], PRESETS["symmetric"], "host")
    assert "private addresses" in e.reason


def test_srflx_on_one_lan_needs_hairpinning() -> None:
    on = NatBehaviour.preset("port-restricted", hairpinning=True)
    off = NatBehaviour.preset("port-restricted", hairpinning=False)
    e = expect(on, on, "srflx", same_lan=True)
    assert e.connected and e.route == "hairpin"
    e = expect(off, off, "srflx", same_lan=True)
    assert not e.connected and "hairpin" in e.reason


def test_peer_reflexive_learning_is_what_lets_symmetric_reach_a_cone() -> None:
    # The symmetric side's srflx candidate is useless (its mapping toward the peer differs and
    # filters); the connection exists only because the cone side learns the symmetric side's
    # real mapping from its check (prflx) and answers it.
    e = expect(PRESETS["symmetric"], PRESETS["restricted-cone"], "srflx")
    assert e.connected
    e = expect(PRESETS["symmetric"], PRESETS["port-restricted"], "srflx")
    assert not e.connected and "filters by address and port" in e.reason


def test_model_follows_the_behaviour_not_the_name() -> None:
    # Address-dependent mapping (no preset has it): its srflx mapping (toward the STUN server)
    # never sent to the peer, and its mapping toward the peer is not the one the peer was told;
    # a port-restricted peer drops that, a full-cone peer learns it as peer-reflexive.
    adm = NatBehaviour("adm", Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT)
    assert expect(adm, PRESETS["port-restricted"], "srflx").connected is False
    assert expect(adm, PRESETS["full-cone"], "srflx").connected is True
    # An EIM NAT that filters per endpoint but is renamed still hole-punches with a cone.
    renamed = NatBehaviour("whatever", Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT)
    assert expect(renamed, PRESETS["port-restricted"], "srflx").connected


def test_unknown_path_is_refused() -> None:
    with pytest.raises(ValueError):
        expect(PRESETS["open"], PRESETS["open"], "tcp")


def test_probe_expectations_use_the_probe_vocabulary() -> None:
    assert expected_probe(PRESETS["open"]) == {"mapping": "none", "filtering": "endpoint-independent"}
    assert expected_probe(PRESETS["restricted-cone"]) == {
        "mapping": "endpoint-independent",
        "filtering": "address-dependent",
        "hairpinning": False,
        "port_allocation": "preserved",
    }
    assert expected_probe(PRESETS["cgnat"])["nat_layers"] == 2
    assert expected_probe(PRESETS["symmetric-sequential"])["port_allocation"] == "sequential"


def test_new_behaviours_name_the_cause_and_the_fix() -> None:
    e = expect(PRESETS["port-restricted"], PRESETS["symmetric"], "srflx")
    assert not e.connected and e.reason.startswith("symmetric maps per destination") and "needs TURN" in e.reason
    e = expect(PRESETS["egress-443"], PRESETS["open"], "relay", turn_transports=("udp", "tcp"))
    assert not e.connected and "needs TURN/TLS on 443" in e.reason
    assert expect(PRESETS["egress-443"], PRESETS["open"], "relay-tls", turn_transports=("tls",)).connected
    # a relay path that also names a turns: URL on 443 gets out through it
    assert expect(PRESETS["egress-443"], PRESETS["open"], "relay", turn_transports=("udp", "tcp", "tls")).connected
    e = expect(PRESETS["nat64"], PRESETS["open"], "srflx", family="nat64")
    assert not e.connected and "needs IPv6 on both" in e.reason
    assert expect(PRESETS["nat64"], PRESETS["open"], "relay", family="nat64").connected
    short = NatBehaviour.preset("port-restricted", udp_timeout=20)
    assert expect(short, short, "longevity", keepalive_s=5).connected
    # The mappings expire, but a port-preserving NAT re-opens the same endpoints: the call recovers.
    e = expect(short, short, "longevity", keepalive_s=25)
    assert e.connected and "expire mid-call" in e.reason and "recovers" in e.reason
    # A NAT that gives every new mapping a new port loses the pair.
    fresh = NatBehaviour("random-eim", port_allocation=PortAllocation.RANDOM, udp_timeout=20)
    e = expect(short, fresh, "longevity", keepalive_s=25)
    assert not e.connected and "random-eim gives a new mapping a new port" in e.reason and "needs keepalive < 20 s" in e.reason
    # Two subscribers of one carrier NAT meet through its hairpin; two home NATs without one don't.
    e = expect(PRESETS["cgnat"], PRESETS["cgnat"], "srflx", same_lan=True)
    assert e.connected and e.route == "hairpin"
    assert expect(PRESETS["ipv6-firewall"], PRESETS["nptv6"], "host", family="ipv6").connected is False
    assert expect(PRESETS["ipv6-firewall"], PRESETS["ipv6-firewall"], "host", family="ipv6").connected
    assert expected_probe(PRESETS["udp-blocked"]) == {"nat_type": "udp-blocked"}
