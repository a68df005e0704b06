"""TCP and TLS listeners shared by the STUN responder and the TURN relay: who gets a
connection, how long a connection may stay without doing anything useful, TLS failures
named, and the STUN server's stream protocol (RFC 8489 §6.2.2 framing, back-pressure).

A stream costs the server a socket and memory for as long as it is open, whatever the client
sends; so (docs/security.md):

* one source IP holds at most ``per_source`` connections, all sources at most
  ``max_connections``; when the total is reached, a newcomer from a source holding fewer
  connections than the largest one takes the place of that source's least useful connection
  (one that has sent nothing complete yet, else the one idle longest): no single source can
  keep others out;
* a connection must complete its first message (TLS handshake included) within
  ``first_message_timeout`` seconds and, on a TURN listener, hold an allocation within
  ``allocate_timeout`` seconds;
* idleness is measured between *complete* messages: a byte now and then (slowloris) does not
  keep a connection open; a TURN connection with an allocation lives as long as it does.

Every connection closed for one of these reasons is counted by reason
(:attr:`StreamGuard.dropped`), every failed TLS handshake by kind (:attr:`StreamGuard.tls`,
:data:`natkit.server._tls.FAILURE_KINDS`), and logged (rate-limited).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natkit.errors import ConfigError
from natkit.server._binding import Address, BindingResponder, Reply, Verdict
from natkit.server._tls import TlsFailure, TlsSession
from natkit.stun import StreamFramer, StunParseError

log = logging.getLogger("natkit.server.stream")

_SLICE = 64  # frames answered per turn of the event loop, per connection
_SWEEP = 1.0  # seconds between deadline checks
_LOG_EVERY = 10.0  # at most one line per (reason) this often; the counters count every one

#: why a connection was closed or refused, as counted in the metrics
DROP_REASONS = (
    "per_source_limit",  # refused: its source already holds per_source connections
    "total_limit",  # refused: max_connections reached and its source is the largest
    "evicted",  # closed to make room for a source holding fewer connections
    "first_message_timeout",  # no complete message within first_message_timeout
    "allocate_timeout",  # (TURN) no allocation within allocate_timeout
    "idle_timeout",  # no complete message for idle_timeout (and no allocation)
    "bad_framing",  # bytes that are not STUN/ChannelData
    "unread_output",  # (TURN over TCP) the client left more than 2 MiB of the server's unread
    "tls_failed",  # the TLS handshake failed (by kind in StreamGuard.tls)
)


@dataclass(frozen=True, kw_only=True)
class StreamLimits:
    """The limits of a server's TCP/TLS connections (seconds, counts); see the module doc."""

    max_connections: int = 10_000
    per_source: int = 256
    first_message_timeout: float = 10.0
    #: TURN only: the first successful Allocate; None: no such deadline (STUN)
    allocate_timeout: float | None = None
    idle_timeout: float = 60.0
    tls_handshake_timeout: float = 10.0

    def check(self, names: dict[str, str] | None = None) -> None:
        """ConfigError naming the offending option (``names`` maps a field to its option)."""
        names = names or {}
        for field in ("max_connections", "per_source"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"must be a whole number of at least 1, not {value!r}",
                    param=names.get(field, field),
                )
        for field in (
            "first_message_timeout",
            "allocate_timeout",
            "idle_timeout",
            "tls_handshake_timeout",
        ):
            value = getattr(self, field)
            if value is None and field == "allocate_timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(
                    f"must be a number of seconds above 0, not {value!r}",
                    param=names.get(field, field),
                )


class GuardedStream(asyncio.Protocol):
    """A connection under a :class:`StreamGuard`, with TLS when ``tls`` is given: it hands
    plaintext to :meth:`on_data` and sends with :meth:`write`; a subclass calls
    :meth:`completed` for each complete message it framed."""

    guard: StreamGuard

    def __init__(self, guard: StreamGuard, tls: ssl.SSLContext | None = None) -> None:
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.addr: Address = ("", 0)
        self.local: Address = ("", 0)
        self.created = self.last_message = time.monotonic()
        self.messages = 0
        self.allocated = False  # (TURN) has held an allocation
        self.admitted = False
        self._tls_context = tls
        self.tls: TlsSession | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.addr = (peer[0], peer[1]) if peer else ("", 0)
        self.local = (local[0], local[1]) if local else ("", 0)
        self.created = self.last_message = time.monotonic()
        if not self.guard.admit(self):
            transport.abort()
            return
        self.admitted = True
        if self._tls_context is not None:
            self.tls = TlsSession(self._tls_context, self.guard.cert_names)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.admitted:
            return
        tls = self.tls
        if tls is not None:
            try:
                data = tls.feed(data)
            except TlsFailure as failure:
                if failure.kind == "closed":
                    self.close()
                    return
                self._flush_tls()
                if tls.established:
                    self.guard.drop(self, "bad_framing")
                else:
                    self.guard.tls_failed(self, failure.kind, failure.detail, tls.server_name)
                transport.abort()
                return
            self._flush_tls()
            if not data:
                return
        self.on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.guard.release(self)
        self.closed()

    # -- for subclasses ----------------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        """Plaintext from the client."""
        raise NotImplementedError

    def closed(self) -> None:
        """The connection is gone (after the guard forgot it)."""

    def completed(self, count: int = 1) -> None:
        """``count`` complete messages arrived: the idle clock restarts."""
        self.messages += count
        self.last_message = time.monotonic()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.tls is not None:
            data = self.tls.encrypt(data)
        transport.write(data)

    def bad_framing(self) -> None:
        """The client sent bytes that are not STUN/ChannelData: count and drop it."""
        self.guard.drop(self, "bad_framing")
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _flush_tls(self) -> None:
        if self.tls is not None and self.transport is not None:
            out = self.tls.pending()
            if out:
                self.transport.write(out)


class StreamGuard:
    """Admission, deadlines and counters for every TCP/TLS connection of one server.

    ``has_session(conn)`` (TURN): True while the connection holds an allocation; such a
    connection is exempt from the idle timeout and is evicted last. ``cert_names``: the TLS
    certificate's (DNS names, IPs), to name SNI mismatches.
    """

    def __init__(
        self,
        limits: StreamLimits,
        *,
        has_session: Callable[[GuardedStream], bool] | None = None,
        cert_names: tuple[frozenset[str], frozenset[str]] | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.limits = limits
        self.has_session = has_session
        self.cert_names = cert_names
        self.log = logger
        self.sources: dict[str, dict[GuardedStream, None]] = {}
        self.total = 0
        self.accepted = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.tls: dict[str, int] = {}
        self._logged: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._timer is None:
            self._timer = loop.call_later(_SWEEP, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connections(self) -> list[GuardedStream]:
        return [c for conns in self.sources.values() for c in conns]

    def close_all(self) -> None:
        for conn in self.connections():
            conn.close()

    # -- admission ---------------------------------------------------------------------------

    def admit(self, conn: GuardedStream) -> bool:
        limits = self.limits
        ip = conn.addr[0]
        mine = self.sources.get(ip)
        held = len(mine) if mine else 0
        if held >= limits.per_source:
            self._count(conn, "per_source_limit")
            return False
        if self.total >= limits.max_connections and not self._make_room(held):
            self._count(conn, "total_limit")
            return False
        if mine is None:
            mine = self.sources[ip] = {}
        mine[conn] = None
        self.total += 1
        self.accepted += 1
        return True

    def _make_room(self, held: int) -> bool:
        """Evict one connection of the largest source if it holds more than ``held`` + 1."""
        largest = max(self.sources.values(), key=len, default=None)
        if largest is None or len(largest) <= held + 1:
            return False
        victim = self._least_useful(largest)
        if victim is None:
            return False
        self._forget(victim)
        self._count(victim, "evicted")
        if victim.transport is not None:
            victim.transport.abort()
        return True

    def _least_useful(self, conns: dict[GuardedStream, None]) -> GuardedStream | None:
        best: GuardedStream | None = None
        best_rank: tuple[int, float] | None = None
        has_session = self.has_session
        for conn in conns:
            if has_session is not None and has_session(conn):
                continue  # a live allocation is never evicted for a newcomer
            rank = (0 if conn.messages == 0 else 1, conn.last_message)
            if best_rank is None or rank < best_rank:
                best, best_rank = conn, rank
        return best

    def release(self, conn: GuardedStream) -> None:
        self._forget(conn)

    def _forget(self, conn: GuardedStream) -> None:
        mine = self.sources.get(conn.addr[0])
        if mine is not None and conn in mine:
            del mine[conn]
            self.total -= 1
            if not mine:
                del self.sources[conn.addr[0]]
        conn.admitted = False

    # -- deadlines ---------------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        try:
            self.sweep(time.monotonic())
        except Exception:  # a bug must not stop the deadlines
            self.log.exception("event=internal_error where=stream_sweep")
        if self._loop is not None:
            self._timer = self._loop.call_later(_SWEEP, self._tick)

    def sweep(self, now: float) -> None:
        """Close the connections past a deadline."""
        limits = self.limits
        has_session = self.has_session
        for conn in self.connections():
            age = now - conn.created
            session = has_session is not None and has_session(conn)
            if session:
                conn.allocated = True
            tls = conn.tls
            if tls is not None and not tls.established:
                if age > limits.tls_handshake_timeout:
                    self.tls_failed(conn, "timeout", "handshake not finished", tls.server_name)
                    self._close(conn)
                continue
            if conn.messages == 0:
                if age > limits.first_message_timeout:
                    self._close(conn, "first_message_timeout")
                continue
            if session:
                continue
            if (
                limits.allocate_timeout is not None
                and not conn.allocated
                and age > limits.allocate_timeout
            ):
                self._close(conn, "allocate_timeout")
            elif now - conn.last_message > limits.idle_timeout:
                self._close(conn, "idle_timeout")

    def _close(self, conn: GuardedStream, reason: str | None = None) -> None:
        if reason is not None:
            self.drop(conn, reason)
        self._forget(conn)
        if conn.transport is not None:
            conn.transport.abort()

    # -- counting ----------------------------------------------------------------------------

    def drop(self, conn: GuardedStream, reason: str) -> None:
        self._count(conn, reason)

    def tls_failed(
        self, conn: GuardedStream, kind: str, detail: str, server_name: str | None
    ) -> None:
        self.tls[kind] = self.tls.get(kind, 0) + 1
        self.dropped["tls_failed"] += 1
        now = time.monotonic()
        key = f"tls:{kind}"
        if now - self._logged.get(key, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[key] = now
            self.log.info(
                "event=tls_handshake_failed kind=%s client=%s sni=%r detail=%r count=%d%s",
                kind,
                _fmt(conn.addr),
                server_name,
                detail[:80],
                self.tls[kind],
                _TLS_HINTS.get(kind, ""),
            )

    def _count(self, conn: GuardedStream, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged.get(reason, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[reason] = now
            self.log.info(
                "event=connection_dropped reason=%s client=%s count=%d",
                reason,
                _fmt(conn.addr),
                self.dropped[reason],
            )

    def stats(self) -> dict[str, Any]:
        return {
            "open": self.total,
            "accepted": self.accepted,
            "dropped": dict(self.dropped),
            "tls_failures": dict(self.tls),
        }


_TLS_HINTS = {
    "plain_stun": " (a client sent STUN without TLS to the TLS port: it needs turn:/stun: "
    "with transport=tcp on the TCP port, or a TLS-capable client)",
    "no_sni_match": " (the client asked for a name the certificate does not carry)",
    "bad_version": " (the client offers only TLS versions or ciphers the server refuses)",
}


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class StreamCounters:
    __slots__ = ("connections", "errors", "garbage", "ignored", "responses")

    def __init__(self) -> None:
        self.connections = self.responses = self.garbage = self.errors = self.ignored = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class StunStreamProtocol(GuardedStream):
    """One TCP/TLS connection to the STUN responder: any number of requests, several per
    segment or split across segments. A stream that stops framing (not STUN/ChannelData) is
    closed; a peer that does not read its replies is not read from either (so it cannot make
    the server buffer without bound); the guard's deadlines apply."""

    def __init__(
        self,
        responder: BindingResponder,
        guard: StreamGuard,
        *,
        other: Address | None,
        counters: StreamCounters,
        tls: ssl.SSLContext | None = None,
        on_request: Callable[[bytes, Address], None] | None = None,
    ) -> None:
        super().__init__(guard, tls)
        self.responder = responder
        self.other = other
        self.counters = counters
        self.on_request = on_request
        self.framer = StreamFramer()
        self._frames: deque[bytes] = deque()
        self._paused: set[str] = set()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.admitted:
            self.counters.connections += 1
            self._loop = asyncio.get_running_loop()

    def on_data(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except StunParseError:
            self.counters.garbage += 1
            self.bad_framing()
            return
        if frames:
            self.completed(len(frames))
            self._frames.extend(frames)
            self._answer()

    def _answer(self) -> None:
        """Answer up to _SLICE queued frames; with more queued, stop reading and yield to the
        loop first, so one client's big segment cannot hold the others up."""
        transport = self.transport
        self._scheduled = False
        if transport is None or transport.is_closing():
            return
        frames = self._frames
        for _ in range(min(_SLICE, len(frames))):
            frame = frames.popleft()
            if frame[0] & 0xC0:  # ChannelData: no allocations on a STUN-only server
                self.counters.ignored += 1
                continue
            if self.on_request is not None:
                self.on_request(frame, self.addr)
            try:
                reply = self.responder.respond(
                    frame, self.addr, self.local, stream=True, other=self.other
                )
            except Exception:  # a bug must not take the listener down: count it, drop the peer
                self.counters.errors += 1
                log.exception("STUN request from %s made the responder fail", self.addr)
                transport.abort()
                return
            if isinstance(reply, Reply):
                self.write(reply.data)
                self.counters.responses += 1
            elif reply == Verdict.GARBAGE:
                self.counters.garbage += 1
            else:
                self.counters.ignored += 1
        if frames:
            self._pause("backlog")
            if not self._scheduled and self._loop is not None:
                self._scheduled = True
                self._loop.call_soon(self._answer)
        else:
            self._resume("backlog")

    # Reading stops while replies pile up unread (write buffer full) or frames are queued.
    def _pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")
