"""STUN over TCP and TLS (RFC 8489 §6.2.2): framing, replies, idle timeout, back-pressure."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from natkit.server._binding import Address, BindingResponder, Reply, Verdict
from natkit.stun import StreamFramer, StunParseError

log = logging.getLogger("natkit.server.stun")

_SLICE = 64  # frames answered per turn of the event loop, per connection


class StreamCounters:
    __slots__ = (
        "connections", "errors", "garbage", "idle_closed", "ignored", "refused", "responses",
    )  # fmt: skip

    def __init__(self) -> None:
        self.connections = self.responses = self.garbage = self.errors = 0
        self.ignored = self.idle_closed = self.refused = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class StunStreamProtocol(asyncio.Protocol):
    """One TCP/TLS connection: any number of requests, several per segment or split across
    segments. A stream that stops framing (not STUN/ChannelData) is closed; a connection that
    sends nothing for ``idle_timeout`` seconds is closed; a peer that does not read its replies
    is not read from either (so it cannot make the server buffer without bound)."""

    def __init__(
        self,
        responder: BindingResponder,
        *,
        other: Address | None,
        idle_timeout: float,
        counters: StreamCounters,
        registry: set[StunStreamProtocol],
        max_connections: int,
    ) -> None:
        self.responder = responder
        self.other = other
        self.idle_timeout = idle_timeout
        self.counters = counters
        self.registry = registry
        self.max_connections = max_connections
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.local: Address = ("", 0)
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frames: deque[bytes] = deque()
        self._paused: set[str] = set()
        self._scheduled = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if len(self.registry) >= self.max_connections:
            self.counters.refused += 1
            transport.abort()
            return
        self.registry.add(self)
        self.counters.connections += 1
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.peer, self.local = (peer[0], peer[1]), (local[0], local[1])
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer = self._loop.call_later(self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        assert self._loop is not None
        left = self._last + self.idle_timeout - self._loop.time()
        if left <= 0:
            self.counters.idle_closed += 1
            self.close()
        else:
            self._timer = self._loop.call_later(left, self._check_idle)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        assert self._loop is not None
        self._last = self._loop.time()
        try:
            self._frames.extend(self.framer.feed(data))
        except StunParseError:
            self.counters.garbage += 1
            transport.abort()
            return
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
            try:
                reply = self.responder.respond(
                    frame, self.peer, self.local, stream=True, other=self.other
                )
            except Exception:  # a bug must not take the listener down: count it, drop the peer
                self.counters.errors += 1
                log.exception("STUN request from %s made the responder fail", self.peer)
                transport.abort()
                return
            if isinstance(reply, Reply):
                transport.write(reply.data)
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
