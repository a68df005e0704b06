"""The TURN relay's sockets: client listeners (UDP, TCP, TLS) and relay sockets.

They carry bytes and nothing else: every forwarding rule is the engine's
(:meth:`~natkit.turn.engine.TurnEngine.forward_from_client` for ChannelData,
:meth:`~natkit.turn.engine.TurnEngine.forward_from_peer` for peer datagrams,
:meth:`~natkit.turn.engine.TurnEngine.handle_client` for everything else). UDP sockets are
non-blocking and read with ``loop.add_reader`` in batches (one wake-up drains up to ``_BATCH``
datagrams). ``now`` on the data path is the server's coarse clock (updated a few times a
second): lifetimes are counted in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from typing import Any, Protocol, cast

from natkit.server import _turn_fast
from natkit.server._stream import GuardedStream, StreamGuard
from natkit.stun import StreamFramer, StunParseError
from natkit.turn.actions import Action, SendToClient, SendToPeer
from natkit.turn.allocation import Address, Relay
from natkit.turn.engine import TurnEngine

_BATCH = 64
_MAX_DGRAM = 65535
_STREAM_BUFFER_LIMIT = 1 << 20  # bytes queued to a slow TCP client before dropping relayed data


class RelayHost(Protocol):
    """What the sockets need of the server that owns them."""

    engine: TurnEngine
    now: float
    send_errors: int  # datagrams the kernel would not take
    bad_frames: int  # TCP/TLS streams that stopped framing
    fast: _turn_fast.FastTable | None  # the C data path's table, when it runs
    streams: dict[int, StreamClient]  # TCP clients the table reads, by the table's fd

    def run_actions(self, actions: list[Action], client: Any, addr: Address | None) -> None: ...

    def log_bug(self, where: str, addr: Address) -> None: ...

    def forget_relay(self, relay: RelaySocket) -> None: ...

    def stream_closed(self, stream: StreamClient) -> None: ...


class UdpListener:
    """A client-facing UDP socket. Allocation keys are ``(listener, client address)``."""

    __slots__ = ("address", "batch", "engine", "fd", "send", "server", "sock", "v6")

    def __init__(self, server: RelayHost, sock: socket.socket) -> None:
        self.server = server
        self.engine = server.engine
        self.sock = sock
        self.fd = sock.fileno()
        self.address: Address = sock.getsockname()[:2]
        self.v6 = sock.family == socket.AF_INET6
        self.send = self._send
        # While the C path's poll runs, replies collect here and leave in one sendmmsg.
        self.batch: bytearray | None = None

    def _send(self, data: bytes, addr: Address) -> None:
        batch = self.batch
        if batch is not None:
            batch += _turn_fast.record(data, addr)
            return
        try:
            self.sock.sendto(data, addr)
        except OSError:
            self.server.send_errors += 1

    def readable(self) -> None:
        sock, server = self.sock, self.server
        forward = self.engine.forward_from_client
        now = server.now
        v6 = self.v6
        addr: Any = None
        try:
            for _ in range(_BATCH):
                try:
                    data, addr = sock.recvfrom(_MAX_DGRAM)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue  # e.g. an ICMP error reported on the socket
                if v6:
                    addr = addr[:2]
                if not data:
                    continue
                if 0x40 <= data[0] <= 0x7F:  # ChannelData: the hot path
                    out = forward((self, addr), data, now)
                    if out is not None:
                        if type(out) is SendToPeer:
                            out.handle.sendto(out.data, out.peer)
                        else:  # relay-to-relay: to the other allocation's client
                            to = cast(SendToClient, out)  # (type() is, for speed, does not narrow)
                            to.client.send(to.data, to.addr)
                    continue
                self.handle(data, addr)
        except Exception:  # a bug must not stop the listener
            server.log_bug("udp data", addr or ("", 0))

    def handle(self, data: bytes, addr: Address) -> None:
        """One datagram through the general engine path."""
        if not data:
            return
        server = self.server
        try:
            actions = self.engine.handle_client(self, addr, data, time.time())
            if actions:
                server.run_actions(actions, self, addr)
        except Exception:  # a bug must not stop the listener
            server.log_bug("udp request", addr)


class RelaySocket:
    """One relayed transport address: a UDP socket toward peers. ``relay`` is the engine's
    :class:`~natkit.turn.allocation.Relay` made around it (set when it is bound)."""

    __slots__ = ("address", "engine", "fd", "relay", "server", "sock", "v6")

    def __init__(
        self, server: RelayHost, sock: socket.socket, address: Address | None = None
    ) -> None:
        self.server = server
        self.engine = server.engine
        self.sock = sock
        self.fd = sock.fileno()
        # the bound address when the caller knows it (saves a syscall per allocation)
        self.address: Address = address or sock.getsockname()[:2]
        self.v6 = ":" in self.address[0]
        self.relay: Relay | None = None

    def sendto(self, data: bytes, peer: Address) -> None:
        try:
            self.sock.sendto(data, peer)
        except OSError:
            self.server.send_errors += 1

    def handle(self, data: bytes, peer: Address) -> None:
        """One peer datagram (the C path hands over what its table does not cover)."""
        relay = self.relay
        if relay is None:
            return
        out = self.engine.forward_from_peer(relay, peer, data, self.server.now)
        if out is not None:
            out.client.send(out.data, out.addr)

    def readable(self) -> None:
        sock, server = self.sock, self.server
        relay = self.relay
        forward = self.engine.forward_from_peer
        now = server.now
        v6 = self.v6
        peer: Any = None
        try:
            for _ in range(_BATCH):
                try:
                    data, peer = sock.recvfrom(_MAX_DGRAM)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue
                if relay is None:
                    continue
                if v6:
                    peer = peer[:2]
                out = forward(relay, peer, data, now)
                if out is not None:
                    out.client.send(out.data, out.addr)
        except Exception:
            server.log_bug("relay data", peer or ("", 0))

    def close(self) -> None:
        self.server.forget_relay(self)


class StreamClient(GuardedStream):
    """One TCP or TLS client connection: STUN and padded ChannelData, framed (RFC 8656 §12.5),
    under the listener limits of natkit/server/_stream.py (``guard``).

    With the C table, a TCP (not TLS) connection is handed over once its allocation's first
    entries come (:meth:`fast_key_fd`): the table gets a dup of the socket (``fast_fd``, which
    also names the client in the table's keys) and, at the end of the read that made the
    entries and once the transport has nothing left to write, the bytes read past the last
    frame; the transport stops reading. From then on the table's thread reads and writes the
    stream: it forwards ChannelData and Send indications itself and hands the other frames
    here (:meth:`fast_frames`), and what this side sends joins the table's output buffer
    (``stream_send``), so nothing is reordered on the wire."""

    def __init__(
        self,
        server: RelayHost,
        transport_name: str,
        guard: StreamGuard,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(guard, tls)
        self.server = server
        self.engine = server.engine
        self.name = transport_name
        self.framer = StreamFramer(channel_max=self.engine.channel_max)
        self._out: list[bytes] = []
        self._queued = 0
        self._flush_scheduled = False
        self.fast_fd: int | None = None  # the table's dup of the socket, once attached
        self.fast_started = False  # the table reads and writes the stream

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Relayed media is latency-bound: never hold a small frame back for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    # -- the C table ------------------------------------------------------------------------

    def fast_key_fd(self) -> int | None:
        """The fd that names this client in the table's keys, attaching the connection to the
        table on first use; None when the table cannot serve it (TLS, closing, no table)."""
        if self.fast_fd is not None:
            return self.fast_fd
        table, transport = self.server.fast, self.transport
        if table is None or self.tls is not None or transport is None or transport.is_closing():
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        fd = os.dup(sock.fileno())
        try:
            table.stream_attach(fd, self.addr)
        except (ValueError, OSError):
            os.close(fd)
            return None
        self.fast_fd = fd
        self.server.streams[fd] = self
        return fd

    def _hand_over(self) -> None:
        """The table takes the stream's reads and writes, once the transport has written all
        it holds (until then this side keeps serving: tried again after the next read)."""
        transport, table, fd = self.transport, self.server.fast, self.fast_fd
        if transport is None or transport.is_closing() or table is None or fd is None:
            return
        self._flush_out()
        if transport.get_write_buffer_size():
            return
        transport.pause_reading()
        table.stream_start(fd, self.framer.take_pending())
        self.fast_started = True

    def fast_frames(self, frames: list[bytes]) -> None:
        """Frames the table read from the stream and left to the engine."""
        self.completed(len(frames))
        self._handle_frames(frames, time.time())

    def fast_closed(self, reason: str) -> None:
        """The table ended the stream (``reason``: one of _turn_fast.CLOSE_REASONS)."""
        if reason == "bad_framing":
            self.server.bad_frames += 1
            self.bad_framing()
            return
        if reason == "overflow":
            self.guard.drop(self, "unread_output")
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.fast_started:
            pass  # the table bounds what waits for the client (stream_send)
        elif transport.get_write_buffer_size() + self._queued > _STREAM_BUFFER_LIMIT:
            self.server.send_errors += 1
            return
        # Everything sent to this client in one turn of the event loop (a batch of relayed
        # datagrams, responses) leaves in one write: one send syscall and, over TLS, one
        # record instead of one per frame. Order is kept: every write goes through here.
        self._out.append(data)
        self._queued += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        out, self._out, self._queued = self._out, [], 0
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        table = self.server.fast
        if not self.fast_started or table is None or self.fast_fd is None:
            self.write(data)
            return
        failed = table.stream_send(self.fast_fd, data)
        if failed and self.transport is not None:
            if failed == 1:
                self.guard.drop(self, "unread_output")
            self.transport.abort()

    def on_data(self, data: bytes) -> None:
        now = time.time()
        try:
            frames = self.framer.feed(data)
        except StunParseError:
            self.server.bad_frames += 1
            self.bad_framing()
            return
        if not frames:
            return
        self.completed(len(frames))
        self._handle_frames(frames, now)
        if self.fast_fd is not None and not self.fast_started:
            self._hand_over()

    def _handle_frames(self, frames: list[bytes], now: float) -> None:
        key = (self, self.addr)
        # With the C table, the datagrams this read produced leave together: one sendmmsg per
        # relay socket, equal datagrams to one peer as one UDP GSO message.
        table = self.server.fast
        batches: dict[int, bytearray] = {}
        record = _turn_fast.record
        for frame in frames:
            try:
                if 0x40 <= frame[0] <= 0x7F:
                    out = self.engine.forward_from_client(key, frame, self.server.now)
                    if out is not None:
                        if type(out) is SendToPeer:
                            if table is None:
                                out.handle.sendto(out.data, out.peer)
                                continue
                            fd = out.handle.fd
                            batch = batches.get(fd)
                            if batch is None:
                                batch = batches[fd] = bytearray()
                            batch += record(out.data, out.peer)
                        else:  # relay-to-relay: to the other allocation's client
                            to = cast(SendToClient, out)  # (type() is, for speed, does not narrow)
                            to.client.send(to.data, to.addr)
                    continue
                actions = self.engine.handle_client(self, self.addr, frame, now, stream=True)
                if actions:
                    self.server.run_actions(actions, self, self.addr)
            except Exception:
                self.server.log_bug(f"{self.name} request", self.addr)
        if table is not None:
            for fd, batch in batches.items():
                self.server.send_errors += table.send(fd, bytes(batch))

    def close(self) -> None:
        self._flush_out()  # what was sent before the close leaves before it
        super().close()

    def closed(self) -> None:
        self._out, self._queued = [], 0
        self.server.stream_closed(self)  # its entries leave the table first
        fd, self.fast_fd = self.fast_fd, None
        self.fast_started = False
        if fd is not None:
            self.server.streams.pop(fd, None)
            table = self.server.fast
            if table is not None:  # (a closed table closed its fds itself)
                table.stream_release(fd)
        self.transport = None
