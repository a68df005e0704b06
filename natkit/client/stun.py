"""asyncio STUN client transactions over UDP, TCP and TLS.

* UDP: RFC 8489 §6.2.1 retransmission: the request is sent at 0, RTO, 3·RTO, 7·RTO, … (Rc
  transmissions), then the client waits Rm·RTO for the last one; a ``deadline`` cuts this short.
  The RTO adapts to measured round-trip times (RFC 6298 smoothing, :class:`RtoEstimator`).
* TCP/TLS: one transmission, answered on the same connection (RFC 8489 §6.2.2).
* Responses are matched by transaction id only, never by where they came from: a response to a
  CHANGE-REQUEST legitimately comes from another address. Every :class:`Response` carries the
  actual sender, so callers (the NAT probe) can check it against what they asked for.
* Optional long-term (401 REALM/NONCE, 438 stale nonce) and short-term credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from natkit.errors import ProtocolError
from natkit.stun import (
    ALGORITHM_SHA256,
    Attr,
    Class,
    Message,
    PacketKind,
    PasswordAlgorithm,
    StreamFramer,
    StunParseError,
    classify_packet,
    decode,
    long_term_key,
    short_term_key,
    verify_integrity,
)

Address = tuple[str, int]

DEFAULT_RC = 7  # RFC 8489 §6.2.1
DEFAULT_RM = 16


class StunTimeout(ProtocolError, TimeoutError):
    """No response arrived within the retransmission schedule or the deadline."""

    def __init__(self, message: str, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class StunAuthError(ProtocolError):
    """The server rejected the credentials or its response failed the integrity check."""


class StunConnectionError(ProtocolError, ConnectionError):
    """A TCP/TLS connection to the server failed (refused, reset, handshake, no route).
    Also a ConnectionError (an OSError), so ``except OSError`` keeps working."""


@dataclass(frozen=True)
class LongTermCredentials:
    username: str
    password: str


@dataclass(frozen=True)
class ShortTermCredentials:
    username: str
    password: str


Credentials = LongTermCredentials | ShortTermCredentials


@dataclass(frozen=True)
class Response:
    """A response and how it arrived."""

    message: Message
    source: Address  # the actual sender (UDP) or the peer of the connection (TCP/TLS)
    local: Address  # our socket's address
    rtt: float  # seconds from the last transmission to the response
    attempts: int  # transmissions made
    elapsed: float  # seconds from the first transmission to the response

    @property
    def ok(self) -> bool:
        return self.message.cls == Class.SUCCESS


class RtoEstimator:
    """RTO from measured round trips (RFC 6298 §2 smoothing, clamped to [minimum, maximum]).

    Before any sample the RTO is ``initial`` (RFC 8489 recommends 500 ms on the internet)."""

    def __init__(self, initial: float = 0.5, minimum: float = 0.05, maximum: float = 3.0) -> None:
        self.initial = initial
        self.minimum = minimum
        self.maximum = maximum
        self.srtt: float | None = None
        self.rttvar: float | None = None

    def sample(self, rtt: float) -> None:
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    @property
    def rto(self) -> float:
        if self.srtt is None or self.rttvar is None:
            return self.initial
        return min(self.maximum, max(self.minimum, self.srtt + 4 * self.rttvar))


def _norm(addr: Any) -> Address:
    return (str(addr[0]).split("%", 1)[0], int(addr[1]))


def local_address_toward(dest: Address) -> str | None:
    """The local IP the kernel would use to reach ``dest`` (a connected UDP socket's address,
    which, unlike 0.0.0.0, is comparable with a mapped address). None when there is no route."""
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(dest)
        except OSError:
            return None
        return _norm(s.getsockname())[0]


@dataclass
class _Auth:
    """Long-term auth state kept across requests on one client (realm and nonce)."""

    credentials: Credentials
    realm: str | None = None
    nonce: str | None = None
    algorithm: PasswordAlgorithm | None = None
    algorithms: Any = None

    def key(self) -> bytes:
        c = self.credentials
        if isinstance(c, ShortTermCredentials):
            return short_term_key(c.password)
        assert self.realm is not None
        if self.algorithm is not None:
            return long_term_key(c.username, self.realm, c.password, self.algorithm)
        return long_term_key(c.username, self.realm, c.password)

    def ready(self) -> bool:
        return isinstance(self.credentials, ShortTermCredentials) or (
            self.realm is not None and self.nonce is not None
        )

    def sign(self, msg: Message) -> Message:
        """A copy of ``msg`` (new transaction id) with the auth attributes added."""
        out = Message(msg.method, msg.cls)
        for t, v in msg.attributes:
            if t not in (
                Attr.USERNAME,
                Attr.REALM,
                Attr.NONCE,
                Attr.PASSWORD_ALGORITHM,
                Attr.PASSWORD_ALGORITHMS,
            ):
                out.add(t, v)
        out.add(Attr.USERNAME, self.credentials.username)
        if isinstance(self.credentials, LongTermCredentials):
            out.add(Attr.REALM, self.realm).add(Attr.NONCE, self.nonce)
            if self.algorithm is not None:
                out.add(Attr.PASSWORD_ALGORITHMS, self.algorithms)
                out.add(Attr.PASSWORD_ALGORITHM, self.algorithm)
        return out

    def learn(self, resp: Message) -> bool:
        """Take REALM/NONCE (and PASSWORD-ALGORITHMS) from a 401/438; True if retrying helps."""
        realm, nonce = resp.get(Attr.REALM), resp.get(Attr.NONCE)
        if nonce is None or (realm is None and self.realm is None):
            return False
        if realm is not None:
            self.realm = realm
        self.nonce = nonce
        algs = resp.get(Attr.PASSWORD_ALGORITHMS)
        if algs:
            self.algorithms = algs
            # Prefer SHA-256 when offered (RFC 8489 §9.2.3), else the first one given.
            sha = [a for a in algs if a.algorithm == ALGORITHM_SHA256]
            self.algorithm = sha[0] if sha else algs[0]
        return True


class Transactions:
    """Pending transactions by id, shared by the STUN clients here and the TURN client.

    Responses go to the transaction with their id, requests to ``awaited_requests`` or
    ``on_request``; a TURN client also takes indications (``on_indication``) and ChannelData
    (``on_channel_data``). Everything else is counted in ``stray``."""

    def __init__(self) -> None:
        self.pending: dict[bytes, asyncio.Future[tuple[Message, Address, float]]] = {}
        self.awaited_requests: dict[bytes, asyncio.Future[tuple[Message, Address]]] = {}
        self.on_request: Callable[[Message, Address], None] | None = None
        self.on_indication: Callable[[Message, Address], None] | None = None
        self.on_channel_data: Callable[[bytes, Address], None] | None = None
        self.stray = 0

    def deliver(self, data: bytes, addr: Address, now: float) -> None:
        if (
            self.on_channel_data is not None
            and data
            and classify_packet(data[0]) is PacketKind.CHANNEL_DATA
        ):
            self.on_channel_data(data, addr)
            return
        try:
            msg = decode(data)
        except StunParseError:
            self.stray += 1
            return
        tid = msg.transaction_id
        if msg.cls in (Class.SUCCESS, Class.ERROR):
            fut = self.pending.get(tid)
            if fut is not None and not fut.done():
                fut.set_result((msg, addr, now))
                return
        elif msg.cls == Class.REQUEST:
            waiter = self.awaited_requests.get(tid)
            if waiter is not None and not waiter.done():
                waiter.set_result((msg, addr))
                return
            if self.on_request is not None:
                self.on_request(msg, addr)
                return
        elif msg.cls == Class.INDICATION and self.on_indication is not None:
            self.on_indication(msg, addr)
            return
        self.stray += 1

    def expect(self, transaction_id: bytes) -> asyncio.Future[tuple[Message, Address, float]]:
        """A future for the response with this id: (message, sender, arrival time). The caller
        removes it from ``pending`` when done (see :func:`retransmit` users)."""
        fut: asyncio.Future[tuple[Message, Address, float]] = (
            asyncio.get_running_loop().create_future()
        )
        self.pending[transaction_id] = fut
        return fut

    def fail_all(self, exc: BaseException) -> None:
        for fut in list(self.pending.values()) + list(self.awaited_requests.values()):
            if not fut.done():
                fut.set_exception(exc)


async def retransmit(
    send: Callable[[], None],
    answer: asyncio.Future[Any],
    *,
    rto: float,
    rc: int = DEFAULT_RC,
    rm: int = DEFAULT_RM,
    deadline: float | None = None,
    on_transmit: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """RFC 8489 §6.2.1 over UDP: ``send()`` at 0, RTO, 3·RTO, 7·RTO, … (``rc`` transmissions),
    then wait ``rm``·RTO, until ``answer`` is done; ``deadline`` (``loop.time()`` units) cuts
    this short. Returns (transmissions made, time of the last one); the caller looks at
    ``answer`` to tell an answer from a timeout. ``on_transmit`` is called at every send."""
    loop = asyncio.get_running_loop()
    attempts = 0
    wait = rto
    sent_at = loop.time()
    while True:
        if deadline is not None and loop.time() >= deadline:
            break
        send()
        attempts += 1
        if on_transmit is not None:
            on_transmit()
        sent_at = loop.time()
        timeout = rto * rm if attempts >= rc else wait
        if deadline is not None:
            timeout = min(timeout, deadline - sent_at)
        done, _ = await asyncio.wait({answer}, timeout=max(0.0, timeout))
        if done or attempts >= rc:
            break
        wait *= 2
    return attempts, sent_at


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, tx: Transactions) -> None:
        self.tx = tx
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.tx.deliver(data, _norm(addr), self.loop.time())

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) arrive here on Linux; retransmission handles them.
        pass


class UdpStunClient:
    """STUN transactions on one UDP socket (one local transport address = one NAT mapping).

    Use ``await UdpStunClient.open(...)``; ``async with`` closes it."""

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        tx: Transactions,
        rto: RtoEstimator,
        credentials: Credentials | None,
    ) -> None:
        self._transport = transport
        self._tx = tx
        self.rto = rto
        self._auth = _Auth(credentials) if credentials is not None else None
        self.local_address: Address = _norm(transport.get_extra_info("sockname"))

    @classmethod
    async def open(
        cls,
        local: Address | None = None,
        *,
        family: int | None = None,
        rto: RtoEstimator | None = None,
        credentials: Credentials | None = None,
    ) -> UdpStunClient:
        """Bind a UDP socket to ``local`` (default: any address, any port, of ``family``)."""
        if family is None:
            family = socket.AF_INET6 if local is not None and ":" in local[0] else socket.AF_INET
        if local is None:
            local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(local)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        tx = Transactions()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(tx), sock=sock)
        return cls(transport, tx, rto or RtoEstimator(), credentials)

    async def __aenter__(self) -> UdpStunClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tx.fail_all(StunTimeout("client closed"))
        self._transport.close()

    @property
    def stray(self) -> int:
        """Datagrams that matched no transaction (late duplicates, garbage)."""
        return self._tx.stray

    def send_raw(self, data: bytes, dest: Address) -> None:
        self._transport.sendto(data, dest)

    def expect_request(self, transaction_id: bytes) -> asyncio.Future[tuple[Message, Address]]:
        """A future for an incoming *request* with this transaction id (hairpinning: our own
        request coming back to us through the NAT)."""
        fut: asyncio.Future[tuple[Message, Address]] = asyncio.get_running_loop().create_future()
        self._tx.awaited_requests[transaction_id] = fut
        fut.add_done_callback(lambda _: self._tx.awaited_requests.pop(transaction_id, None))
        return fut

    def expect_response(
        self, transaction_id: bytes
    ) -> asyncio.Future[tuple[Message, Address, float]]:
        """A future for a response with this transaction id to a request this socket did not
        send itself (RESPONSE-PORT: another socket asked for the answer to come here)."""
        fut = self._tx.expect(transaction_id)
        fut.add_done_callback(lambda _: self._tx.pending.pop(transaction_id, None))
        return fut

    async def transact(
        self,
        msg: Message,
        dest: Address,
        *,
        rto: float | None = None,
        rc: int = DEFAULT_RC,
        rm: int = DEFAULT_RM,
        deadline: float | None = None,
        key: bytes | None = None,
        fingerprint: bool = False,
        on_transmit: Callable[[], None] | None = None,
    ) -> Response:
        """Send ``msg`` to ``dest`` with retransmissions until a response with its transaction
        id arrives (from any address). ``deadline`` is in ``loop.time()`` units. Raises
        :class:`StunTimeout`. The RTT of an unambiguous exchange feeds the RTO estimator.
        ``on_transmit`` is called at every transmission (to count them if the caller cancels)."""
        loop = asyncio.get_running_loop()
        data = msg.encode(key=key, fingerprint=fingerprint)
        tid = msg.transaction_id
        fut = self._tx.expect(tid)
        start = loop.time()

        def send() -> None:
            try:
                self._transport.sendto(data, dest)
            except OSError:
                pass  # e.g. no route for now: counts as a lost transmission

        try:
            attempts, sent_at = await retransmit(
                send,
                fut,
                rto=self.rto.rto if rto is None else rto,
                rc=rc,
                rm=rm,
                deadline=deadline,
                on_transmit=on_transmit,
            )
            if fut.done():
                reply, source, when = fut.result()
                rtt = when - sent_at
                if attempts == 1:
                    self.rto.sample(rtt)  # Karn: only unambiguous samples
                return Response(reply, source, self.local_address, rtt, attempts, when - start)
        finally:
            self._tx.pending.pop(tid, None)
        raise StunTimeout(
            f"no response from {dest[0]}:{dest[1]} after {attempts} transmissions "
            f"in {loop.time() - start:.2f}s",
            attempts,
        )

    async def request(self, msg: Message, dest: Address, **kw: Any) -> Response:
        """:meth:`transact` plus the configured credentials: signs the request, answers a 401
        or a 438 once, and checks the integrity of the response."""
        if self._auth is None:
            return await self.transact(msg, dest, **kw)
        return await _authenticated(
            self._auth, msg, lambda m, k: self.transact(m, dest, key=k, **kw)
        )


async def _authenticated(
    auth: _Auth, msg: Message, send: Callable[[Message, bytes | None], Any]
) -> Response:
    tries = 0
    while True:
        tries += 1
        if auth.ready():
            signed = auth.sign(msg)
            key: bytes | None = auth.key()
            resp: Response = await send(signed, key)
        else:
            key = None
            resp = await send(msg, None)
        code = resp.message.error_code
        if (
            code is not None
            and code.code in (401, 438)
            and tries < 3
            and not isinstance(auth.credentials, ShortTermCredentials)
        ):
            if auth.learn(resp.message) and (code.code == 438 or key is None):
                continue
            raise StunAuthError(f"credentials rejected: {code.code} {code.reason}")
        if (
            key is not None
            and resp.message.cls == Class.SUCCESS
            and (
                Attr.MESSAGE_INTEGRITY in resp.message
                or Attr.MESSAGE_INTEGRITY_SHA256 in resp.message
            )
            and not verify_integrity(resp.message, key)
        ):
            raise StunAuthError("response failed the MESSAGE-INTEGRITY check")
        return resp


@dataclass
class _Stream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    framer: StreamFramer = field(default_factory=StreamFramer)


class StreamStunClient:
    """STUN transactions on one TCP or TLS connection (no retransmissions: RFC 8489 §6.2.2)."""

    def __init__(
        self, stream: _Stream, transport_name: str, credentials: Credentials | None
    ) -> None:
        self._stream = stream
        self._tx = Transactions()
        self.transport_name = transport_name
        self._auth = _Auth(credentials) if credentials is not None else None
        self.peer: Address = _norm(stream.writer.get_extra_info("peername"))
        self.local_address: Address = _norm(stream.writer.get_extra_info("sockname"))
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(
        cls,
        dest: Address,
        *,
        tls: bool = False,
        server_hostname: str | None = None,
        ssl_context: ssl_module.SSLContext | None = None,
        local: Address | None = None,
        timeout: float = 5.0,
        credentials: Credentials | None = None,
    ) -> StreamStunClient:
        """Connect to ``dest`` over TCP (or TLS, verified against ``server_hostname``).
        Raises :class:`StunConnectionError` (or :class:`StunTimeout`) with what went wrong."""
        ctx = None
        if tls:
            ctx = ssl_context or ssl_module.create_default_context()
        name = "TLS" if tls else "TCP"
        where = f"[{dest[0]}]:{dest[1]}" if ":" in dest[0] else f"{dest[0]}:{dest[1]}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    dest[0],
                    dest[1],
                    ssl=ctx,
                    server_hostname=(server_hostname or dest[0]) if tls else None,
                    local_addr=local,
                ),
                timeout,
            )
        except TimeoutError:
            raise StunTimeout(f"no {name} connection to {where} within {timeout:.1f} s") from None
        except ssl_module.SSLError as exc:
            raise StunConnectionError(
                f"TLS handshake with {where} failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise StunConnectionError(f"{where} refused the {name} connection") from None
        except OSError as exc:
            raise StunConnectionError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        return cls(_Stream(reader, writer), "tls" if tls else "tcp", credentials)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await self._stream.reader.read(65536)
                if not chunk:
                    break
                now = loop.time()
                for frame in self._stream.framer.feed(chunk):
                    self._tx.deliver(frame, self.peer, now)
        except (OSError, StunParseError, asyncio.IncompleteReadError) as exc:
            self._tx.fail_all(StunTimeout(f"connection to {self.peer} failed: {exc}"))
            return
        self._tx.fail_all(StunTimeout(f"connection to {self.peer} closed by the server"))

    async def __aenter__(self) -> StreamStunClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._reader_task.cancel()
        with contextlib.suppress(BaseException):
            await self._reader_task
        self._stream.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stream.writer.wait_closed(), 1.0)

    async def transact(
        self,
        msg: Message,
        *,
        timeout: float = 5.0,
        key: bytes | None = None,
        fingerprint: bool = False,
    ) -> Response:
        loop = asyncio.get_running_loop()
        fut = self._tx.expect(msg.transaction_id)
        start = loop.time()
        try:
            self._stream.writer.write(msg.encode(key=key, fingerprint=fingerprint))
            try:
                reply, source, when = await asyncio.wait_for(fut, timeout)
            except StunTimeout:
                raise
            except TimeoutError:
                raise StunTimeout(
                    f"no response from {self.peer[0]}:{self.peer[1]} over "
                    f"{self.transport_name.upper()} in {timeout:.2f}s",
                    1,
                ) from None
        finally:
            self._tx.pending.pop(msg.transaction_id, None)
        return Response(reply, source, self.local_address, when - start, 1, when - start)

    async def request(self, msg: Message, **kw: Any) -> Response:
        if self._auth is None:
            return await self.transact(msg, **kw)
        return await _authenticated(self._auth, msg, lambda m, k: self.transact(m, key=k, **kw))
