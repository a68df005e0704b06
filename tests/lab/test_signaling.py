"""The signaling server's rooms and its WebSocket framing, over loopback."""

from __future__ import annotations

import asyncio
import json

import pytest

from natkit.lab.signaling import (
    OP_TEXT,
    SignalingClient,
    SignalingError,
    SignalingServer,
    accept_key,
    encode_frame,
    read_message,
)

pytestmark = pytest.mark.timeout(20)


def test_accept_key_matches_rfc6455_example() -> None:
    # RFC 6455 §1.3
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 200_000])
async def test_frames_round_trip(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for masked in (True, False):
        reader = asyncio.StreamReader()
        reader.feed_data(encode_frame(OP_TEXT, payload, mask=masked))
        reader.feed_eof()
        assert await read_message(reader, masked=masked) == (OP_TEXT, payload)


async def test_unmasked_client_frame_is_refused() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame(OP_TEXT, b"x", mask=False))
    with pytest.raises(SignalingError):
        await read_message(reader, masked=True)


async def test_fragmented_message_is_joined() -> None:
    reader = asyncio.StreamReader()
    first = bytearray(encode_frame(OP_TEXT, b"hel", mask=True))
    first[0] &= 0x7F  # not final
    reader.feed_data(bytes(first) + encode_frame(0, b"lo", mask=True))
    assert await read_message(reader, masked=True) == (OP_TEXT, b"hello")


async def test_room_join_relay_leave() -> None:
    async with SignalingServer("127.0.0.1", 0) as server:
        a = await SignalingClient.connect("127.0.0.1", server.port)
        b = await SignalingClient.connect("127.0.0.1", server.port)
        assert await a.join("r1") == 1
        assert await b.join("r1") == 2
        assert (await a.recv(2)) == {"type": "peer-joined"}
        await a.relay({"sdp": "offer"})
        assert await b.recv(2) == {"type": "relay", "data": {"sdp": "offer"}}
        await b.relay({"sdp": "answer"})
        assert await a.recv(2) == {"type": "relay", "data": {"sdp": "answer"}}
        third = await SignalingClient.connect("127.0.0.1", server.port)
        with pytest.raises(SignalingError, match="full"):
            await third.join("r1")
        await b.close()
        assert await a.recv(2) == {"type": "peer-left"}
        assert server.relayed == 2
        await a.close()
        await third.close()
        for _ in range(50):  # the server notices the closes
            if not server.rooms:
                break
            await asyncio.sleep(0.02)
        assert server.rooms == {}


async def test_rooms_are_separate() -> None:
    async with SignalingServer("127.0.0.1", 0) as server:
        clients = [await SignalingClient.connect("127.0.0.1", server.port) for _ in range(4)]
        for i, c in enumerate(clients):
            await c.join(f"room{i // 2}")
        await clients[0].recv(2)
        await clients[2].recv(2)
        await clients[0].relay("to-1")
        await clients[2].relay("to-3")
        assert (await clients[1].recv(2))["data"] == "to-1"
        assert (await clients[3].recv(2))["data"] == "to-3"
        with pytest.raises(SignalingError, match="timed out"):
            await clients[0].recv(0.2)
        for c in clients:
            await c.close()


async def test_errors_and_http() -> None:
    async with SignalingServer("127.0.0.1", 0, pages={"/": ("text/html", b"<p>hi</p>")}) as server:
        c = await SignalingClient.connect("127.0.0.1", server.port)
        with pytest.raises(SignalingError, match="join a room first"):
            await c.send({"type": "relay", "data": 1}) or await c.recv(2)
        await c.send({"type": "bogus"})
        with pytest.raises(SignalingError, match="unknown message type"):
            await c.recv(2)
        await c.close()
        for path, status, body in (("/", 200, b"<p>hi</p>"), ("/healthz", 200, b"ok\n"), ("/nope", 404, b"not found\n")):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 2)
            assert data.startswith(f"HTTP/1.1 {status}".encode())
            assert data.endswith(body)
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 2)).startswith(b"HTTP/1.1 400")
        writer.close()


async def test_connect_refused_is_a_signaling_error() -> None:
    async with SignalingServer("127.0.0.1", 0) as server:
        port = server.port
    with pytest.raises(SignalingError, match="cannot reach"):
        await SignalingClient.connect("127.0.0.1", port, timeout=1)


def test_messages_are_json_objects() -> None:
    frame = encode_frame(OP_TEXT, json.dumps({"a": 1}).encode(), mask=False)
    assert frame[0] == 0x81 and frame[1] == len(b'{"a": 1}')
