"""Server URL parsing and resolution (SRV first, then A/AAAA; no network: DNS is faked)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from natkit.errors import UsageError
from natkit.nat import servers as srv
from natkit.nat.servers import ResolvedServer, ServerSpec, default_servers, parse_server, resolve


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "stun:stun.example.org",
            ServerSpec("stun:stun.example.org", "stun", "stun.example.org", None),
        ),
        (
            "stun:stun.example.org:19302",
            ServerSpec("stun:stun.example.org:19302", "stun", "stun.example.org", 19302),
        ),
        (
            "STUNS:stun.example.org",
            ServerSpec("STUNS:stun.example.org", "stuns", "stun.example.org", None),
        ),
        ("203.0.113.10:3478", ServerSpec("203.0.113.10:3478", "stun", "203.0.113.10", 3478)),
        ("203.0.113.10", ServerSpec("203.0.113.10", "stun", "203.0.113.10", None)),
        (
            "stun:[2001:db8::1]:3478",
            ServerSpec("stun:[2001:db8::1]:3478", "stun", "2001:db8::1", 3478),
        ),
        ("2001:db8::1", ServerSpec("2001:db8::1", "stun", "2001:db8::1", None)),
    ],
)
def test_parse(text: str, expected: ServerSpec) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("turn:turn.example.org", "TURN URL"),
        ("stun:host:0", "bad port"),
        ("stun:host:70000", "bad port"),
        ("stun:host:abc", "bad port"),
        ("stun:[2001:db8::1", "missing ']'"),
        ("stun:[nope]:3478", "not an IPv6"),
        ("stun:host?transport=udp", "no query"),
        ("http://example.org", "no '//'"),
        ("stun:", "no host"),
    ],
)
def test_parse_errors_are_one_line_usage_errors(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_server(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@dataclass
class _Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass
class _A:
    address: str


async def test_resolve_srv_first_then_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []
    table: dict[tuple[str, str], list[Any]] = {
        ("_stun._udp.example.org", "SRV"): [
            _Srv(20, 0, 3479, "b.example.org."),
            _Srv(10, 5, 3478, "a.example.org."),
        ],
        ("a.example.org", "A"): [_A("203.0.113.10")],
        ("a.example.org", "AAAA"): [_A("2001:db8::10")],
        ("b.example.org", "A"): [_A("203.0.113.11")],
    }

    async def fake_dns(name: str, rdtype: str, lifetime: float, resolver: Any = None) -> list[Any]:
        asked.append((name, rdtype))
        return table.get((name, rdtype), [])

    monkeypatch.setattr(srv, "_dns", fake_dns)
    out = await resolve(parse_server("stun:example.org"), {4, 6})
    assert [r.address for r in out] == [
        ("203.0.113.10", 3478),
        ("2001:db8::10", 3478),
        ("203.0.113.11", 3479),
    ]
    assert asked[0] == ("_stun._udp.example.org", "SRV")
    assert all(r.hostname == "example.org" for r in out)
    # IPv4 only; and a port given means no SRV lookup.
    asked.clear()
    out = await resolve(parse_server("stun:a.example.org:5000"), {4})
    assert out == [
        ResolvedServer("stun:a.example.org:5000", "stun", "a.example.org", ("203.0.113.10", 5000))
    ]
    assert ("_stun._udp.a.example.org", "SRV") not in asked
    # stuns: looks up _stuns._tcp and defaults to 5349.
    asked.clear()
    out = await resolve(parse_server("stuns:a.example.org"), {4})
    assert asked[0] == ("_stuns._tcp.a.example.org", "SRV")
    assert out[0].address == ("203.0.113.10", 5349)


async def test_resolve_literal_and_system_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_dns(name: str, rdtype: str, lifetime: float, resolver: Any = None) -> list[Any]:
        return []

    monkeypatch.setattr(srv, "_dns", no_dns)
    assert [r.address for r in await resolve(parse_server("127.0.0.1"), {4})] == [
        ("127.0.0.1", 3478)
    ]
    assert await resolve(parse_server("127.0.0.1"), {6}) == []
    # localhost is in /etc/hosts, which dnspython does not read.
    out = await resolve(parse_server("localhost:3478"), {4})
    assert ("127.0.0.1", 3478) in [r.address for r in out]


async def test_unresolvable_name_is_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import socket

    async def no_dns(name: str, rdtype: str, lifetime: float, resolver: Any = None) -> list[Any]:
        return []

    async def no_system(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(srv, "_dns", no_dns)
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_system)
    assert await resolve(parse_server("stun:nowhere.example"), {4, 6}) == []


def test_default_servers_file(tmp_path: Path) -> None:
    servers = default_servers()
    assert servers and all(s.startswith("stun:") for s in servers)
    for s in servers:
        parse_server(s)
    bad = tmp_path / "s.toml"
    bad.write_text("servers = 3\n")
    with pytest.raises(UsageError, match="list"):
        default_servers(bad)
