"""Expectations that depend on the stacks: derived from the adapters' capabilities, each with a
reason that names the stack and why; and the NATs' model left alone where stacks do not matter."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from natkit.lab import nats
from natkit.lab.expect import expect
from natkit.lab.stack_expect import after_ice, expect_stacks, side_of
from natkit.lab.stacks.capabilities import AIORTC, CHROMIUM, FIREFOX, LIBNICE, PION, Capabilities

pytestmark = pytest.mark.timeout(30)

NAT = {k.name: k.model for k in nats.kinds()}
CAPS = {"aiortc": AIORTC, "chromium": CHROMIUM, "firefox": FIREFOX, "libnice": LIBNICE, "pion": PION}
KINDS = ["open", "full-cone", "restricted-cone", "port-restricted", "symmetric", "udp-blocked"]


def run(a: str, b: str, path: str, nat_a: str, nat_b: str, **kw: object) -> object:
    return expect_stacks(NAT[nat_a], NAT[nat_b], path, stacks=(a, b), capabilities=(CAPS[a], CAPS[b]), **kw)  # type: ignore[arg-type]


def test_libnice_offering_to_aiortc_fails_dtls_with_the_reason() -> None:
    e = run("libnice", "aiortc", "srflx", "full-cone", "full-cone")
    assert not e.connected and e.decided_by == "stacks"  # type: ignore[attr-defined]
    assert "RSA certificate" in e.reason and "ECDSA" in e.reason and "no shared cipher" in e.reason  # type: ignore[attr-defined]
    # the other way round, aiortc is the DTLS server with ECDSA, which webrtcbin's client takes
    assert run("aiortc", "libnice", "srflx", "full-cone", "full-cone").connected  # type: ignore[attr-defined]
    assert after_ice(("pion", "libnice"), PION, LIBNICE) is None


def test_dtls_only_matters_once_ice_connects() -> None:
    e = run("libnice", "aiortc", "srflx", "symmetric", "symmetric")
    assert not e.connected and "DTLS" not in e.reason and e.decided_by == "nats"  # type: ignore[attr-defined]


def test_a_stack_that_drops_its_redundant_srflx_candidate_behind_no_nat() -> None:
    # libnice behind no NAT signals nothing on the srflx path: a peer behind a filtering NAT
    # never opens its mapping towards it ...
    e = run("pion", "libnice", "srflx", "port-restricted", "open")
    assert not e.connected and "libnice" in e.reason and "RFC 8445" in e.reason  # type: ignore[attr-defined]
    assert e.decided_by == "stacks"  # type: ignore[attr-defined]
    # ... but one behind an endpoint-independent filter is reached by libnice's checks and
    # learns it as peer-reflexive
    assert run("pion", "libnice", "srflx", "full-cone", "open").connected  # type: ignore[attr-defined]
    # aiortc keeps the candidate: the NATs' answer
    assert run("pion", "aiortc", "srflx", "port-restricted", "open").connected  # type: ignore[attr-defined]


def test_aiortc_answering_an_offer_without_candidates_gives_up() -> None:
    e = run("firefox", "aiortc", "srflx", "open", "full-cone")
    assert not e.connected and "aiortc gives up" in e.reason and "Firefox" not in e.reason  # type: ignore[attr-defined]
    assert "firefox" in e.reason  # type: ignore[attr-defined]
    # as the offerer it does not (the answerer's checks come with its answer)
    assert run("aiortc", "firefox", "srflx", "full-cone", "open").connected  # type: ignore[attr-defined]


def test_turn_over_tls_to_an_ip_address_is_not_for_firefox() -> None:
    fx = side_of("firefox", FIREFOX, "caller")
    assert fx.turn is not None and "tls" not in fx.turn and "tcp" in fx.turn
    assert "tls" in (side_of("firefox", FIREFOX, "caller", turn_is_ip=False).turn or ())
    e = run("firefox", "chromium", "relay", "open", "open", turn_transports=("tls",))
    assert not e.connected and "firefox allocates over none" in e.reason  # type: ignore[attr-defined]
    assert run("chromium", "pion", "relay", "open", "open", turn_transports=("tls",)).connected  # type: ignore[attr-defined]


def test_libnice_has_no_turn_over_tls() -> None:
    e = run("libnice", "pion", "relay-tls", "open", "open", turn_transports=("tls",))
    assert not e.connected and "libnice allocates over none" in e.reason  # type: ignore[attr-defined]
    e = run("pion", "libnice", "relay-tls", "open", "open", turn_transports=("tls",))
    assert not e.connected and "libnice" in e.reason  # type: ignore[attr-defined]


def test_a_stack_without_turn_over_tcp_behind_a_udp_blocking_firewall() -> None:
    udp_only = replace(AIORTC, stack="udp-only", turn=("udp",), gives_up_without_candidates=())
    e = expect_stacks(NAT["udp-blocked"], NAT["open"], "relay", stacks=("mine", "aiortc"), capabilities=(udp_only, AIORTC))
    assert not e.connected and "drops UDP and TURN over TCP is not offered" in e.reason
    assert e.decided_by == "nats"  # the firewall's doing, given what the stack can use


def test_unknown_capabilities_get_the_nats_answer_and_say_so() -> None:
    mine = Capabilities.unknown("mine")
    for a, b in itertools.product(KINDS, repeat=2):
        e = expect_stacks(NAT[a], NAT[b], "srflx", stacks=("mine", "aiortc"), capabilities=(mine, AIORTC))
        plain = expect(NAT[a], NAT[b], "srflx")
        assert e.connected == plain.connected and "nothing is known of mine" in e.reason


@pytest.mark.parametrize(("a", "b"), list(itertools.product(KINDS, repeat=2)))
def test_aiortc_with_itself_and_pion_are_the_nats_answer(a: str, b: str) -> None:
    for path in ("host", "srflx", "relay"):
        plain = expect(NAT[a], NAT[b], path)
        for pair in (("aiortc", "aiortc"), ("pion", "pion"), ("pion", "aiortc"), ("chromium", "pion")):
            e = run(*pair, path, a, b)
            assert (e.connected, e.route, e.reason) == (plain.connected, plain.route, plain.reason), (pair, path)  # type: ignore[attr-defined]


def test_firefox_gets_its_turns_url_by_name_and_is_expected_to_relay_over_tls() -> None:
    """nICEr drops a turns: URL with an IP address: the lab names the TURN server for it
    (turn.lab.natkit, on the certificate) and gives it the zone's names; then it allocates."""
    from natkit.lab.orchestrate import expectation_of, side_config, tls_by_name
    from natkit.lab.topology import LAB_ZONE, Case, load

    assert tls_by_name(FIREFOX) and not any(tls_by_name(c) for c in (AIORTC, CHROMIUM, LIBNICE, PION))
    topo = load()
    srv = topo.servers
    assert srv.ice_servers("relay-tls", tls_name=True)[0]["urls"] == [f"turns:turn.{LAB_ZONE}:443?transport=tcp"]
    assert srv.ice_servers("relay-tls")[0]["urls"] == [f"turns:{srv.turn_address}:443?transport=tcp"]
    assert srv.ice_servers("relay", tls_name=True) == srv.ice_servers("relay")  # only turns: is named
    case = Case(("open", "egress-443"), "relay-tls", stacks=("firefox", "aiortc"))
    plan = topo.plan([case])
    (ra, pa), _ = plan.peers_of(case)
    cfg = side_config(topo, case, ra, pa, 10.0, "PEM", 0.0, tls_name=True)
    assert cfg.hosts[f"turn.{LAB_ZONE}"] == srv.turn_address and "turn.lab.natkit" in cfg.ice_servers[0]["urls"][0]
    assert type(cfg).from_json(cfg.to_json()).hosts == cfg.hosts
    for stacks in (("firefox", "aiortc"), ("aiortc", "firefox"), ("firefox", "firefox")):
        e = expectation_of(topo, plan, Case(("open", "egress-443"), "relay-tls", stacks=stacks))
        assert e.connected and e.route == "relay", (stacks, e.reason)
    # libnice has no TURN over TLS whatever the URL says
    e = expectation_of(topo, plan, Case(("open", "egress-443"), "relay-tls", stacks=("firefox", "libnice")))
    assert not e.connected and "libnice" in e.reason


# Who dials whom over ICE-TCP on the host path (RFC 6544), as natkit's runs showed it
# (`natkit lab run --stacks chromium,libnice,firefox --full --only host --only udp-blocked,open`):
# the side behind udp-blocked dials a passive TCP host candidate behind open, and only libnice
# listens on one.
ICE_TCP = {("chromium", "libnice"), ("firefox", "libnice"), ("libnice", "libnice")}


@pytest.mark.parametrize(("a", "b"), list(itertools.product(CAPS, repeat=2)))
def test_ice_tcp_connects_a_dialer_behind_udp_blocked_to_a_listener_behind_open(a: str, b: str) -> None:
    for caller, callee, dialer, listener in (("udp-blocked", "open", a, b), ("open", "udp-blocked", b, a)):
        e = run(a, b, "host", caller, callee)
        if (dialer, listener) in ICE_TCP:
            assert e.connected and e.route == "direct" and e.decided_by == "stacks", e  # type: ignore[attr-defined]
            assert e.reason.startswith(f"connects over ICE-TCP (RFC 6544): {dialer} dials {listener}'s passive TCP")  # type: ignore[attr-defined]
            assert "over UDP alone it fails: udp-blocked drops UDP" in e.reason  # type: ignore[attr-defined]
        else:
            assert not e.connected, e  # type: ignore[attr-defined]
            if "libnice" in (a, b):  # the pair has a listener: the reason says what is missing
                assert "ICE-TCP would get through" in e.reason and e.decided_by == "stacks", e  # type: ignore[attr-defined]
    # over srflx and relay no host candidate is signaled, TCP or not
    assert run(a, b, "srflx", "udp-blocked", "open").reason == expect(NAT["udp-blocked"], NAT["open"], "srflx").reason  # type: ignore[attr-defined]


def test_ice_tcp_needs_a_listener_without_nat_and_a_dialer_whose_firewall_lets_tcp_out() -> None:
    for caller, callee in (("udp-blocked", "udp-blocked"), ("udp-blocked", "full-cone"), ("udp-blocked", "symmetric")):
        e = run("chromium", "libnice", "host", caller, callee)
        assert not e.connected and "ICE-TCP" not in e.reason, (caller, callee, e)  # type: ignore[attr-defined]
    # egress-443 lets TCP out to 80 and 443 only, never to a listener's port
    e = run("chromium", "libnice", "host", "egress-443", "open")
    assert not e.connected and "ICE-TCP" not in e.reason, e  # type: ignore[attr-defined]
    # over UDP the open listener is reachable already: UDP, not TCP, decides
    e = run("chromium", "libnice", "host", "symmetric", "open")
    assert e.connected and "ICE-TCP" not in e.reason  # type: ignore[attr-defined]


def test_ice_tcp_of_a_declared_peer_and_none_of_an_unknown_one() -> None:
    mine = Capabilities.declared("mine", "ice-tcp")
    e = expect_stacks(NAT["udp-blocked"], NAT["open"], "host", stacks=("mine", "mine"), capabilities=(mine, mine))
    assert e.connected and "mine dials mine's passive TCP host candidate" in e.reason
    unknown = Capabilities.unknown("mine")
    e = expect_stacks(NAT["udp-blocked"], NAT["open"], "host", stacks=("mine", "libnice"), capabilities=(unknown, LIBNICE))
    assert not e.connected and "ICE-TCP" not in e.reason and "nothing is known of mine" in e.reason
