"""natkit/client/turn.py against coturn on loopback: long-term credentials (401 then signed,
438 stale nonce), Allocate/Refresh, CreatePermission, Send/Data, ChannelBind/ChannelData over
UDP and TCP, and each failure told apart (error code, refused, timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from natkit.client.turn import (
    TurnClient,
    TurnConnectionError,
    TurnError,
    TurnTimeout,
)
from natkit.pytest_plugin import has_ipv6_loopback
from natkit.server.coturn import CoturnServer, free_port
from natkit.stun import Attr, Class, Message, Method

pytestmark = [pytest.mark.coturn, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def coturn_port() -> Iterator[int]:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    with CoturnServer(
        [("127.0.0.1", 0)], realm="natkit.test", users={"alice": "secret"},
        relay_ip="127.0.0.1", min_port=40000, max_port=60000, allow_peers=["127.0.0.0/8"],
        nonce_lifetime=600,
    ) as turn:
        yield turn.addresses_of("udp")[0][1]


class Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


@pytest.fixture
async def peer() -> AsyncIterator[tuple[asyncio.DatagramTransport, Peer]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Peer, local_addr=("127.0.0.1", 0))
    yield transport, protocol  # type: ignore[misc]
    transport.close()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_allocate_permission_data_and_channel(
    coturn_port: int, protocol: str, peer: tuple[asyncio.DatagramTransport, Peer]
) -> None:
    transport, inbox = peer
    peer_addr = transport.get_extra_info("sockname")
    async with await TurnClient.connect(("127.0.0.1", coturn_port), protocol, username="alice",
                                        password="secret", timeout=3) as client:
        allocation = await client.allocate(lifetime=900)
        assert client.realm == "natkit.test" and client.nonce
        assert allocation.relayed[0] == "127.0.0.1"
        assert allocation.mapped == client.local_address
        assert allocation.lifetime == 900  # coturn grants 600..3600 s
        assert await client.refresh(1200) == 1200

        await client.create_permission("127.0.0.1")
        client.send_to(peer_addr, b"via indication")
        data, source = await asyncio.wait_for(inbox.queue.get(), 2)
        assert (data, source) == (b"via indication", allocation.relayed)
        transport.sendto(b"reply", allocation.relayed)
        got = await client.receive(2)
        assert (got.peer, got.data, got.channel) == (peer_addr, b"reply", None)

        channel = await client.channel_bind(peer_addr, 0x4001)
        client.send_channel(channel, b"abc")  # odd length: padded on TCP
        data, source = await asyncio.wait_for(inbox.queue.get(), 2)
        assert (data, source) == (b"abc", allocation.relayed)
        transport.sendto(b"back on the channel", allocation.relayed)
        got = await client.receive(2)
        assert (got.channel, got.data, got.peer) == (0x4001, b"back on the channel", peer_addr)
        released: list[tuple[int, int | None, int]] = []
        original = client.transact

        async def spy(msg: Message, key: bytes | None = None) -> Message:
            resp = await original(msg, key)
            released.append((msg.method, msg.get(Attr.LIFETIME), resp.cls))
            return resp

        client.transact = spy  # type: ignore[method-assign]
    # leaving the block released the allocation: Refresh with LIFETIME 0, answered with success
    assert released == [(Method.REFRESH, 0, Class.SUCCESS)]


async def test_binding_over_udp(coturn_port: int) -> None:
    async with await TurnClient.connect(("127.0.0.1", coturn_port), "udp") as client:
        assert await client.binding() == client.local_address


async def test_wrong_password_is_401_after_credentials(coturn_port: int) -> None:
    async with await TurnClient.connect(("127.0.0.1", coturn_port), "udp", username="alice",
                                        password="nope", timeout=3) as client:
        with pytest.raises(TurnError) as info:
            await client.allocate()
    assert info.value.code == 401 and info.value.method == "ALLOCATE"


async def test_unauthenticated_allocate_is_challenged(coturn_port: int) -> None:
    async with await TurnClient.connect(("127.0.0.1", coturn_port), "udp") as client:
        resp = await client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)],
                                    authenticate=False)
    assert resp.cls == Class.ERROR and resp.error_code is not None
    assert resp.error_code.code == 401
    assert resp.get(Attr.REALM) == "natkit.test" and resp.get(Attr.NONCE)


async def test_stale_nonce_is_renewed(coturn_port: int) -> None:
    async with await TurnClient.connect(("127.0.0.1", coturn_port), "udp", username="alice",
                                        password="secret", timeout=3) as client:
        await client.allocate()
        client.nonce = "0123456789abcdef"  # a nonce the server never issued -> 438
        sent: list[int] = []
        original = client.transact

        async def spy(msg: Message, key: bytes | None = None) -> Message:
            resp = await original(msg, key)
            sent.append(resp.error_code.code if resp.error_code else 0)
            return resp

        client.transact = spy  # type: ignore[method-assign]
        await client.create_permission("127.0.0.1")
        assert sent == [438, 0]
        assert client.nonce != "0123456789abcdef"


async def test_refused_and_silent_ports() -> None:
    dead = free_port()
    client = await TurnClient.connect(("127.0.0.1", dead), "udp", timeout=2)
    with pytest.raises(TurnConnectionError, match="ICMP port unreachable"):
        await client.binding()
    await client.close()
    with pytest.raises(TurnConnectionError, match="refused the TCP connection"):
        await TurnClient.connect(("127.0.0.1", dead), "tcp", timeout=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", 0))
        client = await TurnClient.connect(hole.getsockname(), "udp", timeout=0.5, rto=0.05)
        start = time.monotonic()
        with pytest.raises(TurnTimeout):
            await client.binding()
        assert 0.45 <= time.monotonic() - start <= 0.8
        await client.close()
        # RFC 8489 retransmissions: 0, 50, 150, 350 ms ... until the timeout
        hole.setblocking(False)
        count = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                hole.recv(2048)
                count += 1
        assert 3 <= count <= 7


def test_a_bad_protocol_is_a_config_error() -> None:
    from natkit.client.turn import TurnClient
    from natkit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        TurnClient(("127.0.0.1", 3478), "sctp")
    assert info.value.param == "protocol"




async def _peer_on(ip: str) -> tuple[asyncio.DatagramTransport, Peer]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Peer, local_addr=(ip, 0))
    return transport, protocol  # type: ignore[return-value]


async def _round_trip(
    client: TurnClient, peer: tuple[asyncio.DatagramTransport, Peer], relayed: tuple[str, int]
) -> None:
    transport, protocol = peer
    paddr = transport.get_extra_info("sockname")[:2]
    await client.create_permission(paddr)
    client.send_to(paddr, b"out")
    data, src = await asyncio.wait_for(protocol.queue.get(), 5)
    assert data == b"out" and src[:2] == relayed
    transport.sendto(b"back", relayed)
    got = await client.receive(5)
    assert got.data == b"back" and got.peer == paddr


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_ipv6_relaying_families_and_dual_allocation() -> None:
    """natkit's client against natkit's relay listening and relaying on both families:
    REQUESTED-ADDRESS-FAMILY IPv6 from an IPv4 client, the IPv4 default for an IPv6 client,
    a dual allocation (ADDITIONAL-ADDRESS-FAMILY) with data on both, 443 for a peer of the
    other family, 440 where the relay has no IPv6."""
    from natkit.server.turn import TurnServer

    async with TurnServer(
        [("127.0.0.1", 0), ("::1", 0)], users={"u": "p"}, relay_ip=["127.0.0.1", "::1"],
        allow_peers=["127.0.0.0/8", "::1/128"], tcp=False,
    ) as turn:  # fmt: skip
        v4_server, v6_server = turn.addresses_of("udp")
        peer4, peer6 = await _peer_on("127.0.0.1"), await _peer_on("::1")
        try:
            async with await TurnClient.connect(v4_server, username="u", password="p") as c:
                allocation = await c.allocate(family=6)  # IPv4 client <-> IPv6 peer
                assert allocation.relayed[0] == "::1" and allocation.relayed_for(4) is None
                await _round_trip(c, peer6, allocation.relayed)
                with pytest.raises(TurnError) as err:
                    await c.create_permission("127.0.0.1")
                assert err.value.code == 443
            async with await TurnClient.connect(v6_server, username="u", password="p") as c:
                allocation = await c.allocate()  # IPv6 client <-> IPv4 peer: IPv4 by default
                assert allocation.relayed[0] == "127.0.0.1"
                await _round_trip(c, peer4, allocation.relayed)
            async with await TurnClient.connect(v4_server, username="u", password="p") as c:
                allocation = await c.allocate(dual=True)
                assert [a[0] for a in allocation.relayed_all] == ["127.0.0.1", "::1"]
                assert allocation.family_errors == ()
                relay4, relay6 = allocation.relayed_for(4), allocation.relayed_for(6)
                assert relay4 is not None and relay6 is not None
                await _round_trip(c, peer4, relay4)
                await _round_trip(c, peer6, relay6)
        finally:
            for transport, _ in (peer4, peer6):
                transport.close()
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}, tcp=False) as v4_only:
        server = v4_only.addresses_of("udp")[0]
        async with await TurnClient.connect(server, username="u", password="p") as c:
            with pytest.raises(TurnError) as err:
                await c.allocate(family=6)
            assert err.value.code == 440
            allocation = await c.allocate(dual=True)  # IPv4 still, and why not IPv6
            assert allocation.relayed[0] == "127.0.0.1" and len(allocation.relayed_all) == 1
            assert [(f, code) for f, code, _ in allocation.family_errors] == [(6, 440)]


async def test_create_permission_takes_ip_port_strings_and_refuses_garbage_before_sending() -> None:
    """A peer as "IP", "IP:PORT", "[v6]:PORT" or (ip, port) installs a permission (data from
    it relays); anything else is a ConfigError naming the peer, and nothing is sent."""
    from natkit.client.turn import peer_address
    from natkit.errors import ConfigError
    from natkit.server.turn import TurnServer

    assert peer_address("127.0.0.1") == ("127.0.0.1", 0)
    assert peer_address(" 127.0.0.1:5000 ") == ("127.0.0.1", 5000)
    assert peer_address("[::1]:9") == peer_address(("::1", 9)) == ("::1", 9)
    assert peer_address("::1") == ("::1", 0)
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}, relay_ip="127.0.0.1",
                          allow_peers=["127.0.0.0/8"], tcp=False) as turn:
        peer = await _peer_on("127.0.0.1")
        try:
            async with await TurnClient.connect(turn.addresses_of("udp")[0], username="u", password="p") as c:
                allocation = await c.allocate()
                sent: list[Message] = []
                original = c.transact

                async def spy(msg: Message, key: bytes | None = None) -> Message:
                    sent.append(msg)
                    return await original(msg, key)

                c.transact = spy  # type: ignore[method-assign]
                for bad in ("127.0.0.1:x", "127.0.0.1:70000", "nope", "[::1", "", 5, ("nope", 1), ("127.0.0.1", True)):
                    with pytest.raises(ConfigError) as err:
                        await c.create_permission(bad)  # type: ignore[arg-type]
                    assert err.value.param == "peer" and repr(bad) in str(err.value)
                assert sent == []
                transport = peer[0]
                paddr = transport.get_extra_info("sockname")[:2]
                await c.create_permission(f"{paddr[0]}:{paddr[1]}")
                assert len(sent) >= 1
                transport.sendto(b"via string", allocation.relayed)
                got = await c.receive(5)
                assert got.data == b"via string" and got.peer == paddr
        finally:
            peer[0].close()
