"""An asyncio TURN client (RFC 8656) over UDP, TCP or TLS.

Allocate with the long-term credential dance (401 → REALM/NONCE → signed retry, 438 → new
nonce), Refresh, CreatePermission, ChannelBind, Send/Data indications and ChannelData. It also
does plain Binding requests, so one connection can test a STUN or TURN URL end to end.

Unlike a browser it never hides what the server said: error responses come back as
:class:`TurnError` with code and reason; a dead port, a TLS failure and silence are told apart
(:class:`TurnConnectionError`, :class:`TurnTlsError`, :class:`TurnTimeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from natkit.client.stun import Transactions, retransmit
from natkit.errors import ConfigError, ProtocolError
from natkit.stun import (
    ALGORITHM_SHA256,
    Attr,
    Class,
    Message,
    Method,
    StreamFramer,
    StunParseError,
    decode_channel_data,
    encode_channel_data,
    long_term_key,
    verify_integrity,
)

Address = tuple[str, int]
TRANSPORT_UDP = 17
SOFTWARE = "natkit"


def peer_address(peer: object) -> Address:
    """A peer for CreatePermission as ``(ip, port)``: an IP string (port 0), ``"IP:PORT"``,
    ``"[v6]:PORT"`` or an ``(ip, port)`` tuple. ConfigError (param ``peer``) otherwise."""
    import ipaddress

    host: object
    port: object = 0
    if isinstance(peer, str):
        text = peer.strip()
        host = text
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
                raise ConfigError(f"peer {peer!r}: expected IP, IP:PORT or [IPv6]:PORT", param="peer")
            host, rest = text[1:end], text[end + 2 :]
            port = rest if rest else 0
        elif text.count(":") == 1:
            host, port = text.split(":")
    elif isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
    else:
        raise ConfigError(f"peer {peer!r}: expected IP, IP:PORT or an (ip, port) tuple", param="peer")
    try:
        if not isinstance(host, str) or isinstance(port, bool):
            raise TypeError
        ip = str(ipaddress.ip_address(host))
        number = int(port)  # type: ignore[call-overload]
    except (ValueError, TypeError):
        raise ConfigError(f"peer {peer!r}: expected IP, IP:PORT or an (ip, port) tuple", param="peer") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"peer {peer!r}: port must be 0..65535", param="peer")
    return ip, number


class TurnClientError(ProtocolError):
    """Base of the TURN client's errors."""


class TurnError(TurnClientError):
    """The server answered with an error response."""

    def __init__(self, method: str, code: int, reason: str, response: Message | None = None):
        super().__init__(f"{method}: {code} {reason}".rstrip())
        self.method = method
        self.code = code
        self.reason = reason
        self.response = response


class TurnTimeout(TurnClientError, TimeoutError):
    """No answer within the retransmission schedule or the time allowed."""


class TurnConnectionError(TurnClientError):
    """The connection failed: refused (ICMP port unreachable on UDP), reset, closed."""


class TurnTlsError(TurnConnectionError):
    """The TLS handshake failed (certificate not trusted, wrong name, protocol error)."""

    def __init__(self, message: str, verify_error: bool = False) -> None:
        super().__init__(message)
        self.verify_error = verify_error


class TurnIntegrityError(TurnClientError):
    """A signed response failed its MESSAGE-INTEGRITY check."""


@dataclass(frozen=True)
class Allocation:
    """``relayed``: the first XOR-RELAYED-ADDRESS; ``relayed_all``: every one (two after a
    dual allocation, RFC 8656 §7.1); ``family_errors``: (family 4/6, code, reason) of each
    ADDRESS-ERROR-CODE, a family that was asked for but could not be allocated."""

    relayed: Address
    mapped: Address | None
    lifetime: int
    relayed_all: tuple[Address, ...] = ()
    family_errors: tuple[tuple[int, int, str], ...] = ()

    def relayed_for(self, family: int) -> Address | None:
        """The relayed address of ``family`` (4 or 6), or None."""
        for addr in self.relayed_all or (self.relayed,):
            if (6 if ":" in addr[0] else 4) == family:
                return addr
        return None


@dataclass(frozen=True)
class Received:
    """Data relayed to us: from a Data indication or a ChannelData message."""

    peer: Address | None
    data: bytes
    channel: int | None = None


_FAMILY_CODES = {4: 1, 6: 2}  # REQUESTED-/ADDITIONAL-ADDRESS-FAMILY values (RFC 8656 §18)


def _norm(addr: Any) -> Address:
    return (str(addr[0]).split("%", 1)[0], int(addr[1]))


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _method_name(method: int) -> str:
    try:
        return Method(method).name.replace("_", "-")
    except ValueError:
        return f"method 0x{method:03x}"


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: TurnClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._on_packet(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, PermissionError):
            self.client._fail(
                TurnConnectionError(
                    f"this host may not send UDP to {_fmt(self.client.server)}: a local "
                    "firewall refuses it (EPERM)"
                )
            )
            return
        # Linux reports ICMP port unreachable on a connected UDP socket: nothing listens there.
        if isinstance(exc, ConnectionRefusedError):
            self.client._fail(
                TurnConnectionError(
                    f"{_fmt(self.client.server)} refused UDP (ICMP port unreachable): "
                    "nothing listens on that port"
                )
            )

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class TurnClient:
    """One TURN (or STUN) client connection. ``await TurnClient.connect(...)``, then use the
    methods; ``async with`` or :meth:`close` releases the allocation and the socket."""

    def __init__(
        self,
        server: Address,
        protocol: str = "udp",
        username: str | None = None,
        password: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        rto: float = 0.25,
        rc: int = 7,
        timeout: float = 5.0,
        software: str | None = SOFTWARE,
    ) -> None:
        if protocol not in ("udp", "tcp", "tls"):
            raise ConfigError(f"expected udp, tcp or tls, not {protocol!r}", param="protocol")
        self.server = server
        self.protocol = protocol
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.rto = rto
        self.rc = rc
        self.timeout = timeout
        self.software = software
        self.realm: str | None = None
        self.nonce: str | None = None
        self._algorithm: Any = None
        self._algorithms: Any = None
        self.allocation: Allocation | None = None
        self.local_address: Address | None = None
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.peer_certificate: bytes | None = None  # DER
        self._tx = Transactions()  # the same transaction table as the STUN clients
        self._tx.on_indication = self._on_indication
        self._tx.on_channel_data = self._on_channel_data
        self._received: asyncio.Queue[Received] = asyncio.Queue(maxsize=1024)
        self._channels: dict[int, Address] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._error: TurnClientError | None = None

    @property
    def unmatched(self) -> int:
        """Packets that matched no transaction and carried no relayed data."""
        return self._tx.stray

    # -- connection ----------------------------------------------------------------------------

    @classmethod
    async def connect(cls, server: Address, protocol: str = "udp", **kw: Any) -> TurnClient:
        client = cls(server, protocol, **kw)
        await client.open()
        return client

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._error = None
        if self.protocol == "udp":
            family = socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), remote_addr=self.server, family=family
                )
            except OSError as exc:
                raise TurnConnectionError(
                    f"cannot send UDP to {_fmt(self.server)}: {exc.strerror or exc}"
                ) from None
            self._udp = transport
            self.local_address = _norm(transport.get_extra_info("sockname"))
            return
        ctx = None
        if self.protocol == "tls":
            ctx = self.ssl_context or ssl.create_default_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.server[0],
                    self.server[1],
                    ssl=ctx,
                    server_hostname=(self.server_hostname or self.server[0]) if ctx else None,
                    ssl_handshake_timeout=self.timeout if ctx else None,
                ),
                self.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise TurnTlsError(
                f"TLS certificate of {_fmt(self.server)} rejected: "
                f"{exc.verify_message or exc.reason}",
                verify_error=True,
            ) from None
        except ssl.SSLError as exc:
            raise TurnTlsError(
                f"TLS handshake with {_fmt(self.server)} failed: {exc.reason or exc}"
            ) from None
        except ConnectionRefusedError:
            raise TurnConnectionError(
                f"{_fmt(self.server)} refused the TCP connection: nothing listens on that port"
            ) from None
        except TimeoutError:
            raise TurnTimeout(
                f"no {self.protocol.upper()} connection to {_fmt(self.server)} within "
                f"{self.timeout:.1f} s"
            ) from None
        except OSError as exc:
            raise TurnConnectionError(
                f"cannot connect to {_fmt(self.server)}: {exc.strerror or exc}"
            ) from None
        self._writer = writer
        self.local_address = _norm(writer.get_extra_info("sockname"))
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls_version = sslobj.version()
            cipher = sslobj.cipher()
            self.tls_cipher = cipher[0] if cipher else None
            self.peer_certificate = sslobj.getpeercert(binary_form=True)
        self._reader_task = loop.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    self._fail(
                        TurnConnectionError(
                            f"{_fmt(self.server)} closed the {self.protocol.upper()} connection"
                        )
                    )
                    return
                for frame in framer.feed(chunk):
                    self._on_packet(frame)
        except StunParseError as exc:
            self._fail(TurnConnectionError(f"{_fmt(self.server)} sent garbage: {exc}"))
        except (OSError, ssl.SSLError) as exc:
            self._fail(TurnConnectionError(f"connection to {_fmt(self.server)} failed: {exc}"))

    def _fail(self, exc: TurnClientError) -> None:
        self._error = exc
        self._tx.fail_all(exc)

    def _send(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data)
        elif self._writer is not None:
            self._writer.write(data)
        else:
            raise TurnConnectionError("client is not connected")

    async def close(self, *, release: bool = True, release_timeout: float | None = None) -> None:
        """Release the allocation (Refresh with LIFETIME 0, best effort, waiting at most
        ``release_timeout``, default min(timeout, 1 s)) and disconnect."""
        wait = min(self.timeout, 1.0) if release_timeout is None else release_timeout
        if release and wait > 0 and self.allocation is not None and self._error is None:
            with contextlib.suppress(TurnClientError, TimeoutError, OSError):
                await asyncio.wait_for(self.refresh(0), wait)
        self.allocation = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 0.5)
        if self._udp is not None:
            self._udp.close()
        self._fail(TurnConnectionError("client closed"))

    async def __aenter__(self) -> TurnClient:
        if self._udp is None and self._writer is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- incoming ------------------------------------------------------------------------------

    def _on_packet(self, data: bytes) -> None:
        if data:
            self._tx.deliver(data, self.server, asyncio.get_running_loop().time())

    def _on_channel_data(self, data: bytes, source: Address) -> None:
        try:
            channel, payload = decode_channel_data(data)
        except StunParseError:
            self._tx.stray += 1
            return
        self._queue(Received(self._channels.get(channel), payload, channel))

    def _on_indication(self, msg: Message, source: Address) -> None:
        if msg.method != Method.DATA:
            self._tx.stray += 1
            return
        peer, payload = msg.get(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)
        if peer is not None and payload is not None:
            self._queue(Received(_norm(peer), bytes(payload)))

    def _queue(self, item: Received) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._received.put_nowait(item)

    async def receive(self, timeout: float | None = None) -> Received:
        """The next datagram relayed to us (Data indication or ChannelData)."""
        try:
            return await asyncio.wait_for(self._received.get(), timeout or self.timeout)
        except TimeoutError:
            raise TurnTimeout("nothing relayed to us in time") from None

    # -- transactions --------------------------------------------------------------------------

    async def transact(self, msg: Message, key: bytes | None = None) -> Message:
        """Send a request and return the response (success or error). UDP retransmits per
        RFC 8489 §6.2.1 (RTO doubling, Rc sends); the whole is cut at ``timeout``."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        tid = msg.transaction_id
        fut = self._tx.expect(tid)
        data = msg.encode(key=key, fingerprint=True)
        deadline = loop.time() + self.timeout
        try:
            if self._udp is None:
                self._send(data)
                return (await asyncio.wait_for(fut, self.timeout))[0]
            # RFC 8489 §6.2.1: after the last send, wait Rm (16) initial RTOs; the whole
            # exchange is cut at ``timeout`` either way.
            await retransmit(
                lambda: self._send(data), fut, rto=self.rto, rc=self.rc, rm=16, deadline=deadline
            )
            if fut.done():
                return fut.result()[0]
            raise TimeoutError
        except TimeoutError:
            raise TurnTimeout(
                f"no answer from {_fmt(self.server)} over {self.protocol.upper()} to "
                f"{_method_name(msg.method)} within {self.timeout:.1f} s"
            ) from None
        finally:
            self._tx.pending.pop(tid, None)

    def _key(self) -> bytes:
        assert self.username is not None and self.password is not None and self.realm
        algorithm = self._algorithm.algorithm if self._algorithm is not None else 1
        return long_term_key(self.username, self.realm, self.password, algorithm)

    def learn(self, resp: Message) -> bool:
        """Take REALM/NONCE (and PASSWORD-ALGORITHMS) from a 401/438; True if usable."""
        nonce, realm = resp.get(Attr.NONCE), resp.get(Attr.REALM)
        if nonce is None or (realm is None and self.realm is None):
            return False
        self.nonce = nonce
        if realm is not None:
            self.realm = realm
        algorithms = resp.get(Attr.PASSWORD_ALGORITHMS)
        if algorithms:
            self._algorithms = algorithms
            sha = [a for a in algorithms if a.algorithm == ALGORITHM_SHA256]
            self._algorithm = sha[0] if sha else algorithms[0]
        return True

    async def request(
        self,
        method: int,
        attributes: list[tuple[int, Any]] = (),  # type: ignore[assignment]
        *,
        authenticate: bool = True,
    ) -> Message:
        """Send a request with the long-term credential dance; returns the final response,
        which may be an error (401 after credentials means they were rejected)."""
        can_sign = authenticate and self.username is not None and self.password is not None
        resp: Message | None = None
        for _ in range(3):
            msg = Message(method, Class.REQUEST)
            for attr, value in attributes:
                msg.add(attr, value)
            if self.software:
                msg.add(Attr.SOFTWARE, self.software)
            key = None
            if can_sign and self.nonce is not None:
                msg.add(Attr.USERNAME, self.username).add(Attr.REALM, self.realm)
                msg.add(Attr.NONCE, self.nonce)
                if self._algorithm is not None:
                    msg.add(Attr.PASSWORD_ALGORITHMS, self._algorithms)
                    msg.add(Attr.PASSWORD_ALGORITHM, self._algorithm)
                key = self._key()
            resp = await self.transact(msg, key)
            code = resp.error_code
            if resp.cls == Class.ERROR and code is not None and can_sign:
                if code.code == 401 and key is None and self.learn(resp):
                    continue
                if code.code == 438 and self.learn(resp):
                    continue
            if (
                key is not None
                and resp.cls == Class.SUCCESS
                and (Attr.MESSAGE_INTEGRITY in resp or Attr.MESSAGE_INTEGRITY_SHA256 in resp)
                and not verify_integrity(resp, key)
            ):
                raise TurnIntegrityError(
                    f"{_method_name(method)} response from {_fmt(self.server)} failed its "
                    "MESSAGE-INTEGRITY check"
                )
            return resp
        assert resp is not None
        return resp

    async def _checked(
        self, method: int, attributes: list[tuple[int, Any]], authenticate: bool = True
    ) -> Message:
        resp = await self.request(method, attributes, authenticate=authenticate)
        if resp.cls == Class.ERROR:
            code = resp.error_code
            raise TurnError(
                _method_name(method),
                code.code if code else 0,
                code.reason if code else "error response without ERROR-CODE",
                resp,
            )
        return resp

    # -- operations ----------------------------------------------------------------------------

    async def binding(self) -> Address:
        """A Binding request; our address as the server sees it (XOR-MAPPED-ADDRESS)."""
        resp = await self._checked(Method.BINDING, [], authenticate=False)
        mapped = resp.get(Attr.XOR_MAPPED_ADDRESS) or resp.get(Attr.MAPPED_ADDRESS)
        if mapped is None:
            raise TurnError("BINDING", 0, "success response without XOR-MAPPED-ADDRESS", resp)
        return _norm(mapped)

    async def allocate(
        self,
        lifetime: int | None = None,
        *,
        authenticate: bool = True,
        family: int | None = None,
        dual: bool = False,
    ) -> Allocation:
        """Allocate a relayed address. ``family``: REQUESTED-ADDRESS-FAMILY, 4 or 6 (the RFC's
        codes 1 and 2 are taken too); ``dual``: ADDITIONAL-ADDRESS-FAMILY IPv6, an IPv4 and
        an IPv6 relayed address at once (RFC 8656 §7.1; a server without IPv6 relaying still
        allocates IPv4 and says why in ``family_errors``). A refusal raises TurnError (440
        Address Family not Supported, ...)."""
        if family is not None and dual:
            raise ValueError("family and dual exclude each other (RFC 8656 §7.1)")
        attrs: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, TRANSPORT_UDP)]
        if lifetime is not None:
            attrs.append((Attr.LIFETIME, lifetime))
        if family is not None:
            attrs.append((Attr.REQUESTED_ADDRESS_FAMILY, _FAMILY_CODES.get(family, family)))
        if dual:
            attrs.append((Attr.ADDITIONAL_ADDRESS_FAMILY, _FAMILY_CODES[6]))
        resp = await self._checked(Method.ALLOCATE, attrs, authenticate)
        relayed_all = tuple(_norm(a) for a in resp.get_all(Attr.XOR_RELAYED_ADDRESS))
        if not relayed_all:
            raise TurnError("ALLOCATE", 0, "success without XOR-RELAYED-ADDRESS", resp)
        errors = tuple(
            (6 if e.family == _FAMILY_CODES[6] else 4, e.code, e.reason)
            for e in resp.get_all(Attr.ADDRESS_ERROR_CODE)
        )
        mapped = resp.get(Attr.XOR_MAPPED_ADDRESS)
        self.allocation = Allocation(
            relayed_all[0],
            _norm(mapped) if mapped else None,
            int(resp.get(Attr.LIFETIME, 0)),
            relayed_all,
            errors,
        )
        return self.allocation

    async def refresh(self, lifetime: int = 600) -> int:
        resp = await self._checked(Method.REFRESH, [(Attr.LIFETIME, lifetime)])
        if lifetime == 0:
            self.allocation = None
        return int(resp.get(Attr.LIFETIME, lifetime))

    async def create_permission(self, *peers: str | Address) -> None:
        """Install permissions for ``peers``, each an IP (``"192.0.2.1"``, ``"2001:db8::1"``),
        ``"IP:PORT"`` / ``"[v6]:PORT"``, or an ``(ip, port)`` tuple; ConfigError (param
        ``peer``) for anything else, before a request is sent."""
        # a permission is for the IP (RFC 8656 §9); the port of a peer given with one goes
        # along all the same, so a server that refuses whole addresses (its own relayed ones)
        # can say so
        attrs: list[tuple[int, Any]] = [(Attr.XOR_PEER_ADDRESS, peer_address(p)) for p in peers]
        await self._checked(Method.CREATE_PERMISSION, attrs)

    async def channel_bind(self, peer: Address, channel: int = 0x4000) -> int:
        await self._checked(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)]
        )
        self._channels[channel] = peer
        return channel

    def send_to(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer`` in a Send indication."""
        msg = Message(Method.SEND, Class.INDICATION)
        msg.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data)
        self._send(msg.encode())

    def send_channel(self, channel: int, data: bytes) -> None:
        """Relay ``data`` on a bound channel (ChannelData, padded on TCP/TLS)."""
        self._send(encode_channel_data(channel, data, pad=self.protocol != "udp"))
