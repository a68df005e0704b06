"""The asyncio STUN client: retransmission, transaction matching, actual sender, auth, TCP."""

from __future__ import annotations

import asyncio

import pytest

from natkit.client.stun import (
    LongTermCredentials,
    RtoEstimator,
    StreamStunClient,
    StunAuthError,
    StunTimeout,
    UdpStunClient,
    local_address_toward,
)
from natkit.stun import CHANGE_IP, CHANGE_PORT, Attr, Class, Message, Method
from tests.nat.fake_server import Behaviour, FakeStunServer

pytestmark = pytest.mark.timeout(30)


def binding() -> Message:
    return Message(Method.BINDING, Class.REQUEST)


async def test_binding_reports_sender_mapping_and_rtt() -> None:
    async with FakeStunServer() as server, await UdpStunClient.open(("127.0.0.1", 0)) as client:
        resp = await client.transact(binding(), server.primary, rto=0.2)
        assert resp.ok
        assert resp.source == server.primary
        assert resp.message.get(Attr.XOR_MAPPED_ADDRESS) == client.local_address
        assert resp.attempts == 1 and 0 <= resp.rtt < 0.2
        assert client.rto.srtt is not None  # the first unambiguous RTT was taken


async def test_response_from_another_address_is_matched_and_reported() -> None:
    async with FakeStunServer() as server, await UdpStunClient.open(("127.0.0.1", 0)) as client:
        msg = binding().add(Attr.CHANGE_REQUEST, CHANGE_IP | CHANGE_PORT)
        resp = await client.transact(msg, server.primary, rto=0.2)
        assert resp.source == server.alternate  # not where it was sent: the caller must check


async def test_retransmits_until_answered() -> None:
    async with (
        FakeStunServer(behaviour=Behaviour(drop_first=2)) as server,
        await UdpStunClient.open(("127.0.0.1", 0)) as client,
    ):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        resp = await client.transact(binding(), server.primary, rto=0.05)
        # Sent at 0, 50 ms, 150 ms: the third is answered.
        assert resp.attempts == 3
        assert 0.14 <= loop.time() - t0 < 1.0
        assert len(server.requests) == 3
        assert all(
            r[2].transaction_id == server.requests[0][2].transaction_id for r in server.requests
        )


async def test_rfc8489_schedule_and_deadline() -> None:
    async with (
        FakeStunServer(behaviour=Behaviour(silent=True)) as server,
        await UdpStunClient.open(("127.0.0.1", 0)) as client,
    ):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(StunTimeout) as info:
            await client.transact(binding(), server.primary, rto=0.02, rc=3, rm=4)
        # 0, 20, 60 ms, then Rm·RTO = 80 ms after the last: 140 ms.
        elapsed = loop.time() - t0
        assert info.value.attempts == 3 and len(server.requests) == 3
        assert 0.13 <= elapsed < 0.6
        t0 = loop.time()
        with pytest.raises(StunTimeout):
            await client.transact(binding(), server.primary, rto=0.05, deadline=loop.time() + 0.12)
        assert 0.11 <= loop.time() - t0 < 0.5
        # Sent at 0 and 50 ms; the next (150 ms) would be past the deadline.
        assert 3 + 1 <= len(server.requests) <= 3 + 2


async def test_wrong_transaction_id_is_ignored() -> None:
    async with (
        FakeStunServer(behaviour=Behaviour(stray_first=True)) as server,
        await UdpStunClient.open(("127.0.0.1", 0)) as client,
    ):
        resp = await client.transact(binding(), server.primary, rto=0.2)
        assert resp.message.get(Attr.XOR_MAPPED_ADDRESS) == client.local_address
        assert client.stray == 1


async def test_expect_request_sees_a_request_sent_to_ourselves() -> None:
    async with await UdpStunClient.open(("127.0.0.1", 0)) as client:
        msg = binding()
        fut = client.expect_request(msg.transaction_id)
        client.send_raw(msg.encode(), client.local_address)
        got, source = await asyncio.wait_for(fut, 2)
        assert got.transaction_id == msg.transaction_id and source == client.local_address


def test_rto_estimator() -> None:
    est = RtoEstimator(initial=0.5, minimum=0.05, maximum=3.0)
    assert est.rto == 0.5
    est.sample(0.001)
    assert est.rto == 0.05  # clamped to the floor
    est.sample(0.2)
    assert 0.05 < est.rto <= 3.0
    for _ in range(50):
        est.sample(10.0)
    assert est.rto == 3.0


def test_local_address_toward() -> None:
    assert local_address_toward(("127.0.0.1", 9)) == "127.0.0.1"


async def test_long_term_credentials_401_then_signed() -> None:
    b = Behaviour(realm="example.org", users={"alice": "s3cret"}, stale_once=True)
    async with (
        FakeStunServer(behaviour=b) as server,
        await UdpStunClient.open(
            ("127.0.0.1", 0), credentials=LongTermCredentials("alice", "s3cret")
        ) as client,
    ):
        resp = await client.request(binding(), server.primary, rto=0.2)
        assert resp.ok
        # unauthenticated -> 401, signed -> 438 stale nonce, signed with the new nonce -> 200
        assert len(server.requests) == 3
        assert server.requests[2][2].get(Attr.NONCE) == "nonce-2"
        # The realm and nonce are kept: the next request is signed at once.
        await client.request(binding(), server.primary, rto=0.2)
        assert len(server.requests) == 4


async def test_wrong_password_is_an_auth_error() -> None:
    b = Behaviour(realm="example.org", users={"alice": "s3cret"})
    async with (
        FakeStunServer(behaviour=b) as server,
        await UdpStunClient.open(
            ("127.0.0.1", 0), credentials=LongTermCredentials("alice", "wrong")
        ) as client,
    ):
        with pytest.raises(StunAuthError):
            await client.request(binding(), server.primary, rto=0.2)


async def test_tcp_transaction() -> None:
    async with FakeStunServer() as server:
        await server.start_tcp()
        async with await StreamStunClient.open(server.primary, timeout=2) as client:
            resp = await client.transact(binding(), timeout=2)
            assert resp.ok and resp.source == server.primary
            assert resp.message.get(Attr.XOR_MAPPED_ADDRESS) == client.local_address
            # Two in flight on one connection are told apart by transaction id.
            r1, r2 = await asyncio.gather(client.transact(binding()), client.transact(binding()))
            assert r1.message.transaction_id != r2.message.transaction_id


async def test_tcp_refused_is_oserror() -> None:
    from tests.nat.fake_server import free_port

    with pytest.raises(OSError):
        await StreamStunClient.open(("127.0.0.1", free_port()), timeout=2)


async def test_stream_open_failures_are_protocol_errors() -> None:
    import socket

    from natkit.client.stun import StreamStunClient, StunConnectionError, StunTimeout
    from natkit.errors import ProtocolError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(StunConnectionError, match="refused the TCP connection") as info:
            await StreamStunClient.open(("127.0.0.1", port), timeout=1)
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, OSError)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts, never speaks TLS
        with pytest.raises((StunTimeout, StunConnectionError)) as info2:
            await StreamStunClient.open(s.getsockname(), tls=True, timeout=0.3)
    assert isinstance(info2.value, ProtocolError)
