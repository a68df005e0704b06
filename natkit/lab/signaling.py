"""The lab's signaling server: rooms over WebSocket (RFC 6455) on plain asyncio, plus pages.

WebRTC leaves signaling to the application; this is the usual shape of it. A client opens a
WebSocket at ``/ws`` and speaks JSON text messages:

====================================  ===============================================
client -> server                      server -> client
====================================  ===============================================
``{"type": "join", "room": R}``       ``{"type": "joined", "room": R, "members": N}``
                                      and ``{"type": "peer-joined"}`` to the other member
``{"type": "relay", "data": ANY}``    ``{"type": "relay", "data": ANY}`` to the other member
``{"type": "leave"}``                 ``{"type": "peer-left"}`` to the other member
(anything wrong)                      ``{"type": "error", "error": TEXT}``
====================================  ===============================================

A room holds two members (a caller and a callee). Closing the socket leaves the room. Plain
HTTP ``GET`` serves the pages given to the server (a browser peer's page) and ``/healthz``.
:class:`SignalingClient` is the peers' side of the same protocol.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from types import TracebackType
from typing import Any

__all__ = ["SignalingClient", "SignalingError", "SignalingServer"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 256 * 1024  # an SDP with candidates is a few KiB
MAX_HEADER = 16 * 1024
ROOM_SIZE = 2
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class SignalingError(Exception):
    """The signaling connection failed or closed, or the server reported an error."""


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    """One final frame; clients must mask (RFC 6455 §5.3), servers must not."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _xor(payload, key)


def _xor(data: bytes, key: bytes) -> bytes:
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""


async def read_message(reader: asyncio.StreamReader, *, masked: bool) -> tuple[int, bytes]:
    """The next whole message (continuation frames joined) or control frame: (opcode, payload).

    ``masked`` says whether frames must be masked (what a server reads). Raises
    :class:`SignalingError` on a protocol violation or an oversized message.
    """
    parts: list[bytes] = []
    opcode = None
    while True:
        b0, b1 = await reader.readexactly(2)
        fin, op = b0 & 0x80, b0 & 0x0F
        if bool(b1 & 0x80) != masked:
            raise SignalingError("frame masking is wrong for this side")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        if n > MAX_MESSAGE or sum(map(len, parts)) + n > MAX_MESSAGE:
            raise SignalingError(f"message larger than {MAX_MESSAGE} bytes")
        key = await reader.readexactly(4) if masked else b""
        payload = await reader.readexactly(n)
        if masked:
            payload = _xor(payload, key)
        if op >= 8:  # control frames may come between fragments
            if not fin or n > 125:
                raise SignalingError("bad control frame")
            return op, payload
        if op == OP_CONT:
            if opcode is None:
                raise SignalingError("continuation without a first frame")
        elif opcode is not None:
            raise SignalingError("new message inside a fragmented one")
        else:
            opcode = op
        parts.append(payload)
        if fin:
            return opcode, b"".join(parts)


class _Member:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.room: str | None = None

    async def send(self, obj: Mapping[str, Any]) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(encode_frame(OP_TEXT, json.dumps(obj).encode(), mask=False))
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()


class SignalingServer:
    """``async with SignalingServer(host, port) as s:`` serves rooms at ``ws://host:port/ws``.

    ``pages`` maps URL paths to ``(content type, body)`` served by GET. ``port=0`` picks a free
    port (see :attr:`port`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, pages: Mapping[str, tuple[str, bytes]] | None = None) -> None:
        self.host = host
        self.port = port
        self.pages = dict(pages or {})
        self.rooms: dict[str, list[_Member]] = {}
        self.relayed = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SignalingServer:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._http(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, SignalingError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            # close() cancels connections; ending normally keeps asyncio's stream callback from
            # logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if len(head) > MAX_HEADER:
            raise SignalingError("header too large")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" "), "", "", ""][:3]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        path = target.split("?", 1)[0]
        if method != "GET":
            return self._respond(writer, 405, "text/plain", b"method not allowed\n")
        if path == "/ws":
            key = headers.get("sec-websocket-key")
            if "websocket" not in headers.get("upgrade", "").lower() or not key:
                return self._respond(writer, 400, "text/plain", b"expected a WebSocket upgrade\n")
            writer.write(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
                ).encode()
            )
            await writer.drain()
            await self._websocket(reader, writer)
            return None
        if path == "/healthz":
            return self._respond(writer, 200, "text/plain", b"ok\n")
        if path in self.pages:
            ctype, body = self.pages[path]
            return self._respond(writer, 200, ctype, body)
        return self._respond(writer, 404, "text/plain", b"not found\n")

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = _Member(writer)
        try:
            while True:
                op, payload = await read_message(reader, masked=True)
                if op == OP_CLOSE:
                    writer.write(encode_frame(OP_CLOSE, payload[:2], mask=False))
                    return
                if op == OP_PING:
                    writer.write(encode_frame(OP_PONG, payload, mask=False))
                    continue
                if op != OP_TEXT:
                    continue
                try:
                    msg = json.loads(payload)
                    if not isinstance(msg, dict):
                        raise ValueError
                except ValueError:
                    await me.send({"type": "error", "error": "expected a JSON object"})
                    continue
                await self._handle(me, msg)
        finally:
            await self._leave(me)

    async def _handle(self, me: _Member, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "join":
            room = msg.get("room")
            if not isinstance(room, str) or not 0 < len(room) <= 128:
                return await me.send({"type": "error", "error": "join needs a room name (1-128 chars)"})
            if me.room is not None:
                return await me.send({"type": "error", "error": f"already in room {me.room!r}"})
            members = self.rooms.setdefault(room, [])
            if len(members) >= ROOM_SIZE:
                return await me.send({"type": "error", "error": f"room {room!r} is full"})
            members.append(me)
            me.room = room
            await me.send({"type": "joined", "room": room, "members": len(members)})
            for other in members:
                if other is not me:
                    await other.send({"type": "peer-joined"})
        elif kind == "relay":
            if me.room is None:
                return await me.send({"type": "error", "error": "join a room first"})
            for other in self.rooms.get(me.room, []):
                if other is not me:
                    self.relayed += 1
                    await other.send({"type": "relay", "data": msg.get("data")})
        elif kind == "leave":
            await self._leave(me)
        else:
            await me.send({"type": "error", "error": f"unknown message type {kind!r}"})
        return None

    async def _leave(self, me: _Member) -> None:
        if me.room is None:
            return
        members = self.rooms.get(me.room, [])
        if me in members:
            members.remove(me)
        if not members:
            self.rooms.pop(me.room, None)
        me.room = None
        for other in members:
            await other.send({"type": "peer-left"})


class SignalingClient:
    """A WebSocket client of :class:`SignalingServer` (what each lab peer uses)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float = 5.0) -> SignalingClient:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (TimeoutError, OSError) as exc:
            raise SignalingError(f"cannot reach the signaling server at {host}:{port}: {exc or 'timeout'}") from None
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            raise SignalingError(f"no WebSocket handshake from {host}:{port}: {exc!r}") from None
        text = head.decode("latin-1")
        if not text.startswith("HTTP/1.1 101") or accept_key(key) not in text:
            writer.close()
            raise SignalingError(f"{host}:{port} refused the WebSocket upgrade: {text.splitlines()[0]!r}")
        return cls(reader, writer)

    async def send(self, obj: Mapping[str, Any]) -> None:
        self._writer.write(encode_frame(OP_TEXT, json.dumps(obj).encode(), mask=True))
        await self._writer.drain()

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next JSON message; :class:`SignalingError` on close, error or timeout."""
        try:
            return await asyncio.wait_for(self._recv(), timeout)
        except TimeoutError:
            raise SignalingError("timed out waiting for signaling") from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise SignalingError(f"signaling connection closed: {exc!r}") from None

    async def _recv(self) -> dict[str, Any]:
        while True:
            op, payload = await read_message(self._reader, masked=False)
            if op == OP_CLOSE:
                raise SignalingError("signaling server closed the connection")
            if op == OP_PING:
                self._writer.write(encode_frame(OP_PONG, payload, mask=True))
                continue
            if op == OP_TEXT:
                msg = json.loads(payload)
                if isinstance(msg, dict) and msg.get("type") == "error":
                    raise SignalingError(f"signaling server: {msg.get('error')}")
                if isinstance(msg, dict):
                    return msg

    async def join(self, room: str, timeout: float = 5.0) -> int:
        """Join ``room``; the number of members now in it."""
        await self.send({"type": "join", "room": room})
        msg = await self.recv(timeout)
        if msg.get("type") != "joined":
            raise SignalingError(f"expected 'joined', got {msg!r}")
        return int(msg["members"])

    async def relay(self, data: Any) -> None:
        await self.send({"type": "relay", "data": data})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.write(encode_frame(OP_CLOSE, struct.pack("!H", 1000), mask=True))
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 1)
