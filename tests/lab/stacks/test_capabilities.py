"""Every stack's ``capabilities`` is one :class:`Capabilities` shape, with what the
expectations read (natkit/lab/stack_expect.py) filled in for natkit's own stacks."""

from __future__ import annotations

import pytest

from natkit.lab import stacks
from natkit.lab.stacks.capabilities import Capabilities
from natkit.lab.stacks.command import CommandPeer

READ_BY_EXPECTATIONS = ("turn", "dtls_certificate", "dtls_client_suites", "turn_tls_ip_literal",
                        "redundant_srflx", "gives_up_without_candidates", "prflx", "tcp_candidates")


@pytest.mark.parametrize("name", stacks.names())
def test_every_builtin_stack_has_known_capabilities(name: str) -> None:
    caps = stacks.get(name).capabilities  # type: ignore[attr-defined]
    assert isinstance(caps, Capabilities) and caps.known
    for field in READ_BY_EXPECTATIONS:
        assert getattr(caps, field) is not None, (name, field)
    assert caps.sources, name
    data = caps.to_json()
    assert data["stack"] == caps.stack and isinstance(data["turn"], list)


def test_a_users_peer_is_unknown() -> None:
    peer = CommandPeer.from_spec("mine=true")
    assert isinstance(peer.capabilities, Capabilities) and not peer.capabilities.known


def test_declared_capabilities_are_complete_and_checked() -> None:
    from natkit.errors import ConfigError

    caps = Capabilities.declared("mine", "relay-tls, relay-udp,ice-tcp,ipv6,idle,keepalive=2.5,dtls=rsa")
    assert caps.turn == ("udp", "tls") and caps.turn_tls_ip_literal is True
    assert caps.tcp_candidates == ("active", "passive") and caps.ipv6 and caps.idle and caps.keepalive_s == 2.5
    assert caps.dtls_certificate == "rsa" and caps.known
    none = Capabilities.declared("mine", "none")
    assert none.known and none.turn == () and none.ipv6 is False and none.idle is False
    for bad, says in (("relay-quic", "not a capability"), ("keepalive=0", "0 < S"), ("keepalive=x", "0 < S"),
                      ("", "name what the peer supports"), ("none,ipv6", "stands alone"), ("dtls=dsa", "not a capability")):
        with pytest.raises(ConfigError, match=says):
            Capabilities.declared("mine", bad)


def test_expectations_follow_what_a_peer_declares() -> None:
    from natkit.lab.nats import NatBehaviour
    from natkit.lab.stack_expect import expect_stacks

    ref = stacks.capabilities_of("aiortc")
    blocked, open_ = NatBehaviour.preset("udp-blocked"), NatBehaviour.preset("open")
    udp_only = Capabilities.declared("mine", "relay-udp")
    e = expect_stacks(blocked, open_, "relay", stacks=("mine", "aiortc"), capabilities=(udp_only, ref))
    assert not e.connected and "needs TURN over TCP" in e.reason and "nothing is known" not in e.reason
    both = Capabilities.declared("mine", "relay-udp,relay-tcp")
    assert expect_stacks(blocked, open_, "relay", stacks=("mine", "aiortc"), capabilities=(both, ref)).connected
    fw = NatBehaviour.preset("ipv6-firewall")
    e = expect_stacks(fw, fw, "host", stacks=("mine", "aiortc"), capabilities=(both, ref), family="ipv6")
    assert not e.connected and "mine does not gather IPv6" in e.reason
    v6 = Capabilities.declared("mine", "relay-udp,ipv6")
    assert expect_stacks(fw, fw, "host", stacks=("mine", "aiortc"), capabilities=(v6, ref), family="ipv6").connected
