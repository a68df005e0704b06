"""natkit.server.stun: the STUN responder over UDP, TCP and TLS, plain and RFC 5780 mode."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import natkit
from natkit.errors import ConfigError, UsageError
from natkit.server._binding import BindingResponder, Reply
from natkit.server._fastpath import (
    EXTENSION,
    FAST,
    GARBAGE,
    SLOW,
    address_attr,
    classify,
    fast_response,
)
from natkit.stun import Attr, Class, ErrorCode, Message, Method, decode
from tests._certs import ec_self_signed
from tests._native import need

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[True, False], ids=["c", "python"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Both UDP paths: the C extension (required in CI) and the pure-Python loop."""
    if request.param:
        need(EXTENSION)
    return bool(request.param)


def udp_client(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    s.bind((host, 0))
    return s


async def exchange(
    sock: socket.socket, data: bytes, dst: tuple[str, int]
) -> tuple[Message, bytes, tuple[str, int]]:
    sock.sendto(data, dst)
    raw, src = await asyncio.to_thread(sock.recvfrom, 65535)
    return decode(raw, allow_legacy=True), raw, src[:2]


async def udp_stats(srv: natkit.StunServer, **want: int) -> dict[str, int]:
    """The UDP counters once they show ``want`` (a reply leaves before its counter moves)."""
    for _ in range(100):
        stats: dict[str, int] = srv.stats()["udp"]
        if all(stats[k] == v for k, v in want.items()):
            break
        await asyncio.sleep(0.01)
    return stats


def no_reply(sock: socket.socket, wait: float = 0.3) -> bool:
    sock.settimeout(wait)
    try:
        sock.recvfrom(65535)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


# ------------------------------------------------------------------ plain mode, UDP


async def test_binding_success_udp(fast_path: bool) -> None:
    async with natkit.StunServer(["127.0.0.1:0"], fast_path=fast_path, tcp=False) as srv:
        server = srv.udp_address
        with udp_client() as c:
            for fingerprint in (False, True):
                req = Message(Method.BINDING)
                resp, _, src = await exchange(c, req.encode(fingerprint=fingerprint), server)
                assert src == server
                assert resp.cls == Class.SUCCESS and resp.transaction_id == req.transaction_id
                assert resp.get(Attr.XOR_MAPPED_ADDRESS) == c.getsockname()
                assert resp.get(Attr.RESPONSE_ORIGIN) == server
                assert Attr.SOFTWARE not in resp and Attr.OTHER_ADDRESS not in resp
                assert Attr.MAPPED_ADDRESS not in resp
                assert (Attr.FINGERPRINT in resp) == fingerprint
        assert (await udp_stats(srv, responses=2))["responses"] == 2


async def test_fast_path_answers_like_the_general_path(fast_path: bool) -> None:
    """Requests the fast path takes get the very bytes the codec path builds."""
    responder = BindingResponder(software="natkit-test")
    async with natkit.StunServer(
        ["127.0.0.1:0"], fast_path=fast_path, software="natkit-test", tcp=False
    ) as srv:
        server = srv.udp_address
        with udp_client() as c:
            variants = [
                Message(Method.BINDING),
                Message(Method.BINDING).add(Attr.SOFTWARE, "some client"),
                Message(Method.BINDING).add(Attr.ICE_CONTROLLING, 12345678901234),
                Message(Method.BINDING).add(0x8FFF, b"opt"),
            ]
            for i, req in enumerate(variants):
                for fp in (False, True):
                    data = req.encode(fingerprint=fp)
                    kind, has_fp = classify(data)
                    # only attribute-less requests (FINGERPRINT aside) take the fast path
                    assert kind == (FAST if i == 0 else SLOW) and has_fp == (fp and i == 0)
                    _, raw, _ = await exchange(c, data, server)
                    expected = responder.respond(data, c.getsockname(), server)
                    assert isinstance(expected, Reply)
                    assert raw == expected.data
        stats = await udp_stats(srv, fast=2, slow=6)
        assert (stats["fast"], stats["slow"]) == (2, 6)


def test_python_fast_response_matches_codec_ipv6() -> None:
    responder = BindingResponder()
    req = Message(Method.BINDING).encode(fingerprint=True)
    src, local = ("2001:db8::7", 40000), ("2001:db8::1", 3478)
    kind, fp = classify(req)
    assert kind == FAST and fp
    built = fast_response(req, fp, src, address_attr(0x802B, *local), b"")
    reply = responder.respond(req, src, local)
    assert isinstance(reply, Reply) and built == reply.data


def _datagram(data: st.DataObject) -> bytes:
    """Random bytes, or a real Binding request with a few bytes changed and maybe cut short."""
    seeds = [
        Message(Method.BINDING, transaction_id=b"t" * 12).encode(),
        Message(Method.BINDING, transaction_id=b"t" * 12).encode(fingerprint=True),
        Message(Method.BINDING, transaction_id=b"t" * 12).add(Attr.SOFTWARE, "x").encode(),
    ]
    if data.draw(st.booleans()):
        raw = bytearray(data.draw(st.sampled_from(seeds)))
        for _ in range(data.draw(st.integers(0, 3))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        raw = raw[: data.draw(st.integers(0, len(raw)))] if data.draw(st.booleans()) else raw
        return bytes(raw)
    return data.draw(st.binary(max_size=64))


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_c_and_python_fast_paths_build_the_same_bytes(data: st.DataObject) -> None:
    """The C extension's classifier and reply builder against the pure-Python ones, byte for
    byte, IPv4 and IPv6, with and without a per-datagram local address (wildcard sockets) and
    extra attributes (OTHER-ADDRESS, SOFTWARE)."""
    ext = need(EXTENSION)
    blob = _datagram(data)
    assert ext.classify(blob) == classify(blob)
    v6 = data.draw(st.booleans())
    family = socket.AF_INET6 if v6 else socket.AF_INET
    ips = ["2001:db8::7", "::1", "fe80::1:2"] if v6 else ["198.51.100.9", "127.0.0.1", "0.0.0.0"]
    src = (data.draw(st.sampled_from(ips)), data.draw(st.integers(0, 65535)))
    origin = ("2001:db8::1" if v6 else "192.0.2.1", data.draw(st.integers(1, 65535)))
    local = data.draw(st.sampled_from([None, "::2" if v6 else "192.0.2.77"]))
    extra = BindingResponder(software=data.draw(st.sampled_from([None, "natkit", "x" * 13])))
    extra_attrs = extra.fast_extra(("192.0.2.2", 3479) if not v6 else None)
    pack = lambda ip: socket.inet_pton(family, ip)  # noqa: E731
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        responder = ext.Responder(
            sock.fileno(), family, local is not None, pack(origin[0]), origin[1], extra_attrs
        )
        got = responder.answer(blob, pack(src[0]), src[1], pack(local) if local else None)
    kind, fp = classify(blob)
    if kind != FAST:
        assert got is None
        return
    where = address_attr(0x802B, local or origin[0], origin[1])
    assert got == fast_response(blob, fp, src, where, extra_attrs)


@settings(max_examples=2000, deadline=None)
@given(st.data())
def test_fast_path_never_disagrees_with_the_codec(data: st.DataObject) -> None:
    """Over random bytes and mutations of real requests: what the fast path answers, the codec
    accepts and answers with the same bytes; what it drops as garbage, the codec rejects."""
    blob = _datagram(data)
    kind, fp = classify(blob)
    src, local = ("198.51.100.9", 5555), ("192.0.2.1", 3478)
    reply = BindingResponder().respond(blob, src, local)
    if kind == FAST:
        assert isinstance(reply, Reply)
        assert fast_response(blob, fp, src, address_attr(0x802B, *local), b"") == reply.data
    elif kind == GARBAGE:
        assert reply == "garbage"


async def test_legacy_rfc3489_request_gets_mapped_address(fast_path: bool) -> None:
    async with natkit.StunServer(["127.0.0.1:0"], fast_path=fast_path, tcp=False) as srv:
        with udp_client() as c:
            req = Message(Method.BINDING, legacy=True)  # 16-byte id, no magic cookie
            resp, raw, _ = await exchange(c, req.encode(), srv.udp_address)
            assert raw[4:8] != b"\x21\x12\xa4\x42"
            assert resp.legacy and resp.transaction_id == req.transaction_id
            assert resp.get(Attr.MAPPED_ADDRESS) == c.getsockname()
            assert resp.get(Attr.SOURCE_ADDRESS) == srv.udp_address
            assert Attr.XOR_MAPPED_ADDRESS not in resp


async def test_plain_mode_answers_420_to_rfc5780_and_unknown_attributes(fast_path: bool) -> None:
    async with natkit.StunServer(["127.0.0.1:0"], fast_path=fast_path, tcp=False) as srv:
        with udp_client() as c:
            cases = [
                (Message(Method.BINDING).add(Attr.CHANGE_REQUEST, 0x06), (0x0003,)),
                (Message(Method.BINDING).add(Attr.RESPONSE_PORT, 9), (0x0027,)),
                (Message(Method.BINDING).add(Attr.PADDING, b"x" * 8), (0x0026,)),
                (Message(Method.BINDING).add(0x0033, b"abcd").add(0x7FFE, b""), (0x0033, 0x7FFE)),
            ]
            for req, unknown in cases:
                resp, _, _ = await exchange(c, req.encode(fingerprint=True), srv.udp_address)
                assert resp.cls == Class.ERROR
                assert resp.error_code == ErrorCode(420, "Unknown Attribute")
                assert resp.get(Attr.UNKNOWN_ATTRIBUTES) == unknown
                assert Attr.FINGERPRINT in resp
            # comprehension-optional unknown attributes are simply ignored
            req = Message(Method.BINDING).add(0x8FFE, b"whatever")
            resp, _, _ = await exchange(c, req.encode(), srv.udp_address)
            assert resp.cls == Class.SUCCESS


async def test_indications_responses_garbage_are_dropped_and_counted(fast_path: bool) -> None:
    async with natkit.StunServer(["127.0.0.1:0"], fast_path=fast_path, tcp=False) as srv:
        with udp_client() as c:
            ignored = [
                Message(Method.BINDING, Class.INDICATION).encode(),
                Message(Method.BINDING, Class.SUCCESS).encode(),
                Message(Method.BINDING, Class.ERROR)
                .add(Attr.ERROR_CODE, ErrorCode(400, "x"))
                .encode(),
            ]
            garbage = [b"", b"\x00", b"hello world, not stun", b"\x00\x01\x00\x04" + bytes(16)]
            bad_fp = bytearray(Message(Method.BINDING).encode(fingerprint=True))
            bad_fp[-1] ^= 0xFF
            garbage.append(bytes(bad_fp))
            for data in ignored + garbage:
                c.sendto(data, srv.udp_address)
            assert no_reply(c)
            resp, _, _ = await exchange(c, Message(Method.ALLOCATE).encode(), srv.udp_address)
            assert resp.cls == Class.ERROR and resp.error_code.code == 400
        stats = await udp_stats(srv, ignored=len(ignored), garbage=len(garbage))
        assert stats["ignored"] == len(ignored)
        assert stats["garbage"] == len(garbage)


async def test_malformed_flood_then_normal_request(fast_path: bool) -> None:
    """Tens of thousands of random and mutated datagrams, then a normal request is answered."""
    rng = random.Random(5780)
    valid = [
        Message(Method.BINDING).encode(fingerprint=True),
        Message(Method.BINDING).add(Attr.SOFTWARE, "x" * 9).encode(),
        Message(Method.BINDING).add(Attr.CHANGE_REQUEST, 6).encode(),
        Message(Method.BINDING, legacy=True).add(Attr.CHANGE_REQUEST, 2).encode(),
        Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode(),
    ]
    async with natkit.StunServer(["127.0.0.1:0"], fast_path=fast_path, tcp=False) as srv:
        with udp_client() as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # replies may drop: fine
            sent = 0
            for i in range(30_000):
                if i % 2:
                    data = rng.randbytes(rng.randrange(0, 120))
                else:
                    data = bytearray(rng.choice(valid))
                    for _ in range(rng.randrange(1, 4)):
                        data[rng.randrange(len(data))] = rng.randrange(256)
                    if rng.random() < 0.2:
                        data = data[: rng.randrange(len(data))]
                c.sendto(bytes(data), srv.udp_address)
                sent += 1
                if i % 2000 == 0:
                    await asyncio.sleep(0)  # let the kernel queue drain a little
            await asyncio.sleep(0.3)
            while not no_reply(c, 0.05):
                pass  # drain the answers the mutated valid messages earned
            req = Message(Method.BINDING)
            resp, _, _ = await exchange(c, req.encode(), srv.udp_address)
            assert resp.transaction_id == req.transaction_id
            assert resp.get(Attr.XOR_MAPPED_ADDRESS) == c.getsockname()
        stats = srv.stats()["udp"]
        assert sent == 30_000
        assert stats["garbage"] > 10_000
        assert stats["errors"] == 0


async def test_wildcard_socket_answers_from_the_address_asked() -> None:
    """Bound to 0.0.0.0, the reply leaves from (and RESPONSE-ORIGIN names) the request's
    destination, on each loopback address."""
    async with natkit.StunServer(["0.0.0.0:0"], tcp=False) as srv:
        port = srv.udp_address[1]
        with udp_client(host="127.0.0.1") as c:
            for target in ("127.0.0.1", "127.0.0.2"):
                resp, _, src = await exchange(c, Message(Method.BINDING).encode(), (target, port))
                assert src == (target, port)
                assert resp.get(Attr.RESPONSE_ORIGIN) == (target, port)
                # slow path (codec) too: CHANGE-REQUEST with no flags is answered normally
                req = Message(Method.BINDING).add(Attr.SOFTWARE, "s").add(0x0033, b"")
                resp, _, src = await exchange(c, req.encode(), (target, port))
                assert src == (target, port) and resp.cls == Class.ERROR


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")
async def test_ipv6_loopback() -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 on this host")
    for listen in ("[::1]:0", "[::]:0"):  # specific, and wildcard (IPV6_PKTINFO)
        async with natkit.StunServer([listen], tcp=False) as srv:
            server = ("::1", srv.udp_address[1])
            with udp_client(socket.AF_INET6, "::1") as c:
                for req in (Message(Method.BINDING), Message(Method.BINDING).add(0x8FF0, b"")):
                    resp, _, src = await exchange(c, req.encode(), server)
                    assert src == server
                    assert resp.get(Attr.XOR_MAPPED_ADDRESS) == c.getsockname()[:2]
                    assert resp.get(Attr.RESPONSE_ORIGIN) == server


async def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="specific listen"):
        natkit.StunServer(["0.0.0.0:0"], alternate_ip="127.0.0.2")
    with pytest.raises(UsageError, match="not an IP"):
        natkit.StunServer(["localhost:3478"])
    with pytest.raises(UsageError, match="both"):
        natkit.StunServer(["127.0.0.1:0"], tls_cert="x.pem")
    # a library caller is told the parameter, not a command line flag (the CLI maps it)
    for kwargs, param in [({"alternate_ip": "nope"}, "alternate_ip"),
                          ({"alternate_ip": "::1"}, "alternate_ip"),
                          ({"alternate_ip": "127.0.0.1"}, "alternate_ip"),
                          ({"alternate_ip": "127.0.0.2", "alternate_port": 70000}, "alternate_port"),
                          ({"tls_cert": "x.pem"}, "tls_key"),
                          ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}, "tls_cert")]:
        with pytest.raises(ConfigError) as info:
            natkit.StunServer(["127.0.0.1:0"], **kwargs)  # type: ignore[arg-type]
        assert info.value.param == param and "--" not in str(info.value), (kwargs, info.value)
    async with natkit.StunServer(["127.0.0.1:0"], tcp=False) as srv:
        with pytest.raises(UsageError, match="cannot listen"):
            async with natkit.StunServer([srv.udp_address], tcp=False):
                pass


# ------------------------------------------------------------------ RFC 5780 mode


async def test_rfc5780_change_request_and_other_address(fast_path: bool) -> None:
    async with natkit.StunServer(
        ["127.0.0.1:0"], alternate_ip="127.0.0.2", fast_path=fast_path, tcp=False
    ) as srv:
        primary = srv.udp_address
        port = primary[1]
        alt_port = port + 1
        assert set(srv.addresses_of("udp")) == {
            ("127.0.0.1", port), ("127.0.0.1", alt_port),
            ("127.0.0.2", port), ("127.0.0.2", alt_port),
        }  # fmt: skip
        with udp_client() as c:
            expect = {
                0: ("127.0.0.1", port),
                0x2: ("127.0.0.1", alt_port),
                0x4: ("127.0.0.2", port),
                0x6: ("127.0.0.2", alt_port),
            }
            for flags, origin in expect.items():
                req = Message(Method.BINDING)
                if flags:
                    req.add(Attr.CHANGE_REQUEST, flags)
                resp, _, src = await exchange(c, req.encode(fingerprint=True), primary)
                assert resp.cls == Class.SUCCESS
                assert src == origin
                assert resp.get(Attr.RESPONSE_ORIGIN) == origin
                assert resp.get(Attr.OTHER_ADDRESS) == ("127.0.0.2", alt_port)
                assert resp.get(Attr.XOR_MAPPED_ADDRESS) == c.getsockname()
            # OTHER-ADDRESS is relative to the socket asked
            resp, _, _ = await exchange(c, Message(Method.BINDING).encode(), ("127.0.0.2", port))
            assert resp.get(Attr.OTHER_ADDRESS) == ("127.0.0.1", alt_port)
            # legacy clients get CHANGED-ADDRESS
            req = Message(Method.BINDING, legacy=True).add(Attr.CHANGE_REQUEST, 0x4)
            resp, _, src = await exchange(c, req.encode(), primary)
            assert src == ("127.0.0.2", port)
            assert resp.get(Attr.CHANGED_ADDRESS) == ("127.0.0.2", alt_port)
            assert resp.get(Attr.MAPPED_ADDRESS) == c.getsockname()


async def test_rfc5780_response_port_and_padding_limits() -> None:
    async with natkit.StunServer(["127.0.0.1:0"], alternate_ip="127.0.0.2", tcp=False) as srv:
        primary = srv.udp_address
        with udp_client() as c, udp_client() as other:
            req = Message(Method.BINDING).add(Attr.RESPONSE_PORT, other.getsockname()[1])
            c.sendto(req.encode(), primary)
            raw, _ = await asyncio.to_thread(other.recvfrom, 2048)
            resp = decode(raw)
            assert resp.transaction_id == req.transaction_id
            assert resp.get(Attr.XOR_MAPPED_ADDRESS) == c.getsockname()  # who asked
            assert no_reply(c, 0.1)
            # PADDING: never larger than the request (the peer proved nothing over UDP)
            for pad in (0, 4, 40, 400, 1400):
                data = Message(Method.BINDING).add(Attr.PADDING, b"\xaa" * pad).encode()
                resp, raw, _ = await exchange(c, data, primary)
                assert resp.cls == Class.SUCCESS
                assert len(raw) <= max(len(data), 56), (pad, len(data), len(raw))
                if pad >= 40:
                    assert Attr.PADDING in resp
                    assert len(raw) >= len(data) - 4  # padded up to about the request size


def test_amplification_bound_over_many_requests() -> None:
    """For any request the general path answers over UDP, the reply is at most about the
    request's size or the plain Binding response (no attribute the client asks for inflates)."""
    responder = BindingResponder(rfc5780=True)
    rng = random.Random(1)
    addr = ("192.0.2.1", 1000)
    plain = responder.respond(Message(Method.BINDING).encode(), addr, addr, other=addr)
    assert isinstance(plain, Reply)
    base = len(plain.data) + 8  # + FINGERPRINT
    choices = [
        (Attr.PADDING, lambda: b"p" * rng.randrange(0, 2000)),
        (Attr.CHANGE_REQUEST, lambda: rng.choice([0, 2, 4, 6])),
        (Attr.RESPONSE_PORT, lambda: rng.randrange(1, 65535)),
        (Attr.SOFTWARE, lambda: "s" * rng.randrange(0, 100)),
        (0x0041, lambda: b"u" * rng.randrange(0, 8)),
        (0x0042, lambda: b""),
    ]
    for _ in range(2000):
        req = Message(Method.BINDING, legacy=rng.random() < 0.2)
        for t, make in rng.sample(choices, rng.randrange(0, len(choices))):
            req.add(t, make())
        data = req.encode(fingerprint=rng.random() < 0.5)
        reply = responder.respond(data, addr, addr, other=addr, lookup=lambda i, p: addr)
        assert isinstance(reply, Reply)
        assert len(reply.data) <= max(len(data), base), req


# ------------------------------------------------------------------ TCP / TLS


async def read_message(reader: asyncio.StreamReader) -> Message:
    head = await reader.readexactly(20)
    body = await reader.readexactly(struct.unpack("!H", head[2:4])[0])
    return decode(head + body)


async def test_tcp_framing_several_and_partial_messages() -> None:
    async with natkit.StunServer(["127.0.0.1:0"]) as srv:
        tcp = srv.addresses_of("tcp")[0]
        assert tcp == srv.udp_address  # same port for both
        reader, writer = await asyncio.open_connection(*tcp)
        reqs = [Message(Method.BINDING) for _ in range(4)]
        blob = b"".join(r.encode(fingerprint=i % 2 == 1) for i, r in enumerate(reqs))
        writer.write(blob[:50])  # three messages' worth split at odd places
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(blob[50:77])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(blob[77:])
        await writer.drain()
        local = writer.get_extra_info("sockname")[:2]
        for i, req in enumerate(reqs):
            resp = await asyncio.wait_for(read_message(reader), 2)
            assert resp.transaction_id == req.transaction_id
            assert resp.get(Attr.XOR_MAPPED_ADDRESS) == local
            assert resp.get(Attr.RESPONSE_ORIGIN) == tcp
            assert (Attr.FINGERPRINT in resp) == (i % 2 == 1)
        # a stream that stops being STUN is closed
        writer.write(b"\xff" * 24)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        assert srv.stats()["stream"]["responses"] == 4
        assert srv.stats()["stream"]["garbage"] == 1


async def test_tcp_idle_timeout_counts_complete_messages_not_bytes() -> None:
    async with natkit.StunServer(["127.0.0.1:0"], idle_timeout=1.0) as srv:
        tcp = srv.addresses_of("tcp")[0]
        idle_r, idle_w = await asyncio.open_connection(*tcp)
        idle_w.write(Message(Method.BINDING).encode())
        assert (await asyncio.wait_for(read_message(idle_r), 2)).cls == Class.SUCCESS
        t0 = time.monotonic()
        partial = Message(Method.BINDING).encode()
        for i in range(6):  # a byte every 0.4 s (slowloris) does not reset the idle clock
            idle_w.write(partial[i : i + 1])
            await idle_w.drain()
            await asyncio.sleep(0.4)
            if idle_r.at_eof():
                break
        assert await asyncio.wait_for(idle_r.read(), 3) == b""
        assert 0.9 < time.monotonic() - t0 < 3.5
        idle_w.close()
        r, w = await asyncio.open_connection(*tcp)
        w.write(Message(Method.BINDING).encode())
        resp = await asyncio.wait_for(read_message(r), 2)
        assert resp.cls == Class.SUCCESS
        w.close()
        assert srv.stats()["stream"]["dropped"]["idle_timeout"] == 1


async def test_tcp_first_message_deadline() -> None:
    async with natkit.StunServer(["127.0.0.1:0"], first_message_timeout=0.5) as srv:
        tcp = srv.addresses_of("tcp")[0]
        idle_r, idle_w = await asyncio.open_connection(*tcp)
        idle_w.write(Message(Method.BINDING).encode()[:7])  # half a header, then silence
        await idle_w.drain()
        t0 = time.monotonic()
        assert await asyncio.wait_for(idle_r.read(), 3) == b""
        assert 0.4 < time.monotonic() - t0 < 2.5
        idle_w.close()
        assert srv.stats()["stream"]["dropped"]["first_message_timeout"] == 1


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key, _ = ec_self_signed(tmp_path)
    return cert, key


async def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    async with natkit.StunServer(["127.0.0.1:0"], tls_cert=cert, tls_key=key, tls_port=0) as srv:
        tls = srv.addresses_of("tls")[0]
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        reader, writer = await asyncio.open_connection(*tls, ssl=ctx)
        reqs = [Message(Method.BINDING) for _ in range(2)]
        writer.write(b"".join(r.encode() for r in reqs))
        for req in reqs:
            resp = await asyncio.wait_for(read_message(reader), 2)
            assert resp.transaction_id == req.transaction_id
            assert resp.get(Attr.XOR_MAPPED_ADDRESS) == writer.get_extra_info("sockname")[:2]
        writer.close()


# ------------------------------------------------------------------ the CLI


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "natkit", "serve", "stun", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _ready_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first JSON line: the server is up
    try:
        ready = json.loads(line)
    except ValueError:
        proc.kill()
        raise AssertionError(
            f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        ) from None
    assert ready["workers"] >= 1 and ready["fast_path"]
    assert (ready["schema_version"], ready["kind"], ready["event"]) == (1, "serve-stun", "ready")
    return int(ready["addresses"][0]["port"])


@pytest.mark.parametrize(
    ("workers", "rfc5780"), [(1, False), (2, False), (2, True)], ids=["1", "2", "2-rfc5780"]
)
def test_cli_serve_stops_cleanly_on_sigterm(workers: int, rfc5780: bool) -> None:
    extra = ["--alternate-ip", "127.0.0.2"] if rfc5780 else []
    proc = _serve("--listen", "127.0.0.1:0", "--workers", str(workers), *extra)
    try:
        port = _ready_port(proc)
        with udp_client() as c:
            # several source ports: with 2 workers the kernel spreads them over both
            for _ in range(6):
                with udp_client() as each:
                    req = Message(Method.BINDING)
                    if rfc5780:
                        req.add(Attr.CHANGE_REQUEST, 0x6)
                    each.sendto(req.encode(), ("127.0.0.1", port))
                    raw, src = each.recvfrom(2048)
                    assert decode(raw).transaction_id == req.transaction_id
                    assert src == (("127.0.0.2", port + 1) if rfc5780 else ("127.0.0.1", port))
            c.sendto(Message(Method.BINDING).encode(), ("127.0.0.1", port))
            assert decode(c.recv(2048)).cls == Class.SUCCESS
        children = _children(proc.pid)
        assert len(children) >= workers - 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        last = json.loads(out.strip().splitlines()[-1])
        assert (last["schema_version"], last["kind"], last["event"]) == (1, "serve-stun", "stopped")
        assert last["stopped"] is True
        assert "Traceback" not in err
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if _alive(pid)], "a worker outlived the server"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cli_usage_errors_are_one_line() -> None:
    for args, says in (
        (["--listen", "nope:1"], "bad address 'nope:1'"),
        (["--listen", "0.0.0.0:0", "--alternate-ip", "127.0.0.2"], "--listen: RFC 5780 mode"),
        (["--listen", "127.0.0.1:0", "--alternate-ip", "::1"], "--alternate-ip: ::1 has no listen"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "--tls-cert /nonexistent"),
        (["--tls-cert", __file__, "--tls-key", __file__], "--tls-cert: cannot load TLS certificate"),
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "natkit", "serve", "stun", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert f"natkit serve: error: {says}" in done.stderr, done.stderr  # names the flag


async def test_tcp_in_rfc5780_mode_refuses_udp_only_attributes() -> None:
    async with natkit.StunServer(["127.0.0.1:0"], alternate_ip="127.0.0.2") as srv:
        reader, writer = await asyncio.open_connection(*srv.addresses_of("tcp")[0])
        plain = Message(Method.BINDING)
        change = Message(Method.BINDING).add(Attr.CHANGE_REQUEST, 0x4)
        writer.write(plain.encode() + change.encode())
        resp = await asyncio.wait_for(read_message(reader), 2)
        assert resp.transaction_id == plain.transaction_id
        assert resp.get(Attr.OTHER_ADDRESS) == ("127.0.0.2", srv.udp_address[1] + 1)
        resp = await asyncio.wait_for(read_message(reader), 2)
        assert resp.transaction_id == change.transaction_id
        assert resp.error_code is not None and resp.error_code.code == 400
        writer.close()


async def test_tcp_connection_cap() -> None:
    async with natkit.StunServer(["127.0.0.1:0"], max_connections=2) as srv:
        tcp = srv.addresses_of("tcp")[0]
        held = [await asyncio.open_connection(*tcp) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection(*tcp)
        writer.write(Message(Method.BINDING).encode())
        assert await asyncio.wait_for(reader.read(), 2) == b""  # refused at once
        writer.close()
        r, w = held[0]
        w.write(Message(Method.BINDING).encode())
        assert (await asyncio.wait_for(read_message(r), 2)).cls == Class.SUCCESS
        for _, w in held:
            w.close()
        assert srv.stats()["stream"]["dropped"]["total_limit"] == 1


async def test_a_flooding_client_does_not_stall_others(fast_path: bool) -> None:
    """While one client floods garbage and slow-path requests, another is answered promptly."""
    import threading

    async with natkit.StunServer(["127.0.0.1:0"], fast_path=fast_path, tcp=False) as srv:
        target = srv.udp_address
        stop = threading.Event()

        def flood() -> None:
            rng = random.Random(7)
            slow = Message(Method.BINDING).add(0x0033, b"x").encode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as f:
                f.bind(("127.0.0.1", 0))
                f.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read: drops
                deadline = time.monotonic() + 10
                while not stop.is_set() and time.monotonic() < deadline:
                    f.sendto(slow if rng.random() < 0.5 else rng.randbytes(40), target)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            await asyncio.sleep(0.2)
            worst = 0.0
            with udp_client() as c:
                c.settimeout(0.2)
                for _ in range(40):
                    req = Message(Method.BINDING)
                    t0 = time.monotonic()
                    for _attempt in range(10):  # UDP: the kernel may drop under the flood
                        c.sendto(req.encode(), target)
                        try:
                            raw = await asyncio.to_thread(c.recv, 2048)
                        except TimeoutError:
                            continue
                        if decode(raw).transaction_id == req.transaction_id:
                            break
                    else:
                        raise AssertionError("no answer during the flood")
                    worst = max(worst, time.monotonic() - t0)
            # A stall is no answer at all; on a loaded 2-core box (the flooder shares this
            # process's GIL) one answer may take a few retries, hence the 2 s bound.
            assert worst < 2.0, worst
        finally:
            stop.set()
            flooder.join(5)
        stats = srv.stats()["udp"]
        assert stats["garbage"] > 100
        assert stats["rate_limited"] > 100  # the flooder's slow-path requests, over budget


def test_source_budget_token_bucket() -> None:
    from natkit.server._budget import SourceBudget

    b = SourceBudget(rate=10, burst=3, max_sources=2)
    assert [b.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert b.allow("b", 0.0)  # another source has its own bucket
    assert not b.allow("a", 0.05)  # half a token
    assert b.allow("a", 0.1)  # one token after 0.1 s at 10/s
    assert b.allow("c", 0.1)  # table full: refilled buckets forgotten, never a new source refused
    assert not b.allow("a", 0.1)  # a spent bucket is not forgotten for that


async def test_server_replies_equal_the_codec_path_over_mutations(fast_path: bool) -> None:
    """Differential test of the whole UDP path (C or Python fast path + hand-over): for random
    and mutated datagrams, the server's reply (or silence) is exactly what the codec path says.
    Each datagram is followed by a sentinel that also takes the general path, so its reply marks
    the point where any reply to the datagram has already arrived."""
    rng = random.Random(8489)
    responder = BindingResponder()
    tid = b"\x5a" * 12
    seeds = [
        Message(Method.BINDING, transaction_id=tid).encode(),
        Message(Method.BINDING, transaction_id=tid).encode(fingerprint=True),
        Message(Method.BINDING, transaction_id=tid).add(Attr.SOFTWARE, "abc").encode(),
        Message(Method.BINDING, transaction_id=tid).add(0x0033, b"").encode(fingerprint=True),
        Message(Method.BINDING, legacy=True).encode(),
    ]
    async with natkit.StunServer(
        ["127.0.0.1:0"], fast_path=fast_path, tcp=False, slow_path_rate=1e9, slow_path_burst=1e9
    ) as srv:
        server = srv.udp_address
        replied = silent = 0
        with udp_client() as c:
            me = c.getsockname()
            for i in range(1500):
                if i % 5 == 0:
                    data = rng.randbytes(rng.choice([20, 28, rng.randrange(0, 60)]))
                else:
                    raw = bytearray(rng.choice(seeds))
                    for _ in range(rng.randrange(1, 3)):
                        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
                    data = bytes(raw)
                sentinel = Message(Method.BINDING).add(Attr.SOFTWARE, "sentinel")
                c.sendto(data, server)
                c.sendto(sentinel.encode(), server)
                got = []
                while True:
                    reply = await asyncio.to_thread(c.recv, 4096)
                    if reply[8:20] == sentinel.transaction_id:
                        break
                    got.append(reply)
                expected = responder.respond(data, me, server)
                want = [expected.data] if isinstance(expected, Reply) else []
                assert got == want, (i, data.hex())
                replied, silent = replied + bool(want), silent + (not want)
        assert replied > 200 and silent > 200, (replied, silent)  # both kinds were exercised
        assert (await udp_stats(srv))["fast"] > 100


async def test_tcp_big_batch_is_answered_in_slices_without_stalling_others() -> None:
    async with natkit.StunServer(["127.0.0.1:0"]) as srv:
        tcp = srv.addresses_of("tcp")[0]
        big_r, big_w = await asyncio.open_connection(*tcp)
        reqs = [Message(Method.BINDING) for _ in range(3000)]
        big_w.write(b"".join(r.encode() for r in reqs))
        r, w = await asyncio.open_connection(*tcp)
        t0 = time.monotonic()
        w.write(Message(Method.BINDING).encode())
        assert (await asyncio.wait_for(read_message(r), 5)).cls == Class.SUCCESS
        small_latency = time.monotonic() - t0
        for req in reqs:  # every one answered, in order
            resp = await asyncio.wait_for(read_message(big_r), 5)
            assert resp.transaction_id == req.transaction_id
        big_w.close()
        w.close()
        assert small_latency < 1.0
        assert srv.stats()["stream"]["responses"] == 3001


async def test_port_zero_retries_when_the_tcp_twin_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Port 0: UDP picks the number, TCP must get the same; if another process holds that TCP
    port, the server picks again instead of failing."""
    from natkit.server.stun import StunServer

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        original = StunServer._udp_socket
        calls: list[int] = []

        def first_gets_taken(self: StunServer, ip: str, port: int) -> socket.socket:
            calls.append(port)
            return original(self, ip, taken if len(calls) == 1 else port)

        monkeypatch.setattr(StunServer, "_udp_socket", first_gets_taken)
        async with StunServer(["127.0.0.1:0"]) as srv:
            port = srv.udp_address[1]
            assert port != taken and srv.addresses_of("tcp") == [("127.0.0.1", port)]
            assert len(calls) == 2
            with udp_client() as c:
                resp, _, _ = await exchange(c, Message(Method.BINDING).encode(), srv.udp_address)
                assert resp.cls == Class.SUCCESS


def test_change_request_notice_once_per_source_and_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from natkit.server.stun import ChangeRequestNotice

    notice = ChangeRequestNotice(logging.getLogger("t"), threshold=3, per_minute=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            notice.saw("192.0.2.1")  # one line for this source, however often
        for i in range(5):
            for _ in range(3):
                notice.saw(f"192.0.2.{10 + i}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the rate limit: 2 a minute
    assert "source=192.0.2.1 " in lines[0]
    assert notice.count == 25 and notice.sources == 6
