"""The Prometheus endpoints of the TURN relay and the STUN responder, scraped: refused peers
by reason, dropped connections by reason, rate-limited responses, TLS failures by kind."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import pytest

import natkit
from natkit.server.coturn import free_port
from natkit.server.turn import TurnServer
from natkit.stun import Attr, Message, Method
from tests._certs import ec_self_signed

pytestmark = pytest.mark.timeout(60)


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    return await asyncio.to_thread(get)


async def test_turn_metrics_for_every_brake(tmp_path: Path) -> None:
    from tests.server.test_turn_server import RawClient

    cert, key, _ = ec_self_signed(tmp_path)
    port = free_port()
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, metrics=("127.0.0.1", port), tls_cert=cert,
        tls_key=key, tls_port=0, max_connections_per_source=1,
    ) as turn:  # fmt: skip
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        await c.allocate()
        for ip in ("127.0.0.1", "10.0.0.1"):  # own address, special-purpose
            await c.request(Message(Method.CREATE_PERMISSION).add(Attr.XOR_PEER_ADDRESS, (ip, 9)))
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(300):
            flood.sendto(Message(Method.ALLOCATE).encode(), turn.addresses_of("udp")[0])
        tcp = turn.addresses_of("tcp")[0]
        held = [socket.create_connection(tcp) for _ in range(2)]  # the second is one too many
        plain = socket.create_connection(
            turn.addresses_of("tls")[0], source_address=("127.0.0.5", 0)
        )
        plain.sendall(Message(Method.BINDING).encode())  # plain STUN on the TLS port
        await asyncio.sleep(0.5)
        body = await scrape(port)
        for s in (*held, plain, flood):
            s.close()
        c.close()
    assert 'natkit_turn_refused_peers_total{reason="own_address"} 1.0' in body
    assert 'natkit_turn_refused_peers_total{reason="special_purpose"} 1.0' in body
    assert "natkit_turn_rate_limited_responses_total" in body
    limited = [line for line in body.splitlines() if line.startswith("natkit_turn_rate_limited")]
    assert float(limited[0].split()[-1]) > 0
    assert 'natkit_turn_connections_dropped_total{reason="per_source_limit"}' in body
    assert 'natkit_turn_tls_handshake_failures_total{kind="plain_stun"} 1.0' in body
    assert 'natkit_turn_tls_handshake_failures_total{kind="timeout"} 0.0' in body


async def test_stun_metrics_and_change_request_notice(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    async with natkit.StunServer(["127.0.0.1:0"], metrics=("127.0.0.1", port)) as stun:
        target = stun.udp_address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(1)
            for _ in range(5):  # pynat / pystun3 against a server without --alternate-ip
                c.sendto(Message(Method.BINDING).add(Attr.CHANGE_REQUEST, 0x6).encode(), target)
                c.recv(200)  # 420 each time
        reader, writer = await asyncio.open_connection(*stun.addresses_of("tcp")[0])
        writer.write(b"\xff" * 20)  # neither STUN nor ChannelData: the stream is dropped
        await asyncio.wait_for(reader.read(), 2)
        writer.close()
        body = await scrape(port)
    assert "natkit_stun_change_requests_without_rfc5780_total 5.0" in body
    assert 'natkit_stun_responses_total{transport="udp"} 5.0' in body
    assert 'natkit_stun_connections_dropped_total{reason="bad_framing"} 1.0' in body
    assert "natkit_stun_tls_handshake_failures_total" in body
    lines = [r for r in caplog.records if "change_request_without_rfc5780" in r.getMessage()]
    assert len(lines) == 1 and "--alternate-ip" in lines[0].getMessage()  # once per source
