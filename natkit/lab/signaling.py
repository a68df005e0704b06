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
import contextlib
import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from natkit.ice import websocket
from natkit.ice.websocket import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WebSocket,
    WebSocketError,
    accept_key,
    encode_frame,
)

__all__ = ["OP_TEXT", "SignalingClient", "SignalingError", "SignalingServer", "accept_key", "encode_frame", "read_message"]

MAX_MESSAGE = 256 * 1024  # an SDP with candidates is a few KiB
MAX_HEADER = 16 * 1024
ROOM_SIZE = 2


class SignalingError(Exception):
    """The signaling connection failed or closed, or the server reported an error."""


async def read_message(reader: asyncio.StreamReader, *, masked: bool) -> tuple[int, bytes]:
    """:func:`natkit.ice.websocket.read_message` at the signaling size limit; its protocol
    errors as :class:`SignalingError`."""
    try:
        return await websocket.read_message(reader, masked=masked, limit=MAX_MESSAGE)
    except WebSocketError as exc:
        raise SignalingError(str(exc)) from None


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

    def __init__(self, host: str | Sequence[str] = "127.0.0.1", port: int = 0, *,
                 pages: Mapping[str, tuple[str, bytes]] | None = None, extra_ports: Sequence[int] = ()) -> None:
        self.host = host
        self.port = port
        # More ports with the same rooms (port 80 for peers behind a firewall that lets out only
        # web traffic).
        self.extra_ports = tuple(extra_ports)
        self._extra: list[asyncio.Server] = []
        self.pages = dict(pages or {})
        self.rooms: dict[str, list[_Member]] = {}
        self.relayed = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        for extra in self.extra_ports:
            self._extra.append(await asyncio.start_server(self._serve, self.host, extra))

    async def close(self) -> None:
        for server in self._extra:
            server.close()
        self._extra = []
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

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float = 5.0) -> SignalingClient:
        try:
            return cls(await WebSocket.connect(host, port, "/ws", timeout=timeout, limit=MAX_MESSAGE))
        except WebSocketError as exc:
            raise SignalingError(f"signaling server {host}:{port}: {exc}") from None

    async def send(self, obj: Mapping[str, Any]) -> None:
        await self._ws.send_text(json.dumps(obj))

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next JSON message; :class:`SignalingError` on close, error or timeout."""
        try:
            return await asyncio.wait_for(self._recv(), timeout)
        except TimeoutError:
            raise SignalingError("timed out waiting for signaling") from None
        except WebSocketError as exc:
            raise SignalingError(f"signaling connection closed: {exc}") from None

    async def _recv(self) -> dict[str, Any]:
        while True:
            try:
                msg = json.loads(await self._ws.recv_text())
            except ValueError:
                continue
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
        await self._ws.close()
