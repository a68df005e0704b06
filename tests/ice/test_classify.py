"""natkit/ice/classify.py: address scopes and priority arithmetic."""

from __future__ import annotations

import pytest

from natkit.ice.classify import (
    address_scope,
    decode_priority,
    encode_priority,
    ip_version,
    relay_protocol_from_priority,
)


@pytest.mark.parametrize(("address", "scope"), [
    ("8.8.8.8", "public"),
    ("2a00:1450:4001:80b::200e", "public"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.32.0.1", "public"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("169.254.10.10", "link-local"),
    ("fe80::1", "link-local"),
    ("fd00::2", "ula"),
    ("224.0.0.251", "multicast"),
    ("ff02::fb", "multicast"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.5", "documentation"),
    ("2001:db8::1", "documentation"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("::ffff:10.0.0.1", "ipv4-mapped"),
    ("240.0.0.1", "reserved"),
    ("4f1c3b2a-1111-2222-3333-444455556666.local", "mdns"),
    ("turn.example.com", "hostname"),
])
def test_scopes(address: str, scope: str) -> None:
    assert address_scope(address) == scope


def test_ip_version() -> None:
    assert ip_version("10.0.0.1") == 4
    assert ip_version("fd00::2") == 6
    assert ip_version("x.local") is None


def test_priority_round_trip() -> None:
    p = encode_priority(126, 65535, 1)
    assert p == 2130706431
    parts = decode_priority(p)
    assert (parts.type_preference, parts.local_preference, parts.component) == (126, 65535, 1)
    assert decode_priority(encode_priority(0, 12, 2)).component == 2


def test_relay_protocol_guess() -> None:
    assert relay_protocol_from_priority(encode_priority(2, 1, 1)) == "udp"
    assert relay_protocol_from_priority(encode_priority(1, 1, 1)) == "tcp"
    assert relay_protocol_from_priority(encode_priority(0, 1, 1)) == "tls"
    assert relay_protocol_from_priority(encode_priority(5, 1, 1)) is None
