"""Clients natkit did not write, relaying through natkit's TURN server on loopback:
aioice (UDP, TCP, TLS), coturn's turnutils_uclient (with and without turnutils_peer), and two
aiortc peers that may only use relay candidates."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from natkit.pytest_plugin import has_ipv6_loopback
from natkit.server.turn import TurnServer
from tests._certs import self_signed

pytestmark = pytest.mark.timeout(120)

LOOP = ["127.0.0.0/8"]
IN_CI = os.environ.get("CI") == "true"


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        if IN_CI:
            pytest.fail(f"{binary} is missing in CI (Debian package coturn)")
        pytest.skip(f"{binary} not installed (Debian package coturn)")


class _Queue(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_aioice_turn_client_relays_both_ways(transport: str, tmp_path: Path) -> None:
    from aioice.turn import create_turn_endpoint

    cert, key = self_signed(tmp_path)
    async with TurnServer(
        [("127.0.0.1", 0)],
        users={"alice": "s3cret"},
        allow_peers=LOOP,
        tls_cert=cert,
        tls_key=key,
        tls_port=0,
    ) as turn:
        loop = asyncio.get_running_loop()
        peer_transport, peer = await loop.create_datagram_endpoint(
            _Queue, local_addr=("127.0.0.1", 0)
        )
        peer_addr = peer_transport.get_extra_info("sockname")
        server = turn.addresses_of("udp" if transport == "udp" else transport)[0]
        ctx = None
        if transport == "tls":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        client_transport, client = await create_turn_endpoint(
            _Queue,
            server,
            "alice",
            "s3cret",
            ssl=ctx,
            transport="udp" if transport == "udp" else "tcp",
        )
        try:
            for i in range(20):
                client_transport.sendto(b"to-peer %d" % i, peer_addr)
                data, relayed = await asyncio.wait_for(peer.queue.get(), 5)
                assert data == b"to-peer %d" % i
                peer_transport.sendto(b"to-client %d" % i, relayed)
                data, src = await asyncio.wait_for(client.queue.get(), 5)
                assert data == b"to-client %d" % i and src == peer_addr
            assert turn.stats()["allocations"] == 1
            assert turn.stats()["channels"] == 1  # aioice binds a channel for the peer
        finally:
            client_transport.close()
            peer_transport.close()
        for _ in range(100):
            if turn.stats()["allocations"] == 0:
                break
            await asyncio.sleep(0.02)
        assert turn.stats()["allocations"] == 0  # aioice refreshes with lifetime 0 on close


def _lost(output: str) -> int:
    match = re.search(r"Total lost packets (\d+)", output)
    assert match, output[-2000:]
    sent = re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", output, re.M)
    assert sent and int(sent.group(1)) > 0, output[-2000:]
    return int(match.group(1))


async def _uclient(args: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "turnutils_uclient", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


@pytest.mark.coturn
@pytest.mark.parametrize("mode", ["udp", "tcp"])
async def test_turnutils_uclient_client_to_client_zero_loss(mode: str) -> None:
    _need("turnutils_uclient")
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "pw"}, allow_peers=LOOP, relay_to_relay=True
    ) as turn:
        port = turn.addresses_of("udp")[0][1]
        flags = ["-t"] if mode == "tcp" else []
        out = await _uclient(
            [
                *flags,
                "-y",
                "-u",
                "u",
                "-w",
                "pw",
                "-n",
                "40",
                "-m",
                "4",
                "-l",
                "171",
                "-z",
                "5",
                "-p",
                str(port),
                "127.0.0.1",
            ]
        )
        assert _lost(out) == 0, out[-2000:]
        stats = turn.stats()
        # client to client through one relay: delivered in process, never to its own address
        assert stats["relay_to_relay_packets"] >= 160 and stats["to_peer_packets"] == 0
        assert stats["bugs"] == 0


@pytest.mark.coturn
async def test_turnutils_uclient_with_turnutils_peer_zero_loss() -> None:
    _need("turnutils_uclient")
    _need("turnutils_peer")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        peer_port = s.getsockname()[1]
    peer = subprocess.Popen(
        ["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "pw"}, allow_peers=LOOP, relay_to_relay=True
    ) as turn:
            port = turn.addresses_of("udp")[0][1]
            await asyncio.sleep(0.3)
            for extra in ([], ["-s"]):  # channels, then Send/Data indications
                out = await _uclient(
                    [
                        *extra,
                        "-e",
                        "127.0.0.1",
                        "-r",
                        str(peer_port),
                        "-u",
                        "u",
                        "-w",
                        "pw",
                        "-n",
                        "40",
                        "-m",
                        "2",
                        "-l",
                        "120",
                        "-z",
                        "5",
                        "-p",
                        str(port),
                        "127.0.0.1",
                    ]
                )
                assert _lost(out) == 0, out[-2000:]
    finally:
        peer.terminate()
        peer.wait(10)


async def test_aiortc_peers_connect_over_natkit_relay_only() -> None:
    """Both peers relayed by one server reach each other's relayed address: relay_to_relay."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    async with TurnServer(
        [("127.0.0.1", 0)], users={"rtc": "pw"}, allow_peers=LOOP, tcp=False, relay_to_relay=True
    ) as turn:
        ice = [RTCIceServer(urls=turn.urls[0], username="rtc", credential="pw")]

        def config() -> RTCConfiguration:
            return RTCConfiguration(iceServers=ice, iceTransportPolicy=RTCIceTransportPolicy.RELAY)

        caller, callee = RTCPeerConnection(config()), RTCPeerConnection(config())
        try:
            channel = caller.createDataChannel("chat")
            opened = asyncio.Event()
            received: asyncio.Queue[str] = asyncio.Queue()
            channel.on("open", opened.set)

            @callee.on("datachannel")
            def on_channel(remote: Any) -> None:
                @remote.on("message")
                def on_message(message: str) -> None:
                    received.put_nowait(message)
                    remote.send("pong:" + message)

            replies: asyncio.Queue[str] = asyncio.Queue()
            channel.on("message", replies.put_nowait)
            await caller.setLocalDescription(await caller.createOffer())
            offer = caller.localDescription
            assert "typ relay" in offer.sdp and "typ host" not in offer.sdp
            await callee.setRemoteDescription(offer)
            await callee.setLocalDescription(await callee.createAnswer())
            answer = callee.localDescription
            assert "typ relay" in answer.sdp and "typ host" not in answer.sdp
            await caller.setRemoteDescription(answer)
            await asyncio.wait_for(opened.wait(), 30)
            channel.send("ping")
            assert await asyncio.wait_for(received.get(), 10) == "ping"
            assert await asyncio.wait_for(replies.get(), 10) == "pong:ping"
            stats = turn.stats()
            # both peers relay through this server: their media crosses relay to relay in
            # process (never the network), each side's relayed address the other's peer
            assert stats["allocations"] >= 2 and stats["relay_to_relay_packets"] > 0
        finally:
            await caller.close()
            await callee.close()



@pytest.mark.coturn
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
@pytest.mark.parametrize("flag", ["-x", "-Z"], ids=["ipv6-relay", "dual-allocation"])
async def test_turnutils_uclient_ipv6_relay_and_dual_allocation(flag: str) -> None:
    """coturn's client asks natkit for an IPv6 relayed address (-x: REQUESTED-ADDRESS-FAMILY)
    or for both families at once (-Z: ADDITIONAL-ADDRESS-FAMILY, which coturn 4.x sends under
    its pre-RFC code) from IPv4, and relays to an IPv6 turnutils_peer without loss."""
    _need("turnutils_uclient")
    _need("turnutils_peer")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        peer_port = s.getsockname()[1]
    peer = subprocess.Popen(
        ["turnutils_peer", "-L", "::1", "-p", str(peer_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with TurnServer(
            [("127.0.0.1", 0)], users={"u": "pw"}, relay_ip=["127.0.0.1", "::1"],
            allow_peers=[*LOOP, "::1/128"],
        ) as turn:  # fmt: skip
            port = turn.addresses_of("udp")[0][1]
            await asyncio.sleep(0.3)
            out = await _uclient(
                [flag, "-v", "-e", "::1", "-r", str(peer_port), "-u", "u", "-w", "pw",
                 "-n", "40", "-m", "2", "-l", "120", "-z", "5", "-p", str(port), "127.0.0.1"]
            )  # fmt: skip
            assert _lost(out) == 0, out[-2000:]
            assert "IPv6. Received relay addr: ::1" in out, out[-2000:]
            if flag == "-Z":
                assert "IPv4. Received relay addr: 127.0.0.1" in out, out[-2000:]
            stats = turn.stats()
            assert stats["to_peer_packets"] >= 80 and stats["bugs"] == 0
    finally:
        peer.terminate()
        peer.wait(10)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_aioice_over_ipv6_to_an_ipv4_peer() -> None:
    """aioice (which cannot ask for an IPv6 relayed address: it sends no
    REQUESTED-ADDRESS-FAMILY) reaches natkit over IPv6 and gets the IPv4 relayed address
    RFC 8656 gives by default: an IPv6 client relaying to an IPv4 peer."""
    from aioice.turn import create_turn_endpoint

    async with TurnServer(
        [("::1", 0)], users={"alice": "s3cret"}, relay_ip=["127.0.0.1", "::1"],
        allow_peers=LOOP, tcp=False,
    ) as turn:  # fmt: skip
        loop = asyncio.get_running_loop()
        peer_transport, peer = await loop.create_datagram_endpoint(
            _Queue, local_addr=("127.0.0.1", 0)
        )
        peer_addr = peer_transport.get_extra_info("sockname")
        server = turn.addresses_of("udp")[0]
        client_transport, client = await create_turn_endpoint(
            _Queue, server, "alice", "s3cret"
        )
        try:
            for i in range(10):
                client_transport.sendto(b"v6 client %d" % i, peer_addr)
                data, relayed = await asyncio.wait_for(peer.queue.get(), 5)
                assert data == b"v6 client %d" % i and relayed[0] == "127.0.0.1"
                peer_transport.sendto(b"v4 peer %d" % i, relayed)
                data, src = await asyncio.wait_for(client.queue.get(), 5)
                assert data == b"v4 peer %d" % i and src == peer_addr
        finally:
            client_transport.close()
            peer_transport.close()
