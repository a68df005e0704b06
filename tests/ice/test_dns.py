"""natkit/ice/dns.py: SRV (RFC 5928/7064/7065) then A/AAAA, against a local DNS responder."""

from __future__ import annotations

import pytest

from natkit.ice.config import parse_ice_url
from natkit.ice.dns import ResolveError, resolve_url, srv_name

from ._dnsserver import dns_server

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize(("url", "name"), [
    ("stun:example.test", "_stun._udp.example.test"),
    ("stuns:example.test", "_stuns._tcp.example.test"),
    ("turn:example.test", "_turn._udp.example.test"),
    ("turn:example.test?transport=tcp", "_turn._tcp.example.test"),
    ("turns:example.test", "_turns._tcp.example.test"),
])
def test_srv_names(url: str, name: str) -> None:
    assert srv_name(parse_ice_url(url)) == name


async def test_srv_then_address_records() -> None:
    records = {
        ("_turn._udp.example.test", "SRV"): ["10 50 3479 relay2.example.test.",
                                             "5 10 3478 relay1.example.test."],
        ("relay1.example.test", "A"): ["127.0.0.1"],
        ("relay2.example.test", "A"): ["127.0.0.2"],
        ("relay2.example.test", "AAAA"): ["::1"],
    }
    with dns_server(records) as resolver:
        res = await resolve_url(parse_ice_url("turn:example.test"), resolver=resolver)
    assert res.how == "SRV"
    # priority 5 first, then priority 10 (A before AAAA)
    assert res.addresses == [("127.0.0.1", 3478), ("127.0.0.2", 3479), ("::1", 3479)]
    assert res.srv[0] == "_turn._udp.example.test -> relay1.example.test:3478"


async def test_port_in_url_skips_srv() -> None:
    records = {
        ("_stun._udp.example.test", "SRV"): ["0 0 9999 other.example.test."],
        ("example.test", "A"): ["127.0.0.1"],
    }
    with dns_server(records) as resolver:
        res = await resolve_url(parse_ice_url("stun:example.test:3478"), resolver=resolver)
        assert ("_stun._udp.example.test", "SRV") not in resolver.queries  # type: ignore[attr-defined]
    assert (res.how, res.addresses) == ("A/AAAA", [("127.0.0.1", 3478)])


async def test_no_srv_falls_back_to_default_port() -> None:
    with dns_server({("plain.example.test", "A"): ["127.0.0.1"]}) as resolver:
        res = await resolve_url(parse_ice_url("turns:plain.example.test"), resolver=resolver,
                                families=(4,))
    assert res.addresses == [("127.0.0.1", 5349)]


async def test_unknown_name_is_a_resolve_error() -> None:
    with dns_server({("known.example.test", "A"): ["127.0.0.1"]}) as resolver, \
            pytest.raises(ResolveError, match="does not resolve"):
        await resolve_url(parse_ice_url("stun:nothere.invalid:3478"), resolver=resolver,
                          timeout=2)


async def test_srv_target_without_address() -> None:
    records = {("_stun._udp.example.test", "SRV"): ["0 0 3478 ghost.example.test."],
               ("ghost.example.test", "TXT"): ['"x"']}
    with dns_server(records) as resolver, pytest.raises(ResolveError, match="no A/AAAA"):
        await resolve_url(parse_ice_url("stun:example.test"), resolver=resolver)


async def test_literals_and_localhost_need_no_dns() -> None:
    res = await resolve_url(parse_ice_url("stun:[::1]:3478"))
    assert (res.how, res.addresses) == ("IP literal", [("::1", 3478)])
    res = await resolve_url(parse_ice_url("turn:localhost?transport=tcp"), families=(4,))
    assert res.addresses == [("127.0.0.1", 3478)]
