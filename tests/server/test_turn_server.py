"""natkit.TurnServer on real loopback sockets: UDP/TCP/TLS clients, relaying, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from natkit.errors import ConfigError, UsageError
from natkit.pytest_plugin import has_ipv6_loopback
from natkit.server.turn import TurnServer, load_users_file
from natkit.stun import Attr, Class, Message, Method, decode, encode_channel_data, long_term_key
from natkit.turn import AllocationQuota, DefaultPeerPolicy, StaticUsers
from natkit.turn.auth import rest_credentials
from tests._certs import self_signed

pytestmark = pytest.mark.timeout(60)

LOOP = ["127.0.0.0/8"]
PATHS = pytest.mark.parametrize("fast", [True, False], ids=["c-path", "python-path"])


def _fast(fast: bool) -> bool:
    """fast_path argument; the C path must exist in CI, elsewhere it may be skipped."""
    from natkit.server import _turn_fast

    if fast and _turn_fast.load() is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"C relay path must build in CI: {_turn_fast.status()}")
        pytest.skip(_turn_fast.status())
    return fast


class RawClient:
    """A minimal TURN client over a non-blocking socket, driven from the test's loop."""

    def __init__(
        self,
        server: tuple[str, int],
        username: str,
        password: str,
        realm: str = "natkit",
        tcp: bool = False,
        tls: bool = False,
        source: str | None = None,
    ) -> None:
        self.server = server
        self.username, self.password, self.realm = username, password, realm
        self.nonce: str | None = None
        self.tcp = tcp or tls
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        if self.tcp:
            raw = socket.create_connection(
                server, timeout=5, source_address=(source, 0) if source else None
            )
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                raw = ctx.wrap_socket(raw)
            self.sock = raw
        else:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            if source:
                self.sock.bind((source, 0))
            self.sock.connect(server)
        self.sock.setblocking(False)
        self.buf = b""

    async def recv(self, timeout: float = 2.0) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.tcp and len(self.buf) >= 4:
                first = self.buf[0]
                length = struct.unpack("!H", self.buf[2:4])[0]
                need = 20 + length if first < 0x40 else 4 + length + (-length % 4)
                if len(self.buf) >= need:
                    frame, self.buf = self.buf[:need], self.buf[need:]
                    return frame
            try:
                data = self.sock.recv(65536)
                if not self.tcp:
                    return data
                if not data:
                    raise ConnectionError("closed")
                self.buf += data
                continue
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            if loop.time() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.005)

    def send_raw(self, data: bytes) -> None:
        if self.tcp:
            self.sock.setblocking(True)
            self.sock.sendall(data)
            self.sock.setblocking(False)
        else:
            self.sock.send(data)

    async def request(self, msg: Message) -> Message:
        for _ in range(3):
            out = Message(msg.method, msg.cls, attributes=list(msg.attributes))
            key = None
            if self.nonce is not None:
                out.add(Attr.USERNAME, self.username).add(Attr.REALM, self.realm).add(
                    Attr.NONCE, self.nonce
                )
                key = long_term_key(self.username, self.realm, self.password)
            self.send_raw(out.encode(key=key))
            while True:
                resp = decode(await self.recv())
                if resp.transaction_id == out.transaction_id:
                    break
            err = resp.error_code
            if err is not None and err.code in (401, 438) and resp.get(Attr.NONCE) != self.nonce:
                self.nonce = resp.get(Attr.NONCE)
                continue
            return resp
        return resp

    async def allocate(self, **attrs: Any) -> Message:
        msg = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
        for name, value in attrs.items():
            msg.add(Attr[name.upper()], value)
        return await self.request(msg)

    def close(self) -> None:
        self.sock.close()


async def _adopted(turn: TurnServer, n: int) -> None:
    """Until the engine holds ``n`` allocations (bounded): the C thread answers an Allocate
    first and hands its allocation to the engine after, through a queue the loop drains."""
    for _ in range(100):
        if len(turn.engine.allocations) >= n:
            return
        await asyncio.sleep(0.02)


def _peer(avoid: range = range(0)) -> socket.socket:
    """A UDP peer on loopback, on a port outside ``avoid`` (a relay's own port range, which the
    relay refuses as a peer whatever --allow-peer says)."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        if s.getsockname()[1] not in avoid:
            s.settimeout(2)
            return s
        s.close()
    raise AssertionError(f"no free port outside {avoid}")


async def _peer_recv(s: socket.socket) -> tuple[bytes, Any]:
    return await asyncio.to_thread(s.recvfrom, 65536)


@PATHS
async def test_allocate_relay_both_ways_channel_and_indication(fast: bool) -> None:
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(fast)
    ) as turn:
        assert turn.stats()["fast_path"] == ("c" if fast else "python (disabled)")
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        resp = await c.allocate()
        assert resp.cls == Class.SUCCESS, resp
        relayed = resp.get(Attr.XOR_RELAYED_ADDRESS)
        peer = _peer()
        paddr = peer.getsockname()
        assert (
            await c.request(Message(Method.CREATE_PERMISSION).add(Attr.XOR_PEER_ADDRESS, paddr))
        ).cls == Class.SUCCESS
        c.send_raw(
            Message(Method.SEND, Class.INDICATION)
            .add(Attr.XOR_PEER_ADDRESS, paddr)
            .add(Attr.DATA, b"ind")
            .encode()
        )
        data, src = await _peer_recv(peer)
        assert data == b"ind" and src == relayed
        peer.sendto(b"back", relayed)
        ind = decode(await c.recv())
        assert ind.method == Method.DATA and ind.get(Attr.DATA) == b"back"
        assert (
            await c.request(
                Message(Method.CHANNEL_BIND)
                .add(Attr.CHANNEL_NUMBER, 0x4001)
                .add(Attr.XOR_PEER_ADDRESS, paddr)
            )
        ).cls == Class.SUCCESS
        c.send_raw(encode_channel_data(0x4001, b"chan"))
        assert (await _peer_recv(peer))[0] == b"chan"
        peer.sendto(b"reply", relayed)
        assert await c.recv() == encode_channel_data(0x4001, b"reply")
        # a peer whose IP has no permission is not relayed (permissions are per IP)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.2", 0))
        stranger.sendto(b"spam", relayed)
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):
            await c.recv(0.2)
        stats = turn.stats()
        assert stats["to_peer_packets"] == 2 and stats["to_client_packets"] == 2
        assert stats["relay_sockets"] == 1
        for s in (peer, stranger):
            s.close()
        c.close()
    assert turn.stats()["relay_sockets"] == 0


async def test_binding_on_same_port_udp_and_tcp() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        for transport in ("udp", "tcp"):
            c = RawClient(turn.addresses_of(transport)[0], "u", "p", tcp=transport == "tcp")
            req = Message(Method.BINDING)
            c.send_raw(req.encode())
            resp = decode(await c.recv())
            assert resp.cls == Class.SUCCESS
            assert resp.get(Attr.XOR_MAPPED_ADDRESS) == c.sock.getsockname()[:2]
            c.close()


async def test_unauthenticated_and_wrong_password() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        anonymous = RawClient(turn.addresses_of("udp")[0], "u", "p")
        anonymous.send_raw(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode())
        resp = decode(await anonymous.recv())
        assert resp.error_code.code == 401 and resp.get(Attr.NONCE)
        wrong = RawClient(turn.addresses_of("udp")[0], "u", "nope")
        assert (await wrong.allocate()).error_code.code == 401
        assert turn.stats()["allocations"] == 0 and turn.stats()["auth_failures"] == 1
        anonymous.close()
        wrong.close()


async def test_default_policy_refuses_loopback_peer() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        await c.allocate()
        for ip in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "::ffff:127.0.0.1"):
            resp = await c.request(
                Message(Method.CREATE_PERMISSION).add(Attr.XOR_PEER_ADDRESS, (ip, 80))
            )
            assert resp.error_code.code == 403, ip
        c.close()


async def test_tcp_client_channel_data_padding_and_close_releases() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP) as turn:
        c = RawClient(turn.addresses_of("tcp")[0], "u", "p", tcp=True)
        relayed = (await c.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        peer = _peer()
        paddr = peer.getsockname()
        await c.request(
            Message(Method.CHANNEL_BIND)
            .add(Attr.CHANNEL_NUMBER, 0x4002)
            .add(Attr.XOR_PEER_ADDRESS, paddr)
        )
        c.send_raw(
            encode_channel_data(0x4002, b"odd", pad=True)
            + encode_channel_data(0x4002, b"second", pad=True)
        )
        assert (await _peer_recv(peer))[0] == b"odd"
        assert (await _peer_recv(peer))[0] == b"second"
        peer.sendto(b"12345", relayed)
        frame = await c.recv()
        assert frame == encode_channel_data(0x4002, b"12345", pad=True) and len(frame) == 12
        assert turn.stats()["relay_sockets"] == 1
        c.close()
        for _ in range(100):
            if turn.stats()["relay_sockets"] == 0:
                break
            await asyncio.sleep(0.02)
        assert turn.stats()["allocations"] == 0 and turn.stats()["relay_sockets"] == 0
        peer.close()


async def _tcp_with_channel(
    turn: TurnServer, channel: int
) -> tuple[RawClient, tuple[str, int], socket.socket]:
    """A TCP client with an allocation and ``channel`` bound to a new peer socket:
    (client, relayed address, peer)."""
    c = RawClient(turn.addresses_of("tcp")[0], "u", "p", tcp=True)
    relayed = (await c.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
    peer = _peer()
    await c.request(
        Message(Method.CHANNEL_BIND)
        .add(Attr.CHANNEL_NUMBER, channel)
        .add(Attr.XOR_PEER_ADDRESS, peer.getsockname())
    )
    return c, relayed, peer


@PATHS
async def test_tcp_bursts_keep_their_order_both_ways(fast: bool) -> None:
    """A burst of equal ChannelData frames in one TCP segment leaves as datagrams in order
    (one batched send, GSO on the C path), and a burst of peer datagrams reaches the TCP
    client as frames in order (one write per event-loop turn)."""
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(fast)
    ) as turn:
        c, relayed, peer = await _tcp_with_channel(turn, 0x4000)
        c.send_raw(b"".join(encode_channel_data(0x4000, b"%04d" % i) for i in range(50)))
        got = [(await _peer_recv(peer))[0] for _ in range(50)]
        assert got == [b"%04d" % i for i in range(50)]
        for i in range(50):
            peer.sendto(b"back%03d" % i, relayed)
        frames = [await c.recv() for _ in range(50)]
        assert frames == [encode_channel_data(0x4000, b"back%03d" % i, pad=True) for i in range(50)]
        assert turn.stats()["dropped_packets"] == 0
        c.close()
        peer.close()


async def test_tcp_stream_handed_to_the_c_table() -> None:
    """Once its channel exists, a TCP client's stream is the C table's: ChannelData both ways
    without the engine, requests still answered by it (in order with the relayed frames),
    garbage closes the connection and frees the allocation."""
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(True)
    ) as turn:
        assert turn.fast is not None
        c, relayed, peer = await _tcp_with_channel(turn, 0x4000)
        engine_before = turn.engine.stats.to_peer_packets
        c.send_raw(b"".join(encode_channel_data(0x4000, b"c%03d" % i, pad=True) for i in range(30)))
        assert [(await _peer_recv(peer))[0] for _ in range(30)] == [b"c%03d" % i for i in range(30)]
        for i in range(30):
            peer.sendto(b"p%02d" % i, relayed)
        frames = [await c.recv() for _ in range(30)]
        assert frames == [encode_channel_data(0x4000, b"p%02d" % i, pad=True) for i in range(30)]
        fast = turn.fast.stats()
        assert fast["stream_frames"] >= 30 and fast["stream_writes"] >= 1
        assert turn.engine.stats.to_peer_packets == engine_before  # none through the engine
        # a request through the table to the engine, and its answer back through the table
        resp = await c.request(Message(Method.REFRESH).add(Attr.LIFETIME, 300))
        assert resp.cls == Class.SUCCESS
        assert turn.stats()["allocations"] == 1
        c.send_raw(b"\xff" * 8)  # garbage: the connection ends, and the allocation with it
        for _ in range(100):
            if turn.stats()["allocations"] == 0:
                break
            await asyncio.sleep(0.02)
        assert turn.stats()["allocations"] == 0 and turn.stats()["relay_sockets"] == 0
        assert turn.bad_frames == 1 and turn.guard.dropped["bad_framing"] == 1
        assert not turn.streams
        c.close()
        peer.close()


async def test_tls_client(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, tls_cert=cert, tls_key=key, tls_port=0, tcp=False
    ) as turn:
        assert [t for t, _ in turn.addresses] == ["udp", "tls"]
        assert turn.urls[1].startswith("turns:127.0.0.1:")
        addr = turn.addresses_of("tls")[0]
        c = await asyncio.to_thread(RawClient, addr, "u", "p", "natkit", False, True)
        resp = await c.allocate()
        assert resp.cls == Class.SUCCESS
        c.close()


async def test_even_port_reservation_and_port_range() -> None:
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, min_port=41000, max_port=41099
    ) as turn:
        a = RawClient(turn.addresses_of("udp")[0], "u", "p")
        resp = await a.allocate(even_port=True)
        port = resp.get(Attr.XOR_RELAYED_ADDRESS)[1]
        assert port % 2 == 0 and 41000 <= port <= 41098
        token = resp.get(Attr.RESERVATION_TOKEN)
        b = RawClient(turn.addresses_of("udp")[0], "u", "p")
        resp = await b.allocate(reservation_token=token)
        assert resp.get(Attr.XOR_RELAYED_ADDRESS)[1] == port + 1
        assert turn.stats()["relay_sockets"] == 2
        a.close()
        b.close()
    assert turn.ports.in_use == set()


async def test_external_ip_is_advertised() -> None:
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, relay_ip="127.0.0.1", external_ip="203.0.113.9"
    ) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        relayed = (await c.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        assert relayed[0] == "203.0.113.9"
        await _adopted(turn, 1)
        assert (
            turn.engine.allocations[next(iter(turn.engine.allocations))].relays[0].address[0]
            == "127.0.0.1"
        )
        c.close()



@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
@PATHS
async def test_dual_stack_allocation_relays_ipv6(fast: bool) -> None:
    async with TurnServer(
        fast_path=_fast(fast),
        listen=[("127.0.0.1", 0)],
        users={"u": "p"},
        relay_ip=["127.0.0.1", "::1"],
        allow_peers=["127.0.0.0/8", "::1/128"],
    ) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        resp = await c.allocate(additional_address_family=2)
        relayed = resp.get_all(Attr.XOR_RELAYED_ADDRESS)
        assert [ip for ip, _ in relayed] == ["127.0.0.1", "::1"]
        peer6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        peer6.bind(("::1", 0))
        peer6.settimeout(2)
        paddr = peer6.getsockname()[:2]
        await c.request(Message(Method.CREATE_PERMISSION).add(Attr.XOR_PEER_ADDRESS, paddr))
        c.send_raw(
            Message(Method.SEND, Class.INDICATION)
            .add(Attr.XOR_PEER_ADDRESS, paddr)
            .add(Attr.DATA, b"v6")
            .encode()
        )
        data, src = await asyncio.to_thread(peer6.recvfrom, 100)
        assert data == b"v6" and src[:2] == relayed[1]
        peer6.sendto(b"back6", relayed[1])
        ind = decode(await c.recv())
        assert ind.get(Attr.XOR_PEER_ADDRESS) == paddr and ind.get(Attr.DATA) == b"back6"
        bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4444)
        assert (await c.request(bind.add(Attr.XOR_PEER_ADDRESS, paddr))).cls == Class.SUCCESS
        c.send_raw(encode_channel_data(0x4444, b"cd6"))
        assert (await asyncio.to_thread(peer6.recvfrom, 100))[0] == b"cd6"
        peer6.sendto(b"cd6-back", relayed[1])
        assert await c.recv() == encode_channel_data(0x4444, b"cd6-back")
        peer6.close()
        c.close()


async def test_allocation_expires_and_socket_is_closed() -> None:
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, default_lifetime=1, max_lifetime=1
    ) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        assert (await c.allocate()).get(Attr.LIFETIME) == 1
        assert turn.stats()["relay_sockets"] == 1
        await asyncio.sleep(2.2)
        assert turn.stats()["relay_sockets"] == 0 and turn.stats()["allocations_expired"] == 1
        c.close()


async def test_rest_secret_credentials() -> None:
    async with TurnServer([("127.0.0.1", 0)], auth_secrets=["s1", "s0"]) as turn:
        user, password = rest_credentials("s0", 60, time.time(), "me")
        c = RawClient(turn.addresses_of("udp")[0], user, password)
        assert (await c.allocate()).cls == Class.SUCCESS
        assert turn.ice_server()["username"].endswith(":natkit")
        c.close()


async def test_generated_user_when_no_credentials_and_no_auth_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with TurnServer([("127.0.0.1", 0)]) as turn:
        assert turn.generated_user and turn.username == "natkit" and len(turn.password) >= 12
    with caplog.at_level("WARNING", logger="natkit.server.turn"):
        async with TurnServer([("127.0.0.1", 0)], no_auth=True) as turn:
            assert "username" not in turn.ice_server()
    assert any("OPEN" in r.getMessage() or "open_relay" in r.getMessage() for r in caplog.records)


async def test_metrics_endpoint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, metrics=("127.0.0.1", port)
    ) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        await c.allocate()
        body = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        assert "natkit_turn_allocations 1.0" in body
        assert "natkit_turn_relayed_packets_total" in body
        c.close()


def test_bad_options_are_config_errors_naming_the_option(tmp_path: Path) -> None:
    for kwargs, param, text in (
        ({"allow_peers": ["300.0.0.0/8"]}, "allow_peers", "CIDR"),
        ({"deny_peers": ["x"]}, "deny_peers", "CIDR"),
        ({"min_port": 5000, "max_port": 4000}, "min_port", "port range"),
        ({"relay_ip": "not-an-ip"}, "relay_ip", "not an IP"),
        ({"external_ip": "2001:db8::9", "relay_ip": "127.0.0.1"}, "external_ip", "family"),
        ({"user_quota": 0}, "user_quota", "at least 1"),
        ({"tls_cert": "cert.pem"}, "tls_key", "both"),
        ({"auth": StaticUsers({}), "users": {"a": "b"}}, "auth", "not both"),
        (
            {"peer_policy": DefaultPeerPolicy(), "allow_peers": ["10.0.0.0/8"]},
            "peer_policy",
            "not both",
        ),
        ({"quota": AllocationQuota(), "user_quota": 2}, "quota", "not both"),
        ({"listen": ["nonsense"]}, "listen", "not an IP"),
    ):
        with pytest.raises(ConfigError, match=text) as err:
            TurnServer(**{"listen": [("127.0.0.1", 0)], **kwargs})
        assert err.value.param == param, (kwargs, err.value)
    with pytest.raises(TypeError, match="unknown TURN option"):
        TurnServer(relay_ips="127.0.0.1")
    bad = tmp_path / "users"
    bad.write_text("# comment\nalice:pw\nbroken\n")
    with pytest.raises(UsageError, match=r"users:3") as err:
        load_users_file(bad)
    assert err.value.param == "users_file"
    good = tmp_path / "good"
    good.write_text("alice:pw\n\nbob:x:y\n")
    assert load_users_file(good) == {"alice": "pw", "bob": "x:y"}


def test_cli_usage_errors_exit_2() -> None:
    for args in (
        ["--allow-peer", "nonsense"],
        ["--user", "nocolon"],
        ["--min-port", "9", "--max-port", "1"],
        ["--tls-cert", "/nonexistent"],
        ["--users-file", "/dev/zero"],  # a device: refused by its kind, never read
        ["--workers", "0"],
        ["--workers", "2", "--engine", "coturn"],
        ["--workers", "3", "--min-port", "5000", "--max-port", "5004"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "natkit", "serve", "turn", "--listen", "127.0.0.1:0", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        if args[-1] == "/dev/zero":
            assert "/dev/zero: not a regular file" in proc.stderr, proc.stderr


def _serve_json(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``natkit serve turn --json --listen 127.0.0.1:0 ARGS`` and its ready event."""
    import json

    proc = subprocess.Popen(
        [sys.executable, "-m", "natkit", "serve", "turn", "--json", "--listen", "127.0.0.1:0",
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("}"):
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise AssertionError(proc.stderr.read() if proc.stderr else "no ready event")
        lines.append(line)
    return proc, json.loads("".join(lines))


def test_cli_serves_and_stops_on_sigterm() -> None:
    import json
    import signal

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "natkit",
            "serve",
            "turn",
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--user",
            "a:b",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line)
            if line.startswith("}"):
                break
        info = json.loads("".join(lines))
        assert info["engine"] == "natkit" and info["urls"][0].startswith("turn:127.0.0.1:")
        assert (info["schema_version"], info["kind"], info["event"]) == (1, "serve-turn", "ready")
        assert info["credential"] is None  # only a generated password is printed
        port = info["addresses"][0]["port"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(Message(Method.BINDING).encode(), ("127.0.0.1", port))
            assert decode(s.recv(1000)).cls == Class.SUCCESS
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        stopped = json.loads(out)
        assert stopped["stopped"] is True and stopped["event"] == "stopped"
        assert stopped["schema_version"] == 1 and "allocations_created" in stopped["stats"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_dont_fragment_sets_df_on_the_relay_socket() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        assert (await c.allocate(dont_fragment=True)).cls == Class.SUCCESS
        await _adopted(turn, 1)
        (alloc,) = turn.engine.allocations.values()
        sock = alloc.relays[0].handle.sock
        assert sock.getsockopt(socket.IPPROTO_IP, getattr(socket, "IP_MTU_DISCOVER", 10)) == 2
        c.close()


@pytest.mark.coturn
def test_cli_engine_coturn_same_options() -> None:
    import shutil
    import signal

    if shutil.which("turnserver") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("turnserver missing in CI (Debian package coturn)")
        pytest.skip("coturn not installed")
    proc, info = _serve_json("--engine", "coturn", "--user", "a:b", "--allow-peer", "127.0.0.0/8")
    try:
        assert info["engine"] == "coturn"
        port = info["addresses"][0]["port"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(Message(Method.BINDING).encode(), ("127.0.0.1", port))
            assert decode(s.recv(1000)).cls == Class.SUCCESS
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # coturn is gone
        s.settimeout(0.5)
        s.sendto(Message(Method.BINDING).encode(), ("127.0.0.1", port))
        with pytest.raises(OSError):
            s.recv(1000)


async def test_relay_sockets_have_room_for_bursts() -> None:
    """A relay socket's receive buffer is raised above the kernel default (a stall of the
    server otherwise overflowed it and lost whole windows of peer traffic)."""
    from natkit.server.turn import _RELAY_RCVBUF

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, min_port=20000, max_port=20999
    ) as t:
        c = RawClient(t.addresses_of("udp")[0], "u", "p")
        assert (await c.allocate()).cls == Class.SUCCESS
        # (the sockets with no relay are spares the C path may take for its Allocates; an
        # allocation it made is the engine's once the loop has taken its record)
        for _ in range(100):
            relays = [r for r in t._relays.values() if r.relay is not None]
            if relays:
                break
            await asyncio.sleep(0.01)
        (relay,) = relays
        got = relay.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert got >= 2 * min(_RELAY_RCVBUF, rmem_max)  # the kernel doubles what it grants
        assert relay.address == relay.sock.getsockname()
        c.close()


async def test_lifecycle_log_is_debug_per_allocation_and_batched_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="natkit")
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        clients = [RawClient(turn.addresses_of("udp")[0], "u", "p") for _ in range(3)]
        for c in clients:
            assert (await c.allocate()).cls == Class.SUCCESS
        assert not [r for r in caplog.records if "allocation_created" in r.getMessage()]
        turn._log_summary(time.time())
        lines = [r.getMessage() for r in caplog.records if "event=allocations " in r.getMessage()]
        assert lines and "created=3 " in lines[-1] and "active=3" in lines[-1]
        turn._log_summary(time.time())  # nothing changed: no new line
        assert len([r for r in caplog.records if "event=allocations " in r.getMessage()]) == 1
        caplog.set_level(logging.DEBUG, logger="natkit")
        assert (await clients[0].request(Message(Method.REFRESH).add(Attr.LIFETIME, 0))).cls == (
            Class.SUCCESS
        )
        assert [r for r in caplog.records if "event=allocation_deleted" in r.getMessage()]
        for c in clients:
            c.close()
    last = [r.getMessage() for r in caplog.records if "event=allocations " in r.getMessage()][-1]
    assert "deleted=3" in last and "active=0" in last  # the final summary at stop


@pytest.mark.parametrize(("strict", "status"), [(False, Class.SUCCESS), (True, Class.ERROR)])
async def test_channel_range_default_and_strict(strict: bool, status: int) -> None:
    """RFC 5766 clients (coturn's uclient among them) bind channels above 0x4FFF: accepted by
    default, refused with 400 under --strict-channels; 0x4000-0x4FFF always works."""
    async with TurnServer(
        [("127.0.0.1", 0)],
        users={"u": "p"},
        allow_peers=["127.0.0.0/8"],
        strict_channels=strict,
    ) as turn:
        client = RawClient(turn.addresses[0][1], "u", "p")
        peer = _peer()
        try:
            assert (await client.allocate()).cls == Class.SUCCESS
            addr = peer.getsockname()
            low = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4001)
            low.add(Attr.XOR_PEER_ADDRESS, addr)
            assert (await client.request(low)).cls == Class.SUCCESS
            high = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x6000)
            high.add(Attr.XOR_PEER_ADDRESS, ("127.0.0.1", addr[1] + 1))
            resp = await client.request(high)
            assert resp.cls == status
            if strict:
                assert resp.error_code is not None and resp.error_code.code == 400
        finally:
            client.close()
            peer.close()


def test_cli_strict_channels_flag() -> None:
    from natkit.cli import build_parser
    from natkit.cli.serve_turn import options_from_args

    args = build_parser().parse_args(["serve", "turn", "--strict-channels", "--user", "a:b"])
    assert options_from_args(args).strict_channels is True
    args = build_parser().parse_args(["serve", "turn", "--user", "a:b"])
    assert options_from_args(args).strict_channels is False


async def test_a_bug_is_answered_500_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """An exception inside the engine (here: a broken authenticator) is not the client's
    fault: not a 400, but a 500, its traceback in the log and the bug counter up."""

    class Broken:
        def lookup(self, username: str, realm: str, source: Any, now: float) -> str:
            raise KeyError(username)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with TurnServer([("127.0.0.1", 0)], auth=Broken(), metrics=("127.0.0.1", port)) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        with caplog.at_level("ERROR", logger="natkit.turn"):
            resp = await c.allocate()
        assert resp.error_code is not None and resp.error_code.code == 500
        assert turn.stats()["bugs"] == 1 and turn.stats()["errors"].get(500) == 1
        assert any(r.exc_info and "internal_error" in r.getMessage() for r in caplog.records)
        body = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        assert "natkit_turn_bugs_total 1.0" in body
        # and the server goes on serving
        c.send_raw(Message(Method.BINDING).encode())
        assert decode(await c.recv()).cls == Class.SUCCESS
        c.close()


async def test_custom_handlers_decide_on_a_real_server() -> None:
    """Authenticator, PeerPolicy and Quota objects passed to TurnServer are what decides."""

    class OnlyLoopbackClients:
        def lookup(self, username: str, realm: str, source: Any, now: float) -> str | None:
            return "pw" if source[0] == "127.0.0.1" and username == "app" else None

    class OnlyPort:
        def refuse(self, peer: tuple[str, int]) -> str | None:
            return None if peer[1] in (0, 9) else "not port 9"

    quota = AllocationQuota(per_source=1)
    async with TurnServer(
        [("127.0.0.1", 0)], auth=OnlyLoopbackClients(), peer_policy=OnlyPort(), quota=quota
    ) as turn:
        assert turn.ice_server() == {"urls": turn.urls}  # the server knows no password
        server = turn.addresses_of("udp")[0]
        c = RawClient(server, "app", "pw")
        assert (await c.allocate()).cls == Class.SUCCESS
        bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4000)
        resp = await c.request(bind.add(Attr.XOR_PEER_ADDRESS, ("127.0.0.2", 10)))
        assert resp.error_code.code == 403
        # the relay's own address is refused whatever a custom policy says
        bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4000)
        resp = await c.request(bind.add(Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9)))
        assert resp.error_code.code == 403
        bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4000)
        assert (await c.request(bind.add(Attr.XOR_PEER_ADDRESS, ("127.0.0.2", 9)))).cls == (
            Class.SUCCESS
        )
        second = RawClient(server, "app", "pw")  # same source IP: over its quota
        assert (await second.allocate()).error_code.code == 486
        wrong = RawClient(server, "other", "pw")
        assert (await wrong.allocate()).error_code.code == 401
        assert quota.sources == {"127.0.0.1": 1}
        for client in (c, second, wrong):
            client.close()
    assert quota.total == 0  # stop released it


# ---- abuse on a real server (docs/security.md); each was possible before the fix ------------


def _permit(addr: tuple[str, int]) -> Message:
    return Message(Method.CREATE_PERMISSION).add(Attr.XOR_PEER_ADDRESS, addr)


def _send(addr: tuple[str, int], data: bytes) -> bytes:
    msg = Message(Method.SEND, Class.INDICATION).add(Attr.XOR_PEER_ADDRESS, addr)
    return msg.add(Attr.DATA, data).encode()


@PATHS
async def test_no_relay_to_itself_on_a_real_server(fast: bool) -> None:
    """With relay_to_relay off, relayed addresses and the listener are never peers, even with
    the IP reopened by --allow-peer; an Allocate sent through the relay to the listener is
    never answered."""
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(fast),
        min_port=42000, max_port=42099, relay_to_relay=False,
    ) as turn:  # fmt: skip
        listener = turn.addresses_of("udp")[0]
        a, b = RawClient(listener, "u", "p"), RawClient(listener, "u", "p")
        relay_a = (await a.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        relay_b = (await b.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        # two allocations pointed at each other, at themselves, at the listener: 403
        for client, target in ((a, relay_b), (b, relay_a), (a, relay_a), (a, listener)):
            assert (await client.request(_permit(target))).error_code.code == 403
        bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4000)
        assert (await a.request(bind.add(Attr.XOR_PEER_ADDRESS, relay_b))).error_code.code == 403
        # the IP is reopened for other ports: a permission by IP, then data at our own ports
        peer = _peer(avoid=range(42000, 42100))
        assert (await a.request(_permit(peer.getsockname()))).cls == Class.SUCCESS
        assert (await b.request(_permit(peer.getsockname()))).cls == Class.SUCCESS
        a.send_raw(_send(relay_b, b"loop"))
        nested = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode()
        a.send_raw(_send(listener, nested))
        a.send_raw(_send(peer.getsockname(), b"fine"))
        assert (await _peer_recv(peer))[0] == b"fine"
        with pytest.raises(TimeoutError):
            await b.recv(0.3)  # nothing from a's relay reached b
        with pytest.raises(TimeoutError):
            await a.recv(0.2)  # and the listener answered nothing through the relay
        stats = turn.stats()
        assert stats["allocations"] == 2 and stats["to_client_packets"] == 0
        assert stats["refused_by_reason"]["own_relay"] >= 3
        assert stats["refused_by_reason"]["own_listener"] == 1
        for c in (a, b):
            c.close()
        peer.close()


@PATHS
async def test_relay_to_relay_by_default_delivers_once_and_refuses_the_listener(fast: bool) -> None:
    """Two clients of one relay reach each other's relayed address (WebRTC with both sides
    relayed); allocations pointed at each other deliver each datagram once, never in a loop."""
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(fast),
        min_port=42100, max_port=42103,
    ) as turn:
        listener = turn.addresses_of("udp")[0]
        a, b = RawClient(listener, "u", "p"), RawClient(listener, "u", "p")
        relay_a = (await a.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        relay_b = (await b.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        assert (await a.request(_permit(relay_b))).cls == Class.SUCCESS
        assert (await b.request(_permit(relay_a))).cls == Class.SUCCESS
        assert (await a.request(_permit(listener))).error_code.code == 403
        a.send_raw(_send(relay_b, b"hello b"))
        ind = decode(await b.recv())
        assert ind.get(Attr.DATA) == b"hello b" and ind.get(Attr.XOR_PEER_ADDRESS) == relay_a
        with pytest.raises(TimeoutError):
            await b.recv(0.3)  # once, not again
        with pytest.raises(TimeoutError):
            await a.recv(0.2)  # and nothing came back around to a
        nested = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode()
        a.send_raw(_send(relay_b, nested))  # b's client gets it as data; no allocation is made
        assert decode(await b.recv()).get(Attr.DATA) == nested
        stats = turn.stats()
        assert stats["allocations"] == 2 and stats["to_client_packets"] == 2
        # delivered in process: nothing was sent to the relay's own address over the network
        assert stats["relay_to_relay_packets"] == 2 and stats["to_peer_packets"] == 0
        for c in (a, b):
            c.close()


@PATHS
async def test_relay_to_relay_channels_never_touch_the_network(fast: bool) -> None:
    """ChannelData between two allocations of one relay goes from one client straight to the
    other (on the C path by the table's relay-to-relay entries), framed for the receiver's own
    channel; once the target allocation is gone the data goes to the network address again,
    where nothing listens."""
    from natkit.stun import encode_channel_data

    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(fast),
        min_port=42110, max_port=42113,
    ) as turn:
        listener = turn.addresses_of("udp")[0]
        a, b = RawClient(listener, "u", "p"), RawClient(listener, "u", "p")
        relay_a = (await a.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        relay_b = (await b.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        for client, number, peer in ((a, 0x4000, relay_b), (b, 0x4001, relay_a)):
            bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, number)
            assert (await client.request(bind.add(Attr.XOR_PEER_ADDRESS, peer))).cls == Class.SUCCESS
        for i in range(50):
            a.send_raw(encode_channel_data(0x4000, b"a%d" % i))
            assert await b.recv() == encode_channel_data(0x4001, b"a%d" % i)
            b.send_raw(encode_channel_data(0x4001, b"b%d" % i))
            assert await a.recv() == encode_channel_data(0x4000, b"b%d" % i)
        stats = turn.stats()
        assert stats["relay_to_relay_packets"] == 100 and stats["to_peer_packets"] == 0
        assert stats["to_client_packets"] == 100
        gone = Message(Method.REFRESH).add(Attr.LIFETIME, 0)
        assert (await b.request(gone)).cls == Class.SUCCESS
        await asyncio.sleep(0.05)
        a.send_raw(encode_channel_data(0x4000, b"after"))
        with pytest.raises(TimeoutError):
            await b.recv(0.3)
        stats = turn.stats()
        assert stats["relay_to_relay_packets"] == 100 and stats["to_peer_packets"] == 1
        if fast:
            assert turn.fast is not None and turn.fast.stats()["internal_packets"] == 100
        for c in (a, b):
            c.close()


async def test_wildcard_listener_owns_every_local_address() -> None:
    from natkit.server._local import local_addresses

    async with TurnServer([("0.0.0.0", 0)], users={"u": "p"}, tcp=False) as turn:
        own = turn.engine.own
        assert own.owns("127.0.0.5")  # lo answers on all of 127.0.0.0/8
        for address in local_addresses():
            ip = address.split("/")[0]
            if ":" not in ip:
                assert own.owns(ip), ip
        assert not own.owns("::1")  # no IPv6 listener: not this relay's address
        port = turn.addresses_of("udp")[0][1]
        c = RawClient(("127.0.0.1", port), "u", "p")
        assert (await c.allocate()).cls == Class.SUCCESS
        for ip in {a.split("/")[0] for a in local_addresses() if ":" not in a}:
            assert (await c.request(_permit((ip, 9)))).error_code.code == 403, ip
        c.close()


async def test_spoofed_bad_passwords_do_not_lock_out_a_real_client() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        server = turn.addresses_of("udp")[0]
        victim = RawClient(server, "u", "p")
        assert (await victim.allocate()).cls == Class.SUCCESS
        spoofer = RawClient(server, "u", "guess")  # the same source IP, as behind one NAT
        await spoofer.allocate()  # a nonce
        refreshed = 0
        for _ in range(20):
            for _ in range(10):
                key = long_term_key("u", "natkit", "guess")
                bad = Message(Method.REFRESH).add(Attr.USERNAME, "u").add(Attr.REALM, "natkit")
                spoofer.send_raw(bad.add(Attr.NONCE, spoofer.nonce).encode(key=key))
            resp = await victim.request(Message(Method.REFRESH).add(Attr.LIFETIME, 600))
            refreshed += resp.cls == Class.SUCCESS
        assert refreshed == 20
        assert turn.stats()["auth_blocked"] > 100
        for c in (victim, spoofer):
            c.close()


async def test_default_per_user_quota_leaves_room_for_other_users() -> None:
    async with TurnServer(
        [("127.0.0.1", 0)], users={"greedy": "p", "next": "q"}, min_port=43000, max_port=43019
    ) as turn:
        server = turn.addresses_of("udp")[0]
        assert turn.user_quota == 10  # half of the 20 relay ports
        clients = [RawClient(server, "greedy", "p") for _ in range(12)]
        codes = [(await c.allocate()).error_code for c in clients]
        assert sum(e is None for e in codes) == 10
        assert {e.code for e in codes if e is not None} == {486}
        other = RawClient(server, "next", "q")
        assert (await other.allocate()).cls == Class.SUCCESS
        for c in [*clients, other]:
            c.close()
    # one user only: nobody else to protect, no per-user limit
    assert TurnServer([("127.0.0.1", 0)], users={"solo": "p"}).user_quota is None
    assert (
        TurnServer([("127.0.0.1", 0)], auth_secrets=["s"], min_port=1000, max_port=1099).user_quota
        == 50
    )


async def test_unauthenticated_401s_are_rate_limited_per_source() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        server = turn.addresses_of("udp")[0]
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.bind(("127.0.0.2", 0))
        flood.settimeout(0.5)
        allocate = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
        for i in range(3000):
            flood.sendto(allocate.encode(), server)
            if i % 100 == 99:
                await asyncio.sleep(0.001)  # let the server (same loop) read
        await asyncio.sleep(0.3)

        def drain() -> int:
            got = 0
            with contextlib.suppress(TimeoutError):
                while True:
                    flood.recv(2048)
                    got += 1
            return got

        got = await asyncio.to_thread(drain)
        assert got <= 100 + 50 * 5  # the burst, and what refilled while sending
        assert got >= 100
        assert turn.stats()["rate_limited_responses"] >= 3000 - got - 50
        legit = RawClient(server, "u", "p", source="127.0.0.3")
        assert (await legit.allocate()).cls == Class.SUCCESS
        legit.close()
        flood.close()


async def test_rest_expiry_more_than_max_ttl_ahead_is_refused() -> None:
    from natkit.turn.auth import rest_password

    async with TurnServer([("127.0.0.1", 0)], auth_secrets=["s"], rest_max_ttl=3600) as turn:
        server = turn.addresses_of("udp")[0]
        name = f"{int(time.time()) + 7200}:x"
        assert (
            await RawClient(server, name, rest_password("s", name)).allocate()
        ).error_code.code == 401
        name = f"{int(time.time()) + 600}:x"
        assert (
            await RawClient(server, name, rest_password("s", name)).allocate()
        ).cls == Class.SUCCESS


async def test_channels_capped_and_a_binding_stays_fast() -> None:
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, max_channels=200
    ) as turn:
        server = turn.addresses_of("udp")[0]
        c = RawClient(server, "u", "p")
        await c.allocate()
        codes = []
        for n in range(220):
            bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4000 + n)
            resp = await c.request(bind.add(Attr.XOR_PEER_ADDRESS, ("127.0.0.2", 2000 + n)))
            codes.append(resp.error_code.code if resp.error_code else 200)
        assert codes.count(200) == 200 and set(codes[200:]) == {508}
        other = RawClient(server, "u", "p", source="127.0.0.3")
        t0 = time.monotonic()
        other.send_raw(Message(Method.BINDING).encode())
        assert decode(await other.recv()).cls == Class.SUCCESS
        assert time.monotonic() - t0 < 0.5
        for x in (c, other):
            x.close()


async def test_fec0_and_3fff_peers_refused() -> None:
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        c = RawClient(turn.addresses_of("udp")[0], "u", "p")
        await c.allocate()
        for ip in ("fec0::1", "3fff::1", "3fff:fff::abcd"):
            assert (await c.request(_permit((ip, 9)))).error_code.code == 403
        assert turn.stats()["refused_by_reason"]["special_purpose"] == 3
        c.close()


# -- several workers on the same listeners (--workers) -------------------------------------


async def _one_on_each_worker(
    listener: tuple[str, int], shares: list[tuple[int, int]], tries: int = 48
) -> list[tuple[RawClient, tuple[str, int]]]:
    """Clients from new source ports until one allocation landed in each relay port share
    (the kernel spreads sources over SO_REUSEPORT sockets by hash): [(client, relayed)]."""
    found: dict[int, tuple[RawClient, tuple[str, int]]] = {}
    spare: list[RawClient] = []
    lost = 0
    for _ in range(tries):
        c = RawClient(listener, "u", "p")
        if any(lo <= c.sock.getsockname()[1] <= hi for lo, hi in shares):
            # the kernel's ephemeral ports include the relay range: from a port of it on the
            # relay IP a request is from a relayed address of ours (a loop), never answered
            c.close()
            continue
        try:
            relayed = (await c.allocate()).get(Attr.XOR_RELAYED_ADDRESS)
        except TimeoutError:  # this client never retransmits: a lost reply, try another source
            lost += 1
            c.close()
            continue
        share = next(n for n, (lo, hi) in enumerate(shares) if lo <= relayed[1] <= hi)
        if share in found:
            spare.append(c)
        else:
            found[share] = (c, relayed)
        if len(found) == len(shares):
            break
    for c in spare:
        c.close()
    assert lost <= 2, f"{lost} of {tries} allocations got no answer"
    assert len(found) == len(shares), f"{tries} sources all landed on workers {sorted(found)}"
    return [found[n] for n in range(len(shares))]


@PATHS
@pytest.mark.parametrize("relay_to_relay", [True, False], ids=["relay-to-relay", "refused"])
async def test_workers_share_the_listener_split_the_ports_and_reach_each_other(
    fast: bool, relay_to_relay: bool
) -> None:
    """Two workers on one port (SO_REUSEPORT), each relaying from its own half of the range;
    an allocation on one reaches a relayed address of the other over the network (or is
    refused 403 with relay_to_relay off); the listener stays refused either way."""
    first = TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(fast),
        min_port=43000, max_port=43099, workers=2, relay_to_relay=relay_to_relay,
    )  # fmt: skip
    async with first:
        second = TurnServer(**first.worker_options(1))
        async with second:
            listener = first.addresses_of("udp")[0]
            assert second.addresses_of("udp") == [listener]
            assert (first.ports.low, first.ports.high) == (43000, 43049)
            assert (second.ports.low, second.ports.high) == (43050, 43099)
            (a, relay_a), (b, relay_b) = await _one_on_each_worker(
                listener, [(43000, 43049), (43050, 43099)]
            )
            assert (await a.request(_permit(listener))).error_code.code == 403
            # a port of this worker's share with no allocation (the sources that landed on a
            # worker already found keep theirs): not live, and this worker knows it
            live = {r.address[1] for al in first.engine.allocations.values() for r in al.relays}
            free = next(p for p in range(43000, 43050) if p not in live)
            assert (await a.request(_permit(("127.0.0.1", free)))).error_code.code == 403
            if not relay_to_relay:
                assert (await a.request(_permit(relay_b))).error_code.code == 403
                bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4000)
                bind.add(Attr.XOR_PEER_ADDRESS, relay_b)
                assert (await a.request(bind)).error_code.code == 403
            else:
                assert (await a.request(_permit(relay_b))).cls == Class.SUCCESS
                assert (await b.request(_permit(relay_a))).cls == Class.SUCCESS
                a.send_raw(_send(relay_b, b"hello b"))
                ind = decode(await b.recv())
                assert ind.get(Attr.DATA) == b"hello b"
                assert ind.get(Attr.XOR_PEER_ADDRESS) == relay_a
                # channels both ways: worker 1 -> worker 0 over the network, each once
                bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4001)
                assert (await b.request(bind.add(Attr.XOR_PEER_ADDRESS, relay_a))).cls == (
                    Class.SUCCESS
                )
                b.send_raw(encode_channel_data(0x4001, b"hello a"))
                assert decode(await a.recv()).get(Attr.DATA) == b"hello a"
                with pytest.raises(TimeoutError):
                    await a.recv(0.3)  # once, not in a loop
                with pytest.raises(TimeoutError):
                    await b.recv(0.1)
                assert first.stats()["to_peer_packets"] == 1
                assert second.stats()["to_peer_packets"] == 1
            a.close()
            b.close()


@PATHS
async def test_a_request_from_a_sibling_workers_relay_range_is_not_answered(fast: bool) -> None:
    """A source on the relay IP inside another worker's share of the relay range is one of
    its relayed addresses (a nested allocation, a loop): dropped, counted, on either path.
    (The workers test's clients must avoid those ports: the kernel may pick them.)"""
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, fast_path=_fast(fast), min_port=43400,
        max_port=43499, workers=2,
    ) as first:  # fmt: skip
        listener = first.addresses_of("udp")[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for port in range(43450, 43500):  # the sibling's share, 43450-43499
                with contextlib.suppress(OSError):
                    sock.bind(("127.0.0.1", port))
                    break
            sock.setblocking(False)
            sock.sendto(_allocate_bytes(), listener)
            for _ in range(200):  # the server runs on this loop: let it
                await asyncio.sleep(0.01)
                if first.stats()["from_own_relay"]:
                    break
            await asyncio.sleep(0.1)
            assert first.stats()["from_own_relay"] == 1
            with pytest.raises(BlockingIOError):
                sock.recv(2048)
        finally:
            sock.close()
        c = RawClient(listener, "u", "p")  # from an ephemeral port outside the shares
        if not 43400 <= c.sock.getsockname()[1] <= 43499:
            assert (await c.allocate()).cls == Class.SUCCESS
        c.close()


def test_worker_share_refuses_a_range_too_small_to_split() -> None:
    with pytest.raises(ConfigError, match="cannot be split") as info:
        TurnServer([("127.0.0.1", 0)], users={"u": "p"}, min_port=5000, max_port=5002, workers=2)
    assert info.value.param == "min_port"
    default = TurnServer([("127.0.0.1", 0)], users={"u": "p"}, workers=2, worker=1)
    assert (default.ports.low, default.ports.high) == (57344, 65535)


def test_cli_workers_serve_both_shares_and_stop_on_sigterm() -> None:
    """``--workers 2``: a second process on the same port, allocations land in both halves of
    the relay range, SIGTERM stops every process."""
    import json
    import signal

    proc, info = _serve_json(
        "--user", "u:p", "--workers", "2", "--min-port", "43200", "--max-port", "43299",
        "--allow-peer", "127.0.0.0/8",
    )  # fmt: skip
    try:
        assert info["workers"] == 2
        listener = ("127.0.0.1", info["addresses"][0]["port"])

        async def both() -> None:
            deadline = time.monotonic() + 20  # the second worker may still be starting
            while True:
                try:
                    pairs = await _one_on_each_worker(listener, [(43200, 43249), (43250, 43299)])
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            for c, _ in pairs:
                c.close()

        asyncio.run(both())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and json.loads(out)["stopped"] is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- several relay IPs of one family ---------------------------------------------------------


@PATHS
async def test_several_relay_ips_spread_allocations_and_each_holds_the_port_range(
    fast: bool,
) -> None:
    """Two relay IPs, two relay ports: four allocations (each IP holds every port of the
    range once), a fifth is refused 508; both IPs are the relay's own; a port freed on one
    IP serves the next allocation there."""
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, allow_peers=LOOP, fast_path=_fast(fast),
        relay_ip=["127.0.0.1", "127.0.0.3"], min_port=44000, max_port=44001,
    ) as turn:  # fmt: skip
        listener = turn.addresses_of("udp")[0]
        clients, relayed = [], []
        for _ in range(4):
            c = RawClient(listener, "u", "p")
            relayed.append((await c.allocate()).get(Attr.XOR_RELAYED_ADDRESS))
            clients.append(c)
        assert sorted(relayed) == [
            ("127.0.0.1", 44000), ("127.0.0.1", 44001), ("127.0.0.3", 44000), ("127.0.0.3", 44001)
        ]  # fmt: skip
        extra = RawClient(listener, "u", "p")
        assert (await extra.allocate()).error_code.code == 508
        # the second IP is the relay's own: a relayed address there is a peer (relay to
        # relay), the listener port on it is not
        assert (await clients[0].request(_permit(relayed[1]))).cls == Class.SUCCESS
        assert (await clients[0].request(_permit(("127.0.0.3", listener[1])))).error_code.code == 403
        gone = relayed.index(("127.0.0.3", 44001))
        delete = Message(Method.REFRESH).add(Attr.LIFETIME, 0)
        assert (await clients[gone].request(delete)).cls == Class.SUCCESS
        assert (await extra.allocate()).get(Attr.XOR_RELAYED_ADDRESS) == ("127.0.0.3", 44001)
        assert turn.stats()["relay_sockets"] == 4
        for c in (*clients, extra):
            c.close()


def test_relay_ip_errors_name_the_option() -> None:
    for kwargs, match in (
        ({"relay_ip": ["127.0.0.1", "127.0.0.1"]}, "given twice"),
        ({"relay_ip": ["0.0.0.0"]}, "not an address to relay from"),
        ({"relay_ip": ["127.0.0.1", "127.0.0.3"], "external_ip": "192.0.2.1"}, "one relay IP"),
    ):
        with pytest.raises(ConfigError, match=match) as info:
            TurnServer([("127.0.0.1", 0)], users={"u": "p"}, **kwargs)
        assert info.value.param in ("relay_ip", "external_ip")


async def test_workers_accept_each_others_nonces() -> None:
    """Workers share the first one's nonce secret: a client the kernel moves to another
    worker keeps its nonce (no 438), while a server on its own does not take it."""
    first = TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, min_port=43300, max_port=43399, workers=2
    )
    alone = TurnServer([("127.0.0.1", 0)], users={"u": "p"})
    assert first.nonce_secret is not None and alone.nonce_secret is None
    now = time.time()
    async with first:
        listener = first.addresses_of("udp")[0]
        async with TurnServer(**first.worker_options(1)) as other:
            assert other.nonce_secret == first.nonce_secret
            nonce = first.engine.nonces.issue("127.0.0.1", now)
            assert other.engine.nonces.valid(nonce, "127.0.0.1", now)
            assert not other.engine.nonces.valid(nonce, "127.0.0.2", now)  # bound to the IP
            assert not alone.engine.nonces.valid(nonce, "127.0.0.1", now)
            # the request path: a 401 from one worker, the authenticated Allocate on the other
            challenge = decode(
                first.engine.handle_client(None, ("127.0.0.1", 5), _allocate_bytes(), now)[0].data
            )
            assert challenge.error_code.code == 401
            request = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
            request.add(Attr.USERNAME, "u").add(Attr.REALM, challenge.get(Attr.REALM))
            request.add(Attr.NONCE, challenge.get(Attr.NONCE))
            key = long_term_key("u", challenge.get(Attr.REALM), "p")
            data = request.encode(key=key, fingerprint=True)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(("127.0.0.1", 0))
                sock.settimeout(5)
                source = sock.getsockname()
                udp = other._udp[0]
                other.run_actions(
                    other.engine.handle_client(udp, source, data, time.time()), udp, source
                )
                reply = decode(sock.recv(2048))
                assert reply.cls == Class.SUCCESS, reply.error_code
                assert listener == udp.address
            finally:
                sock.close()


def _allocate_bytes() -> bytes:
    return Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode()


def test_nonce_secret_must_be_bytes_of_16() -> None:
    with pytest.raises(ConfigError) as info:
        TurnServer([("127.0.0.1", 0)], users={"u": "p"}, nonce_secret=b"short")
    assert info.value.param == "nonce_secret"


async def test_the_c_allocate_path_follows_a_changed_password() -> None:
    """The C thread verifies static users' Allocates with keys the server hands it; a
    password changed in the live users mapping is its within a tick (0.5 s). (A relay port
    range: with kernel-picked relay ports on the clients' IP every request from that IP may
    come from a relay of ours, and the engine answers them all.)"""
    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, min_port=42000, max_port=42999, c_allocate=True
    ) as turn:
        served = turn.fast is not None and turn._fast_allocates
        a = RawClient(turn.addresses_of("udp")[0], "u", "p")
        assert (await a.allocate()).cls == Class.SUCCESS
        turn.engine.auth.users["u"] = "new"  # type: ignore[attr-defined]
        await asyncio.sleep(0.6)
        old = RawClient(turn.addresses_of("udp")[0], "u", "p")
        assert (await old.allocate()).cls == Class.ERROR
        # The thread may pass any one request to the engine (its error budget is earned by
        # requests that verify, credited a tick later); one of a few clients with the new
        # password is the thread's, or it never learned the password.
        before = turn.fast.control_stats()["allocations"] if turn.fast is not None else 0
        clients = [a, old]
        for _ in range(5):
            new = RawClient(turn.addresses_of("udp")[0], "u", "new")
            clients.append(new)
            assert (await new.allocate()).cls == Class.SUCCESS
            if not served or turn.fast is None:  # (the pure-Python path: the engine alone)
                break
            if turn.fast.control_stats()["allocations"] > before:
                break
            await asyncio.sleep(0.6)
        else:
            raise AssertionError("the C thread served no Allocate with the changed password")
        for c in clients:
            c.close()


def test_c_allocate_is_on_by_default_an_option_and_reaches_the_workers() -> None:
    assert TurnServer([("127.0.0.1", 0)], users={"u": "p"}).c_allocate is True
    off = TurnServer([("127.0.0.1", 0)], users={"u": "p"}, c_allocate=False)
    assert off.c_allocate is False and off.options.c_allocate is True  # the argument wins
    first = TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, min_port=43600, max_port=43699, workers=2,
        c_allocate=False,
    )  # fmt: skip
    assert first.worker_options(1)["options"].c_allocate is False


def test_cli_no_c_allocate_flag() -> None:
    from natkit.cli import build_parser
    from natkit.cli.serve_turn import options_from_args

    args = build_parser().parse_args(["serve", "turn", "--no-c-allocate", "--user", "a:b"])
    assert options_from_args(args).c_allocate is False
    args = build_parser().parse_args(["serve", "turn", "--user", "a:b"])
    assert options_from_args(args).c_allocate is True


async def test_any_port_skips_one_whose_tcp_twin_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Port 0 with TCP: the TCP listener needs the UDP port's number, which a TCP socket
    elsewhere may hold (an ephemeral port of a connection); another UDP port is taken then."""
    real = TurnServer._stream_socket
    refused: list[int] = []

    def busy_twice(self: TurnServer, ip: str, port: int) -> socket.socket:
        if len(refused) < 2:
            refused.append(port)
            raise OSError(98, "Address already in use")
        return real(self, ip, port)

    monkeypatch.setattr(TurnServer, "_stream_socket", busy_twice)
    async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}) as turn:
        (udp,), (tcp,) = turn.addresses_of("udp"), turn.addresses_of("tcp")
        assert udp == tcp and len(refused) == 2  # two UDP ports given up, the third kept


async def test_any_port_whose_tcp_twin_is_never_free_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(self: TurnServer, ip: str, port: int) -> socket.socket:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(TurnServer, "_stream_socket", busy)
    with pytest.raises(ConfigError, match=r"cannot listen on udp and tcp 127\.0\.0\.1 at one port number in 20 tries"):
        async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}):
            pass
