"""Peer policy: canonicalisation of embedded IPv4 addresses, special-purpose ranges, lists."""

from __future__ import annotations

import pytest

from natkit.errors import ConfigError
from natkit.turn.policy import (
    DefaultPeerPolicy,
    OwnAddresses,
    PeerAddressError,
    PeerPolicy,
    canonical_peer,
    reason_label,
)

# Special-purpose addresses a relay must refuse by default, several encodings each.
SPECIAL = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "172.16.5.4",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "169.254.169.254",
    "169.254.0.1",
    "224.0.0.1",
    "239.255.255.250",
    "192.0.2.10",
    "198.51.100.1",
    "203.0.113.7",
    "198.18.0.1",
    "198.19.255.255",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "100::1",
    "2001:2::1",
    "64:ff9b:1::1",
    # not (yet) in netaddr's registries: RFC 9637 documentation, RFC 3879 deprecated site-local
    "3fff::1",
    "3fff:fff:ffff::1",
    "fec0::1",
    "feff:ffff::1",
    # IPv4 inside IPv6
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::ffff:7f00:1",
    "::127.0.0.1",
    "::10.0.0.1",
    "::169.254.169.254",
    "64:ff9b::127.0.0.1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::10.1.1.1",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::1",
    "2002:c0a8:101::1",
    "::ffff:0:127.0.0.1",
    "::ffff:0:a00:1",
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1"]


@pytest.mark.parametrize("ip", SPECIAL)
def test_special_purpose_refused_by_default(ip: str) -> None:
    assert not DefaultPeerPolicy().permits(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_allowed_by_default(ip: str) -> None:
    assert DefaultPeerPolicy().permits(ip)


def test_embedded_public_ipv4_is_judged_by_ipv4() -> None:
    assert str(canonical_peer("::ffff:8.8.8.8")) == "8.8.8.8"
    assert str(canonical_peer("64:ff9b::808:808")) == "8.8.8.8"
    assert str(canonical_peer("2002:808:808::1")) == "8.8.8.8"
    assert str(canonical_peer("::8.8.8.8")) == "8.8.8.8"
    assert str(canonical_peer("2606:4700::1")) == "2606:4700::1"
    assert DefaultPeerPolicy().permits("64:ff9b::808:808")


def test_allow_opens_exactly_what_is_listed() -> None:
    policy = DefaultPeerPolicy(allow=["10.1.0.0/16", "127.0.0.1"])
    assert policy.permits("10.1.2.3")
    assert policy.permits("::ffff:10.1.2.3")  # the same host, IPv4-mapped
    assert not policy.permits("10.2.0.1")
    assert policy.permits("127.0.0.1") and not policy.permits("127.0.0.2")
    assert not policy.permits("169.254.169.254")


def test_deny_adds_ranges_and_wins_over_allow() -> None:
    policy = DefaultPeerPolicy(allow=["10.0.0.0/8"], deny=["10.9.9.9/32", "8.8.8.0/24"])
    assert policy.permits("10.1.1.1")
    assert not policy.permits("10.9.9.9")
    assert not policy.permits("::ffff:10.9.9.9")
    assert not policy.permits("8.8.8.8") and not policy.permits("64:ff9b::808:808")
    assert policy.permits("8.8.4.4")
    assert policy.describe() == {"allow": ["10.0.0.0/8"], "deny": ["8.8.8.0/24", "10.9.9.9/32"]}


def test_garbage_is_refused_and_bad_cidrs_raise() -> None:
    assert not DefaultPeerPolicy().permits("not-an-ip")
    assert not DefaultPeerPolicy().permits("")
    with pytest.raises(ConfigError, match=r"10\.0\.0\.0/40") as err:
        DefaultPeerPolicy(allow=["10.0.0.0/40"])
    assert err.value.param == "allow"
    with pytest.raises(ConfigError) as err:
        DefaultPeerPolicy(deny=["nonsense"])
    assert err.value.param == "deny"
    with pytest.raises(PeerAddressError):
        canonical_peer("x")


def test_cache_is_bounded() -> None:
    policy = DefaultPeerPolicy()
    for i in range(5000):
        policy.permits(f"8.{i // 256}.{i % 256}.1")
    assert len(policy._cache) <= 4096


def test_refuse_gives_the_reason_and_satisfies_the_protocol() -> None:
    policy = DefaultPeerPolicy(allow=["10.1.0.0/16"], deny=["8.8.8.0/24"])
    assert isinstance(policy, PeerPolicy)
    assert policy.refuse(("10.1.2.3", 9)) is None
    assert policy.refuse(("8.8.8.8", 9)) == "in the deny list"
    assert policy.refuse(("127.0.0.1", 9)) == "special-purpose range"
    assert policy.refuse(("nonsense", 9)) == "not an IP address"


def test_rfc9637_and_site_local_edges() -> None:
    policy = DefaultPeerPolicy()
    assert policy.permits("3fff:1000::1")  # just past 3fff::/20
    assert policy.permits("2a00::1")
    assert not policy.permits("fec0::") and not policy.permits("3fff::")


def test_own_addresses_any_port_all_families_and_what_an_allow_reopens() -> None:
    own = OwnAddresses(["192.0.2.5", "2001:db8::5"], listen_ports=[(4, 3478), (6, 3478)])
    for peer in (
        ("192.0.2.5", 1),
        ("192.0.2.5", 3478),
        ("::ffff:192.0.2.5", 9),
        ("64:ff9b::c000:205", 9),
        ("2001:db8::5", 80),
        ("0.0.0.0", 3478),
        ("::", 1),
    ):
        assert own.refuse(peer) is not None, peer
    assert own.refuse(("192.0.2.6", 1)) is None
    assert own.refuse(("192.0.2.5", 3478)) == "the relay's own listener"
    # an explicit allow reopens other ports of an own IP, never the listener or a live relay
    reopened = OwnAddresses(
        ["192.0.2.5"],
        listen_ports=[(4, 3478)],
        relay_ports=(50000, 50100),
        reopened=["192.0.2.0/24"],
    )
    assert reopened.refuse(("192.0.2.5", 9)) is None
    assert reopened.refuse(("192.0.2.5", 3478)) == "the relay's own listener"
    assert reopened.refuse(("192.0.2.5", 50050)) == "the relay's own relay port range"
    assert (
        reopened.refuse(("192.0.2.5", 9), {("192.0.2.5", 9)}) == "the relay's own relayed address"
    )
    assert reopened.refuse(("::ffff:192.0.2.5", 9), {("192.0.2.5", 9)}) is not None
    reopened.add("203.0.113.9")  # an IP learnt later (a relay's advertised address)
    assert reopened.refuse(("203.0.113.9", 1)) == "the relay's own address"
    assert {reason_label(own.refuse(p) or "") for p in (("192.0.2.5", 1), ("192.0.2.5", 3478))} == {
        "own_address",
        "own_listener",
    }
    assert reason_label("my own words") == "policy"


@pytest.mark.parametrize("relay_to_relay", [True, False])
def test_other_workers_relay_shares_are_peers_only_with_relay_to_relay(
    relay_to_relay: bool,
) -> None:
    """--workers: another worker's share of the relay ports on a relay IP is a peer (reached
    over the network) with relay_to_relay, refused without; this worker's own share outside
    its live relays, the listener and other own IPs stay refused; sibling_relay says which
    sources the engine drops."""
    own = OwnAddresses(
        ["192.0.2.5", "192.0.2.9"],
        listen_ports=[(4, 3478)],
        relay_ports=(50000, 50049),
        relay_to_relay=relay_to_relay,
        sibling_ports=[(50050, 50099)],
        sibling_ips=["192.0.2.5"],
    )
    sibling = own.refuse(("192.0.2.5", 50060))
    assert sibling is None if relay_to_relay else sibling == "the relay's own relay port range"
    assert own.refuse(("::ffff:192.0.2.5", 50060)) == sibling
    assert own.refuse(("192.0.2.5", 50010)) == "the relay's own relay port range"
    assert own.refuse(("192.0.2.5", 3478)) == "the relay's own listener"
    assert own.refuse(("192.0.2.9", 50060)) == "the relay's own address"  # not a relay IP
    assert own.sibling_relay(("192.0.2.5", 50099)) and own.sibling_relay(("::ffff:192.0.2.5", 50050))
    assert not own.sibling_relay(("192.0.2.5", 50100))
    assert not own.sibling_relay(("192.0.2.9", 50060))
    assert not own.sibling_relay(("nonsense", 50060))
    assert not OwnAddresses(["192.0.2.5"]).sibling_relay(("192.0.2.5", 50060))
