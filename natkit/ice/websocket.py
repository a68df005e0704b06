"""RFC 6455 WebSocket framing on asyncio streams, and a small client.

The lab's signaling server and its peers (:mod:`natkit.lab.signaling`) and the WebDriver BiDi
client that drives Firefox (:mod:`natkit.ice.browsers.firefox`) speak text frames of JSON over
this; neither needs extensions, subprotocols or TLS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct

__all__ = [
    "OP_BIN",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "WebSocket",
    "WebSocketError",
    "accept_key",
    "encode_frame",
    "read_message",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
MAX_HEADER = 16 * 1024


class WebSocketError(Exception):
    """A protocol violation, an oversized message, or a refused or closed connection."""


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


async def read_message(reader: asyncio.StreamReader, *, masked: bool, limit: int) -> tuple[int, bytes]:
    """The next whole message (continuation frames joined) or control frame: (opcode, payload).

    ``masked`` says whether frames must be masked (what a server reads); a message larger than
    ``limit`` bytes is refused. Raises :class:`WebSocketError` on a protocol violation.
    """
    parts: list[bytes] = []
    opcode = None
    while True:
        b0, b1 = await reader.readexactly(2)
        fin, op = b0 & 0x80, b0 & 0x0F
        if bool(b1 & 0x80) != masked:
            raise WebSocketError("frame masking is wrong for this side")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        if n > limit or sum(map(len, parts)) + n > limit:
            raise WebSocketError(f"message larger than {limit} bytes")
        key = await reader.readexactly(4) if masked else b""
        payload = await reader.readexactly(n)
        if masked:
            payload = _xor(payload, key)
        if op >= 8:  # control frames may come between fragments
            if not fin or n > 125:
                raise WebSocketError("bad control frame")
            return op, payload
        if op == OP_CONT:
            if opcode is None:
                raise WebSocketError("continuation without a first frame")
        elif opcode is not None:
            raise WebSocketError("new message inside a fragmented one")
        else:
            opcode = op
        parts.append(payload)
        if fin:
            return opcode, b"".join(parts)


class WebSocket:
    """The client side of one WebSocket connection: text messages in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
        self._reader = reader
        self._writer = writer
        self.limit = limit

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/", *, timeout: float = 5.0,
                      limit: int = 1 << 20, sock: socket.socket | None = None) -> WebSocket:
        """Open ``ws://host:port/path`` (over ``sock`` if given: a TCP socket connected there
        already); WebSocketError if it cannot be reached or refuses."""
        try:
            opening = asyncio.open_connection(sock=sock) if sock else asyncio.open_connection(host, port)
            reader, writer = await asyncio.wait_for(opening, timeout)
        except (TimeoutError, OSError) as exc:
            raise WebSocketError(f"cannot reach ws://{host}:{port}{path}: {exc or 'timeout'}") from None
        key = base64.b64encode(os.urandom(16)).decode()
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            writer.close()
            raise WebSocketError(f"no WebSocket handshake from {hostport}: {exc!r}") from None
        text = head[:MAX_HEADER].decode("latin-1")
        if not text.startswith("HTTP/1.1 101") or accept_key(key) not in text:
            writer.close()
            raise WebSocketError(f"{hostport} refused the WebSocket upgrade: {text.splitlines()[0]!r}")
        return cls(reader, writer, limit)

    async def send_text(self, text: str) -> None:
        self._writer.write(encode_frame(OP_TEXT, text.encode(), mask=True))
        await self._writer.drain()

    async def recv_text(self) -> str:
        """The next text message (pings answered, binary skipped); WebSocketError once closed."""
        try:
            while True:
                op, payload = await read_message(self._reader, masked=False, limit=self.limit)
                if op == OP_CLOSE:
                    raise WebSocketError("the server closed the connection")
                if op == OP_PING:
                    self._writer.write(encode_frame(OP_PONG, payload, mask=True))
                elif op == OP_TEXT:
                    return payload.decode("utf-8", errors="replace")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise WebSocketError(f"connection closed: {exc!r}") from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.write(encode_frame(OP_CLOSE, struct.pack("!H", 1000), mask=True))
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 1)
