"""natkit check against natkit's own servers (natkit.TurnServer, natkit.StunServer) on
loopback: healthy, wrong credential, open relay, REST credentials, TLS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from natkit.ice.check import check

from ._coturn import self_signed

pytestmark = pytest.mark.timeout(60)

server_turn = pytest.importorskip("natkit.server.turn")
server_stun = pytest.importorskip("natkit.server.stun")

LOOPBACK = ["127.0.0.0/8"]


async def test_healthy_config_against_natkit_turn_and_stun() -> None:
    async with server_turn.TurnServer(
        ["127.0.0.1:0"], users={"alice": "secret"}, relay_ip="127.0.0.1", allow_peers=LOOPBACK,
    ) as turn, server_stun.StunServer(["127.0.0.1:0"]) as stun:
        udp = stun.addresses[0][1]
        config = {"iceServers": [
            {"urls": [f"stun:127.0.0.1:{udp[1]}"]},
            {"urls": turn.urls + turn.stun_urls, "username": "alice", "credential": "secret"},
        ]}
        start = time.monotonic()
        report = await check(config, timeout=3)
        elapsed = time.monotonic() - start
    assert report.ok, report.as_dict()
    assert elapsed <= 2.0
    turn_results = [s for s in report.servers if s.scheme == "turn"]
    assert {s.protocol for s in turn_results} == {"udp", "tcp"}
    for result in turn_results:
        assert [c.name for c in result.checks][-3:] == ["permission", "relay-echo", "channel"]


async def test_wrong_password_and_open_relay() -> None:
    async with server_turn.TurnServer(
        ["127.0.0.1:0"], users={"alice": "secret"}, relay_ip="127.0.0.1", allow_peers=LOOPBACK,
    ) as turn, server_turn.TurnServer(
        ["127.0.0.1:0"], no_auth=True, relay_ip="127.0.0.1", allow_peers=LOOPBACK,
    ) as open_turn:
        report = await check([
            {"urls": turn.urls[0], "username": "alice", "credential": "wrong"},
            {"urls": open_turn.urls[0], "username": "x", "credential": "y"},
        ], timeout=3)
    wrong, opened = report.servers
    assert [(c.name, c.code) for c in wrong.checks if not c.ok] == [("allocate", 401)]
    assert wrong.hint and "wrong username or password" in wrong.hint
    assert [c.name for c in opened.checks if not c.ok] == ["auth-challenge"]
    assert opened.hint and opened.hint.startswith("open relay")


async def test_rest_credentials_against_natkit_turn() -> None:
    from natkit.turn.auth import rest_credentials

    async with server_turn.TurnServer(
        ["127.0.0.1:0"], auth_secrets=["topsecret"], relay_ip="127.0.0.1", allow_peers=LOOPBACK,
    ) as turn:
        good = rest_credentials("topsecret", 3600, time.time(), "alice")
        old = rest_credentials("topsecret", 60, time.time() - 3600, "bob")
        report = await check([
            {"urls": turn.urls[0], "username": good[0], "credential": good[1]},
            {"urls": turn.urls[0], "username": old[0], "credential": old[1]},
        ], timeout=3)
    ok, expired = report.servers
    assert ok.ok, ok.as_dict()
    assert not expired.ok
    assert expired.hint and "REST credential expired" in expired.hint


async def test_turns_self_signed_against_natkit_turn(tmp_path: Path) -> None:
    cert, key = self_signed(str(tmp_path), "localhost", "127.0.0.1")
    async with server_turn.TurnServer(
        ["127.0.0.1:0"], users={"alice": "secret"}, relay_ip="127.0.0.1", allow_peers=LOOPBACK,
        tls_cert=cert, tls_key=key, tls_port=0,
    ) as turn:
        turns = [u for u in turn.urls if u.startswith("turns:")]
        assert turns
        config = [{"urls": turns, "username": "alice", "credential": "secret"}]
        strict = await check(config, timeout=3)
        loose = await check(config, timeout=3, insecure=True)
    assert [c.name for c in strict.servers[0].checks if not c.ok] == ["tls"]
    assert loose.ok, loose.as_dict()


async def test_ipv6_loopback_against_natkit_turn() -> None:
    async with server_turn.TurnServer(
        ["[::1]:0"], users={"alice": "secret"}, relay_ip="::1", allow_peers=["::1/128"],
    ) as turn:
        report = await check([{"urls": turn.urls, "username": "alice", "credential": "secret"}],
                             timeout=3)
    assert report.ok, report.as_dict()
    assert all(s.address == "::1" for s in report.servers)
    assert all(s.relayed_address and s.relayed_address.startswith("[::1]:")
               for s in report.servers)
