"""The TURN relay's sockets: client listeners (UDP, TCP, TLS) and relay sockets.

The data path is kept lean because it is the relay's whole cost: UDP sockets are non-blocking
and read with ``loop.add_reader`` in batches (one wake-up drains up to ``_BATCH`` datagrams),
and ChannelData is forwarded here without going through the general engine call, reading the
allocation's tables directly. Everything else goes to :class:`natkit.turn.engine.TurnEngine`.
``now`` on the data path is the server's coarse clock (updated a few times a second): lifetimes
are counted in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from natkit.server import _turn_fast
from natkit.stun import StunParseError, frame_length
from natkit.turn.allocation import Address, Allocation, Relay
from natkit.turn.engine import TurnEngine, channel_data

if TYPE_CHECKING:
    from natkit.server.turn import TurnServer

_BATCH = 64
_MAX_DGRAM = 65535
_CD = struct.Struct("!HH")
_STREAM_BUFFER_LIMIT = 1 << 20  # bytes queued to a slow TCP client before dropping relayed data


class UdpListener:
    """A client-facing UDP socket. Allocation keys are ``(listener, client address)``."""

    __slots__ = ("address", "batch", "engine", "fd", "send", "server", "sock", "v6")

    def __init__(self, server: TurnServer, sock: socket.socket) -> None:
        self.server = server
        self.engine: TurnEngine = server.engine
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
            self.engine.stats.dropped_packets += 1

    def readable(self) -> None:
        sock, engine, server = self.sock, self.engine, self.server
        allocations = engine.allocations
        stats = engine.stats
        now = server.now
        v6 = self.v6
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
            if 0x40 <= data[0] <= 0x7F:
                # ChannelData from a client: the hot path.
                alloc = allocations.get((self, addr))
                if alloc is None or alloc.channels is None or len(data) < 4:
                    stats.dropped_packets += 1
                    continue
                number, length = _CD.unpack_from(data)
                channel = alloc.channels.get(number)
                if channel is None or channel.expires <= now or len(data) < 4 + length:
                    stats.dropped_packets += 1
                    continue
                peer = channel.peer
                expiry = alloc.perms.get(peer[0]) if alloc.perms else None
                if expiry is None or expiry <= now:
                    stats.dropped_packets += 1
                    continue
                if alloc.bucket is not None and not engine._spend(alloc, length, now):
                    stats.dropped_packets += 1
                    continue
                try:
                    channel.relay.handle.sock.sendto(data[4 : 4 + length], peer)
                except OSError:
                    stats.dropped_packets += 1
                    continue
                stats.to_peer_packets += 1
                stats.to_peer_bytes += length
                continue
            self.handle(data, addr)

    def handle(self, data: bytes, addr: Address) -> None:
        """One datagram through the general engine path."""
        if not data:
            return
        server = self.server
        try:
            actions = self.engine.handle_client(self, addr, data, time.time())
        except Exception:  # a bug must not stop the listener
            server.log_bug("udp request", addr)
            return
        if actions:
            server.run_actions(actions, self, addr)


class RelaySocket:
    """One relayed transport address: a UDP socket toward peers."""

    __slots__ = ("address", "alloc", "engine", "fd", "relay", "server", "sock", "v6")

    def __init__(
        self, server: TurnServer, sock: socket.socket, address: Address | None = None
    ) -> None:
        self.server = server
        self.engine: TurnEngine = server.engine
        self.sock = sock
        self.fd = sock.fileno()
        # the bound address when the caller knows it (saves a syscall per allocation)
        self.address: Address = address or sock.getsockname()[:2]
        self.v6 = ":" in self.address[0]
        self.alloc: Allocation | None = None
        self.relay: Relay | None = None

    def sendto(self, data: bytes, peer: Address) -> None:
        try:
            self.sock.sendto(data, peer)
        except OSError:
            self.engine.stats.dropped_packets += 1

    def handle(self, data: bytes, peer: Address) -> None:
        """One peer datagram through the general path (Data indication, or ChannelData)."""
        alloc, relay = self.alloc, self.relay
        if alloc is None or relay is None:
            self.engine.stats.dropped_packets += 1
            return
        out = self.engine.handle_peer(alloc, relay, data, peer, self.server.now)
        if out is not None:
            alloc.client.send(out, alloc.client_addr)

    def readable(self) -> None:
        sock, stats = self.sock, self.engine.stats
        alloc, relay = self.alloc, self.relay
        now = self.server.now
        v6 = self.v6
        for _ in range(_BATCH):
            try:
                data, peer = sock.recvfrom(_MAX_DGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if alloc is None or relay is None:  # a reserved (not yet allocated) port
                stats.dropped_packets += 1
                continue
            if v6:
                peer = peer[:2]
            perms = alloc.perms
            expiry = perms.get(peer[0]) if perms else None
            if expiry is None or expiry <= now:
                stats.dropped_packets += 1
                continue
            channels = alloc.peer_channels
            channel = channels.get(peer) if channels else None
            if (
                channel is not None
                and channel.expires > now
                and channel.relay is relay
                and alloc.bucket is None
            ):
                # Peer -> client as ChannelData: the other hot path.
                n = len(data)
                if alloc.stream:
                    frame = channel_data(channel.number, data, True)
                else:
                    frame = _CD.pack(channel.number, n) + data
                stats.to_client_packets += 1
                stats.to_client_bytes += n
            else:
                out = self.engine.handle_peer(alloc, relay, data, peer, now)
                if out is None:
                    continue
                frame = out
            alloc.client.send(frame, alloc.client_addr)

    def close(self) -> None:
        self.server.forget_relay(self)


class _Framer:
    """Splits a TCP/TLS stream into STUN messages and ChannelData frames.

    The codec's framing knows RFC 8656 channel numbers (first byte 0x40-0x4F); RFC 5766
    clients such as coturn's use numbers up to 0x7FFE, so those frames are cut here."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        buf += chunk
        frames: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            first = buf[pos]
            if 0x50 <= first <= 0x7F:
                length = _CD.unpack_from(buf, pos)[1]
                need = 4 + length + (-length % 4)
            else:
                need_or_none = frame_length(memoryview(buf)[pos : pos + 4])
                assert need_or_none is not None
                need = need_or_none
            if len(buf) - pos < need:
                break
            frames.append(bytes(buf[pos : pos + need]))
            pos += need
        if pos:
            del buf[:pos]
        if len(buf) > 4 * 65556:
            raise StunParseError("stream: more buffered than any frame can be")
        return frames


class StreamClient(asyncio.Protocol):
    """One TCP or TLS client connection: STUN and padded ChannelData, framed (RFC 8656 §12.5)."""

    def __init__(self, server: TurnServer, transport_name: str) -> None:
        self.server = server
        self.engine: TurnEngine = server.engine
        self.name = transport_name
        self.framer = _Framer()
        self.transport: asyncio.Transport | None = None
        self.addr: Address = ("", 0)
        self.last_activity = time.time()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Relayed media is latency-bound: never hold a small frame back for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.addr = (peer[0], peer[1]) if peer else ("", 0)
        if not self.server.accept_stream(self):
            transport.abort()

    def send(self, data: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > _STREAM_BUFFER_LIMIT:
            self.engine.stats.dropped_packets += 1
            return
        transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.last_activity = now = time.time()
        try:
            frames = self.framer.feed(data)
        except StunParseError:
            self.engine.stats.bad_packets += 1
            self.close()
            return
        for frame in frames:
            if 0x40 <= frame[0] <= 0x7F:
                target = self.engine.channel_target((self, self.addr), frame, self.server.now)
                if target is not None:
                    handle, payload, peer = target
                    handle.sendto(payload, peer)
                continue
            try:
                actions = self.engine.handle_client(self, self.addr, frame, now, stream=True)
            except Exception:
                self.server.log_bug(f"{self.name} request", self.addr)
                continue
            if actions:
                self.server.run_actions(actions, self, self.addr)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.stream_closed(self)
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
