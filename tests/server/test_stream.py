"""The stream limits shared by the STUN and TURN listeners (natkit/server/_stream.py), attacked
at a small scale on loopback: one source holding every slot, slowloris, a connection that
never allocates. Each attack held slots before (issue 12, finding 2); a legitimate client from
another source must be served while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import natkit
from natkit.server._stream import StreamGuard, StreamLimits
from natkit.server.turn import TurnServer
from natkit.stun import Attr, Class, Message, Method, decode

pytestmark = pytest.mark.timeout(60)

ATTACKER, OTHER_ATTACKER, LEGIT = "127.0.0.2", "127.0.0.4", "127.0.0.3"


@contextlib.asynccontextmanager
async def server(kind: str, **limits: Any) -> AsyncIterator[tuple[Any, tuple[str, int]]]:
    if kind == "stun":
        limits.pop("allocate_timeout", None)
        async with natkit.StunServer(["127.0.0.1:0"], **limits) as stun:
            yield stun, stun.addresses_of("tcp")[0]
    else:
        async with TurnServer([("127.0.0.1", 0)], users={"u": "p"}, **limits) as turn:
            yield turn, turn.addresses_of("tcp")[0]


def stream_stats(srv: Any) -> dict[str, Any]:
    stats = srv.stats()
    return stats["stream"]


async def half_open(target: tuple[str, int], source: str, n: int) -> list[socket.socket]:
    """``n`` connections from ``source``, each with half a STUN header written."""
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(target)
        out.append(s)
    await asyncio.sleep(0.05)
    for s in out:
        with contextlib.suppress(OSError):
            s.send(Message(Method.BINDING).encode()[:7])
    await asyncio.sleep(0.2)
    return out


async def binding_over_tcp(target: tuple[str, int], source: str, timeout: float = 3) -> bool:
    reader, writer = await asyncio.open_connection(*target, local_addr=(source, 0))
    try:
        writer.write(Message(Method.BINDING).encode())
        head = await asyncio.wait_for(reader.readexactly(20), timeout)
        body = await reader.readexactly(struct.unpack("!H", head[2:4])[0])
        return decode(head + body).cls == Class.SUCCESS
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return False
    finally:
        writer.close()


def alive(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (a read says EOF/reset when it did)."""
    count = 0
    for s in socks:
        try:
            count += s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


@pytest.mark.parametrize("kind", ["stun", "turn"])
async def test_one_source_cannot_take_every_slot(kind: str) -> None:
    """10,050 half-written connections from one source held 10,000 slots (small scale here)."""
    async with server(kind, max_connections=60, max_connections_per_source=20) as (srv, tcp):
        flood = await half_open(tcp, ATTACKER, 100)
        try:
            assert await binding_over_tcp(tcp, LEGIT)
            stats = stream_stats(srv)
            assert stats["dropped"]["per_source_limit"] >= 75
            assert alive(flood) <= 20
        finally:
            for s in flood:
                s.close()


@pytest.mark.parametrize("kind", ["stun", "turn"])
async def test_a_full_server_makes_room_from_the_largest_source(kind: str) -> None:
    async with server(kind, max_connections=30, max_connections_per_source=20) as (srv, tcp):
        flood = await half_open(tcp, ATTACKER, 20) + await half_open(tcp, OTHER_ATTACKER, 10)
        try:
            assert stream_stats(srv)["open"] == 30
            assert await binding_over_tcp(tcp, LEGIT)  # evicts one of the 20, not refused
            stats = stream_stats(srv)
            assert stats["dropped"]["evicted"] >= 1
            assert alive(flood[:20]) <= 19 and alive(flood[20:]) == 10
        finally:
            for s in flood:
                s.close()


@pytest.mark.parametrize("kind", ["stun", "turn"])
async def test_slowloris_is_closed_at_the_first_message_deadline(kind: str) -> None:
    """A byte every so often reset the idle clock: 200/200 slowloris connections stayed."""
    async with server(kind, first_message_timeout=1.0) as (srv, tcp):
        conns = []
        for _ in range(20):
            r, w = await asyncio.open_connection(*tcp, local_addr=(ATTACKER, 0))
            conns.append((r, w))
        request = Message(Method.BINDING).encode()
        t0 = time.monotonic()
        for i in range(8):  # one byte each 0.3 s: never a whole message
            for _, w in conns:
                if not w.is_closing():
                    w.write(request[i : i + 1])
            await asyncio.sleep(0.3)
        closed = 0
        for r, w in conns:
            try:
                closed += await asyncio.wait_for(r.read(), 2) == b""
            except ConnectionError:  # an abort is a reset
                closed += 1
            w.close()
        assert closed == 20
        assert time.monotonic() - t0 < 6
        assert stream_stats(srv)["dropped"]["first_message_timeout"] == 20
        assert await binding_over_tcp(tcp, LEGIT)


async def test_turn_connection_must_allocate_in_time() -> None:
    """Binding requests alone do not keep a TURN stream: the first Allocate has a deadline."""
    async with server("turn", allocate_timeout=1.0) as (srv, tcp):
        r, w = await asyncio.open_connection(*tcp, local_addr=(ATTACKER, 0))
        t0 = time.monotonic()
        got = b"?"
        for _ in range(10):
            w.write(Message(Method.BINDING).encode())
            with contextlib.suppress(ConnectionError, TimeoutError):
                got = await asyncio.wait_for(r.read(1 << 16), 1)
            if got == b"":
                break
            await asyncio.sleep(0.3)
        assert got == b"" and 0.9 < time.monotonic() - t0 < 4
        assert stream_stats(srv)["dropped"]["allocate_timeout"] == 1
        w.close()


async def test_turn_connection_with_an_allocation_outlives_the_idle_timeout() -> None:
    from tests.server.test_turn_server import RawClient

    async with TurnServer(
        [("127.0.0.1", 0)], users={"u": "p"}, idle_timeout=1.0, allocate_timeout=1.0
    ) as turn:
        c = RawClient(turn.addresses_of("tcp")[0], "u", "p", tcp=True)
        assert (await c.allocate()).cls == Class.SUCCESS
        await asyncio.sleep(2.5)
        c.send_raw(Message(Method.BINDING).encode())
        assert decode(await c.recv()).cls == Class.SUCCESS  # still open
        assert stream_stats(turn)["dropped"]["idle_timeout"] == 0
        c.close()


def test_limits_are_checked_and_name_the_option() -> None:
    from natkit.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        TurnServer([("127.0.0.1", 0)], max_connections_per_source=0)
    assert err.value.param == "max_connections_per_source"
    with pytest.raises(ConfigError) as err:
        natkit.StunServer(["127.0.0.1:0"], first_message_timeout=-1)
    assert err.value.param == "first_message_timeout"
    StreamLimits().check()


def test_guard_least_useful_connection_is_evicted_first() -> None:
    class Conn:
        def __init__(self, messages: int, last: float, session: bool = False) -> None:
            self.addr = (ATTACKER, 1)
            self.messages, self.last_message, self.session = messages, last, session
            self.transport = None
            self.admitted = True
            self.created = 0.0
            self.tls = None

    has_session: Callable[[Any], bool] = lambda c: c.session  # noqa: E731
    guard = StreamGuard(StreamLimits(), has_session=has_session)
    conns = {Conn(3, 1.0, session=True): None, Conn(2, 5.0): None, Conn(0, 9.0): None}
    victim = guard._least_useful(conns)  # type: ignore[arg-type]
    assert victim is not None and victim.messages == 0  # nothing complete yet goes first
    only_sessions = {Conn(3, 1.0, session=True): None}
    assert guard._least_useful(only_sessions) is None  # type: ignore[arg-type]
    assert Attr  # (imported for symmetry with the other server tests)
