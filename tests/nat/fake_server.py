"""A scriptable STUN responder on loopback for tests: it can misbehave on purpose.

It listens on up to four UDP sockets (primary/alternate IP x primary/alternate port), like an
RFC 5780 server, and lets a test decide what each answer looks like: ignore CHANGE-REQUEST,
omit OTHER-ADDRESS, drop the first N requests (loss), rewrite MAPPED-ADDRESS (an ALG), lie
about the mapped address (to play a NAT), require long-term credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from natkit.server.coturn import free_port as server_free_port
from natkit.stun import (
    CHANGE_IP,
    CHANGE_PORT,
    Attr,
    Class,
    Message,
    StunParseError,
    decode,
    long_term_key,
    verify_integrity,
)
from tests._certs import ec_self_signed

Address = tuple[str, int]


def free_port(host: str = "127.0.0.1", count: int = 2) -> int:
    """A port p such that p..p+count-1 are free for UDP and TCP on host (best effort)."""
    return server_free_port(host, count)


@dataclass
class Behaviour:
    honour_change: bool = True  # answer CHANGE-REQUEST from the asked address
    other_address: bool = True
    response_origin: bool = True
    drop_first: int = 0  # drop this many requests (per server) before answering
    mapped: Callable[[Address, Address], Address] | None = None  # (client, local) -> reported
    plain_mapped: Callable[[Address], Address] | None = None  # MAPPED-ADDRESS; None: omit
    stray_first: bool = False  # send a response with a wrong transaction id first
    realm: str | None = None  # require long-term credentials
    users: dict[str, str] = field(default_factory=dict)
    nonce: str = "nonce-1"
    stale_once: bool = False  # answer the first authenticated request with 438
    silent: bool = False  # never answer


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, server: FakeStunServer, local: Address) -> None:
        self.server = server
        self.local = local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.handle(data, (addr[0], addr[1]), self.local)


class FakeStunServer:
    def __init__(
        self,
        ips: tuple[str, str] = ("127.0.0.1", "127.0.0.2"),
        port: int | None = None,
        behaviour: Behaviour | None = None,
    ) -> None:
        self.ips = ips
        self.port = port or free_port(ips[0])
        self.behaviour = behaviour or Behaviour()
        self.endpoints: dict[Address, _Proto] = {}
        self.requests: list[tuple[Address, Address, Message]] = []  # (client, local, msg)
        self._dropped = 0
        self._stale_sent = False
        self._tcp: asyncio.AbstractServer | None = None

    @property
    def primary(self) -> Address:
        return (self.ips[0], self.port)

    @property
    def alternate(self) -> Address:
        return (self.ips[1], self.port + 1)

    async def __aenter__(self) -> FakeStunServer:
        loop = asyncio.get_running_loop()
        for ip in dict.fromkeys(self.ips):
            for port in (self.port, self.port + 1):
                proto = _Proto(self, (ip, port))
                await loop.create_datagram_endpoint(lambda p=proto: p, local_addr=(ip, port))
                self.endpoints[(ip, port)] = proto
        return self

    async def start_tcp(self, ssl: Any = None, port: int | None = None) -> None:
        """Serve Binding over TCP (or TLS with an ``ssl.SSLContext``) on the primary IP."""
        self._tcp = await asyncio.start_server(
            self._tcp_client, self.ips[0], port or self.port, ssl=ssl
        )

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from natkit.stun import StreamFramer

        framer = StreamFramer()
        peer = writer.get_extra_info("peername")
        with contextlib.suppress(Exception):
            while chunk := await reader.read(4096):
                for frame in framer.feed(chunk):
                    req = decode(frame)
                    resp = req.response().add(Attr.XOR_MAPPED_ADDRESS, (peer[0], peer[1]))
                    writer.write(resp.encode())
        writer.close()

    async def __aexit__(self, *exc: object) -> None:
        for proto in self.endpoints.values():
            if proto.transport is not None:
                proto.transport.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    def handle(self, data: bytes, client: Address, local: Address) -> None:
        b = self.behaviour
        try:
            req = decode(data)
        except StunParseError:
            return
        if req.cls != Class.REQUEST:
            return
        self.requests.append((client, local, req))
        if b.silent:
            return
        if self._dropped < b.drop_first:
            self._dropped += 1
            return
        if b.realm is not None:
            err = self._check_auth(req)
            if err is not None:
                self._send(err, local, client)
                return
        change = int(req.get(Attr.CHANGE_REQUEST, 0) or 0)
        src = local
        if change and b.honour_change:
            ip = self.ips[1] if local[0] == self.ips[0] else self.ips[0]
            port = self.port + 1 if local[1] == self.port else self.port
            src = (
                ip if change & CHANGE_IP else local[0],
                port if change & CHANGE_PORT else local[1],
            )
        reported = b.mapped(client, local) if b.mapped else client
        resp = req.response().add(Attr.XOR_MAPPED_ADDRESS, reported)
        if b.plain_mapped is not None:
            resp.add(Attr.MAPPED_ADDRESS, b.plain_mapped(reported))
        if b.other_address:
            resp.add(Attr.OTHER_ADDRESS, self.alternate)
        if b.response_origin:
            resp.add(Attr.RESPONSE_ORIGIN, src)
        if b.stray_first:
            stray = Message(req.method, Class.SUCCESS).add(Attr.XOR_MAPPED_ADDRESS, ("1.2.3.4", 1))
            self._send(stray, src, client)
        key = None
        if b.realm is not None:
            user = req.get(Attr.USERNAME)
            key = long_term_key(user, b.realm, b.users[user])
        self._send(resp, src, client, key)

    def _check_auth(self, req: Message) -> Message | None:
        b = self.behaviour
        assert b.realm is not None
        user = req.get(Attr.USERNAME)
        if user is None or Attr.MESSAGE_INTEGRITY not in req:
            return req.error(401).add(Attr.REALM, b.realm).add(Attr.NONCE, b.nonce)
        if user not in b.users or not verify_integrity(
            req, long_term_key(user, b.realm, b.users[user])
        ):
            return req.error(401).add(Attr.REALM, b.realm).add(Attr.NONCE, b.nonce)
        if b.stale_once and not self._stale_sent:
            self._stale_sent = True
            b.nonce = "nonce-2"
            return req.error(438).add(Attr.REALM, b.realm).add(Attr.NONCE, b.nonce)
        if req.get(Attr.NONCE) != b.nonce:
            return req.error(438).add(Attr.REALM, b.realm).add(Attr.NONCE, b.nonce)
        return None

    def _send(self, msg: Message, src: Address, client: Address, key: bytes | None = None) -> None:
        proto = self.endpoints.get(src)
        if proto is not None and proto.transport is not None:
            proto.transport.sendto(msg.encode(key=key), client)


def self_signed(tmp: Any, ip: str = "127.0.0.1") -> tuple[Any, Any]:
    """(server SSLContext, client SSLContext trusting it) for a certificate valid for ``ip``."""
    import ssl

    certfile, keyfile, cert_pem = ec_self_signed(tmp, "natkit test", ip=ip, days=1 / 24)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certfile, keyfile)
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client
