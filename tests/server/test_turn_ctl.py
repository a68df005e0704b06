"""The C control path of the TURN relay (natkit/server/_turnctl.c): the 401 challenge the
table's thread sends itself must be the engine's, byte for byte, with a nonce the engine
accepts; whatever it does not recognise exactly goes to the engine unchanged."""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import pytest

from natkit.server import _turn_fast
from natkit.stun import Attr, Class, Message, Method, decode, long_term_key
from natkit.turn.actions import BindRelays, Reply
from natkit.turn.allocation import Relay
from natkit.turn.auth import NonceIssuer, StaticUsers
from natkit.turn.engine import TurnConfig, TurnEngine
from tests._native import need

pytestmark = pytest.mark.timeout(30)


def _engine(software: str | None = None) -> TurnEngine:
    return TurnEngine(
        TurnConfig(realm="ctl.test", software=software),
        auth=StaticUsers({"u": "p"}),
        nonce_secret=os.urandom(16),
    )


def _udp(ip: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.settimeout(2)
    return s


class _Rig:
    """A table configured from ``engine`` as the server configures it, a listener it reads
    and a client socket."""

    def __init__(
        self, engine: TurnEngine, budget: int = 0, own: list[tuple[str, int, int]] | None = None
    ) -> None:
        self.engine = engine
        self.table = _turn_fast.FastTable(need(_turn_fast.EXTENSION))
        self.table.configure_control(
            engine.nonces.scheme(), engine.challenge_parts(), budget, own or []
        )
        self.listener, self.client = _udp(), _udp()
        self.listener.setblocking(False)
        self.client.setblocking(True)  # (reads are MSG_DONTWAIT)
        self.caddr = self.client.getsockname()

    def exchange(self, data: bytes, now: float) -> tuple[bytes | None, list[bytes]]:
        """Send ``data``, pump: (the thread's reply or None, what it left for the engine)."""
        # loopback: the datagram is queued when sendto returns, the reply when pump does
        self.client.sendto(data, self.listener.getsockname())
        got, left = self.table.pump(self.listener.fileno(), 0, now)
        assert got == 1
        try:
            reply: bytes | None = self.client.recv(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            reply = None
        return reply, [d for d, _ in left]

    def engine_reply(self, data: bytes, now: float) -> bytes | None:
        actions = self.engine.handle_client(None, self.caddr, data, now)
        replies = [a.data for a in actions if isinstance(a, Reply)]
        assert len(replies) <= 1
        return replies[0] if replies else None

    def close(self) -> None:
        self.table.close()
        self.listener.close()
        self.client.close()


def _request(method: int, *attrs: tuple[int, bytes], tid: bytes | None = None) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attrs)
    mtype = method  # a request: the class bits are zero
    return (
        struct.pack("!HH", mtype, len(body)) + b"\x21\x12\xa4\x42" + (tid or os.urandom(12)) + body
    )


_TRANSPORT = (Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))
_LIFETIME = (Attr.LIFETIME, struct.pack("!I", 1200))
_DF = (Attr.DONT_FRAGMENT, b"")

QUALIFYING = [
    _request(Method.ALLOCATE, _TRANSPORT),
    _request(Method.ALLOCATE, _TRANSPORT, _LIFETIME),
    _request(Method.ALLOCATE, _LIFETIME, _DF, _TRANSPORT),
    _request(Method.REFRESH),
    _request(Method.REFRESH, _LIFETIME),
    _request(Method.CREATE_PERMISSION),
    _request(Method.CHANNEL_BIND),
]


@pytest.mark.parametrize("software", [None, "natkit-test 1.0"])
def test_challenges_are_the_engines_bytes(software: str | None) -> None:
    rig = _Rig(_engine(software))
    try:
        now = time.time()
        for data in QUALIFYING:
            reply, left = rig.exchange(data, now)
            assert left == [] and reply is not None
            assert reply == rig.engine_reply(data, now)
        assert rig.table.control_stats()["challenges"] == len(QUALIFYING)
    finally:
        rig.close()


def test_the_engine_accepts_the_threads_nonce() -> None:
    engine = _engine()
    rig = _Rig(engine)
    try:
        now = time.time()
        reply, _ = rig.exchange(QUALIFYING[0], now)
        assert reply is not None
        msg = decode(reply)
        assert msg.cls == Class.ERROR and msg.error_code.code == 401
        nonce = msg.get(Attr.NONCE)
        assert nonce == rig.table.control_nonce("127.0.0.1", now)
        # a fresh issuer with the same secret (no cache of what it issued) accepts it too
        secret, lifetime, _ = engine.nonces.scheme()
        assert NonceIssuer(lifetime, secret).valid(nonce, "127.0.0.1", now)
        assert not NonceIssuer(lifetime, secret).valid(nonce, "127.0.0.2", now)
        assert not NonceIssuer(lifetime, os.urandom(16)).valid(nonce, "127.0.0.1", now)
    finally:
        rig.close()


def test_ipv6_nonce_matches_the_engines() -> None:
    engine = _engine()
    table = _turn_fast.FastTable(need(_turn_fast.EXTENSION))
    try:
        table.configure_control(engine.nonces.scheme(), engine.challenge_parts(), 0, [])
        now = time.time()
        for ip in ("::1", "2001:db8::5", "fe80::1:2"):
            assert table.control_nonce(ip, now) == engine.nonces.issue(ip, now)
    finally:
        table.close()


def test_a_budgeted_source_is_answered_only_out_of_its_credits() -> None:
    rig = _Rig(_engine(), budget=2)
    try:
        now = time.time()
        data = QUALIFYING[0]
        reply, left = rig.exchange(data, now)
        assert reply is None and left == [data]  # never verified: the engine's budget decides
        rig.table.credit(["127.0.0.1", "127.0.0.1", "127.0.0.1"])  # capped at 2
        rig.table.credit(["127.0.0.9"])  # another source's credit is not this one's
        for _ in range(2):
            reply, left = rig.exchange(data, now)
            assert reply is not None and left == []
        reply, left = rig.exchange(data, now)
        assert reply is None and left == [data]
        stats = rig.table.control_stats()
        assert stats["challenges"] == 2 and stats["no_budget"] == 2
    finally:
        rig.close()


def test_unusual_requests_go_to_the_engine_unchanged() -> None:
    rig = _Rig(_engine())
    try:
        now = time.time()
        fingerprint = bytearray(_request(Method.ALLOCATE, _TRANSPORT))
        fingerprint[2:4] = struct.pack("!H", len(fingerprint) - 20 + 8)
        fingerprint += struct.pack("!HHI", Attr.FINGERPRINT, 4, 0)
        cases = [
            bytes(fingerprint),
            _request(Method.ALLOCATE, _TRANSPORT, _TRANSPORT),  # twice
            _request(Method.ALLOCATE, _TRANSPORT, (Attr.EVEN_PORT, b"\x80")),
            _request(Method.ALLOCATE, _TRANSPORT, (0x0017, b"\x02\x00\x00\x00")),  # family
            _request(Method.ALLOCATE, _TRANSPORT, (0x0030, b"")),  # unknown, required
            _request(Method.ALLOCATE, _TRANSPORT, (Attr.USERNAME, b"u")),
            _request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, b"\x11\x00\x00")),  # short
            _request(Method.BINDING),
            _request(Method.SEND),
            _request(Method.ALLOCATE, _TRANSPORT)[:-1],  # truncated
            _request(Method.ALLOCATE, _TRANSPORT) + b"\0\0\0\0",  # longer than its length
            b"\x00\x03\x00\x08\x21\x12\xa4\x43" + os.urandom(12) + b"\x00\x19\x00\x04\x11\0\0\0",
            struct.pack("!HH", 0x0113, 8) + b"\x21\x12\xa4\x42" + os.urandom(12) + bytes(8),
        ]
        for data in cases:
            reply, left = rig.exchange(data, now)
            assert reply is None and left == [data], data.hex()
    finally:
        rig.close()


def test_requests_from_the_relays_own_addresses_go_to_the_engine() -> None:
    probe = _udp()
    port = probe.getsockname()[1]
    probe.close()
    rig = _Rig(_engine(), own=[("127.0.0.1", 0, 65535)])
    try:
        reply, left = rig.exchange(QUALIFYING[0], time.time())
        assert reply is None and left == [QUALIFYING[0]]
    finally:
        rig.close()
    assert port  # (the range covers any port the kernel picks)


def test_hostile_requests_never_crash_and_are_answered_or_left() -> None:
    rig = _Rig(_engine())
    rng = random.Random(14)
    try:
        now = time.time()
        base = QUALIFYING[2]
        sent = left = 0
        for _ in range(6):
            for _ in range(100):
                data = bytearray(base)
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = data[: rng.randint(1, len(data) + 4)]
                data[0] = rng.choice((0, 1))
                rig.client.sendto(bytes(data), rig.listener.getsockname())
                sent += 1
            for _ in range(10):
                got, more = rig.table.pump(rig.listener.fileno(), 0, now)
                left += len(more)
                if got == 0:
                    break
        stats = rig.table.control_stats()
        assert stats["challenges"] + left == sent
    finally:
        rig.close()


# -- authenticated Allocates ------------------------------------------------------------------


def _allocate_rig(engine: TurnEngine) -> tuple[_Rig, socket.socket]:
    rig = _Rig(engine)
    rig.table.configure_allocates(
        engine.config.realm,
        engine.static_keys() or {},
        engine.config.default_lifetime,
        engine.config.max_lifetime,
    )
    spare = _udp()
    assert rig.table.add_spares([(spare.fileno(), spare.getsockname())]) == 1
    return rig, spare


def _signed_allocate(
    nonce: str,
    *,
    lifetime: int | None = None,
    fingerprint: bool = False,
    user: str = "u",
    password: str = "p",
    realm: str = "ctl.test",
    extra: tuple[int, object] | None = None,
) -> bytes:
    msg = Message(Method.ALLOCATE, Class.REQUEST, os.urandom(12))
    msg.add(Attr.REQUESTED_TRANSPORT, 17)
    if lifetime is not None:
        msg.add(Attr.LIFETIME, lifetime)
    if extra is not None:
        msg.add(*extra)
    msg.add(Attr.USERNAME, user).add(Attr.REALM, realm).add(Attr.NONCE, nonce)
    return msg.encode(key=long_term_key(user, realm, password), fingerprint=fingerprint)


@pytest.mark.parametrize(
    ("lifetime", "fingerprint"), [(None, False), (1200, True), (0, False), (99999, True), (5, False)]
)
def test_allocate_success_is_the_engines_bytes(lifetime: int | None, fingerprint: bool) -> None:
    engine = _engine()
    rig, spare = _allocate_rig(engine)
    try:
        now = time.time()
        nonce = rig.table.control_nonce("127.0.0.1", now)
        assert nonce is not None
        data = _signed_allocate(nonce, lifetime=lifetime, fingerprint=fingerprint)
        reply, left = rig.exchange(data, now)
        assert reply is not None and len(left) == 2  # the record of what it made: 2 parts
        fields = _turn_fast.MADE.unpack_from(left[0])
        assert fields[0] == spare.fileno() and left[1] == reply
        # the engine's answer to the same request, with the same relay socket
        (pending,) = rig.engine.handle_client(None, rig.caddr, data, now)
        assert isinstance(pending, BindRelays)
        relay = Relay(4, spare.getsockname(), spare.getsockname(), spare)
        actions = rig.engine.complete_allocate(pending, [relay], now)
        (expected,) = [a.data for a in actions if isinstance(a, Reply)]
        assert reply == expected
        assert fields[1] == pending.lifetime
        assert rig.table.control_stats()["allocations"] == 1
        # a second Allocate of the client (a retransmission, or one more) is the engine's
        reply, left = rig.exchange(data, now)
        assert reply is None and left == [data]
    finally:
        rig.close()
        spare.close()


def test_allocates_that_do_not_verify_go_to_the_engine() -> None:
    rig, spare = _allocate_rig(_engine())
    try:
        now = time.time()
        nonce = rig.table.control_nonce("127.0.0.1", now)
        assert nonce is not None
        other = NonceIssuer(600, os.urandom(16)).issue("127.0.0.1", now)
        stale_nonce = NonceIssuer(-1, rig.engine.nonces.scheme()[0]).issue("127.0.0.1", now)
        bad_mac = bytearray(_signed_allocate(nonce))
        bad_mac[-1] ^= 1
        bad_fp = bytearray(_signed_allocate(nonce, fingerprint=True))
        bad_fp[-1] ^= 1
        cases = [
            _signed_allocate(nonce, password="wrong"),
            _signed_allocate(nonce, user="nobody"),
            _signed_allocate(nonce, realm="other.realm"),
            _signed_allocate(other),
            _signed_allocate(stale_nonce),
            _signed_allocate(nonce.upper()),
            _signed_allocate(nonce, extra=(Attr.DONT_FRAGMENT, True)),
            _signed_allocate(nonce, extra=(Attr.EVEN_PORT, False)),
            _signed_allocate(nonce, extra=(Attr.SOFTWARE, "x")),
            bytes(bad_mac),
            bytes(bad_fp),
            _signed_allocate(nonce)[:-4],
        ]
        for data in cases:
            reply, left = rig.exchange(data, now)
            assert reply is None and left == [data], data.hex()
        stats = rig.table.control_stats()
        assert stats["allocations"] == 0
        # ... and so is every Allocate of a client whose Allocate the engine answers, for a
        # while (a retransmission must not get a second allocation from the thread)
        reply, left = rig.exchange(_signed_allocate(nonce), now)
        assert reply is None and rig.table.control_stats()["allocations"] == 0
    finally:
        rig.close()
        spare.close()


def test_a_retransmission_of_an_allocate_the_engine_took_stays_the_engines() -> None:
    rig, spare = _allocate_rig(_engine())
    try:
        now = time.time()
        nonce = rig.table.control_nonce("127.0.0.1", now)
        assert nonce is not None
        # an Allocate the engine took (DONT-FRAGMENT): a retransmission of the client, or
        # another Allocate, is the engine's too (it may be making that allocation)
        data = _signed_allocate(nonce, extra=(Attr.DONT_FRAGMENT, True))
        reply, left = rig.exchange(data, now)
        assert reply is None and left == [data]
        plain = _signed_allocate(nonce)
        reply, left = rig.exchange(plain, now)
        assert reply is None and left == [plain]
        # long after, a new Allocate of that client may be the thread's again
        reply, left = rig.exchange(_signed_allocate(nonce), now + 60)
        assert reply is not None and rig.table.control_stats()["allocations"] == 1
    finally:
        rig.close()
        spare.close()


def test_without_a_spare_an_allocate_goes_to_the_engine_and_stays_there() -> None:
    """Passed on, never dropped (a drop costs the client a retransmission timeout); its
    retransmission is the engine's too, even once a spare came: one client, one allocation."""
    rig, spare = _allocate_rig(_engine())
    try:
        now = time.time()
        nonce = rig.table.control_nonce("127.0.0.1", now)
        assert nonce is not None
        assert rig.table.take_spares() == [spare.fileno()]
        data = _signed_allocate(nonce)
        reply, left = rig.exchange(data, now)
        assert reply is None and left == [data]
        assert rig.table.control_stats()["no_spare"] == 1
        assert rig.table.add_spares([(spare.fileno(), spare.getsockname())]) == 1
        reply, left = rig.exchange(data, now)  # the retransmission
        assert reply is None and left == [data]
        assert rig.table.control_stats()["allocations"] == 0
        # long after, a new Allocate of that client may be the thread's again
        reply, left = rig.exchange(_signed_allocate(nonce), now + 60)
        assert reply is not None and rig.table.control_stats()["allocations"] == 1
    finally:
        rig.close()
        spare.close()


def _ip_hash(ip: str) -> int:
    h = 2166136261 ^ 4  # FNV-1a over the IPv4 address, as _turnctl.c's ip_hash
    for b in socket.inet_aton(ip):
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def _colliding_clients() -> tuple[socket.socket, socket.socket]:
    """Two client sockets (two loopback IPs) in one slot of the C path's table of clients
    handed to the engine: (ip_hash ^ port * 2654435761) % 65536 alike."""
    first = _udp()
    slot = (_ip_hash("127.0.0.1") ^ first.getsockname()[1] * 2654435761) % 65536
    inverse = pow(2654435761 % 65536, -1, 65536)
    for n in range(2, 250):
        ip = f"127.0.0.{n}"
        port = ((slot ^ _ip_hash(ip)) % 65536) * inverse % 65536
        if port < 1024:
            continue
        second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            second.bind((ip, port))
        except OSError:
            second.close()
            continue
        return first, second
    raise AssertionError("no colliding address free")


def test_a_colliding_client_never_makes_the_thread_forget_one_handed_over() -> None:
    """Client A's Allocate is the engine's; client B, in the same slot, is handed over too;
    A's retransmission must still be the engine's (else: a second allocation for A)."""
    rig, spare = _allocate_rig(_engine())
    a, b = _colliding_clients()
    try:
        now = time.time()
        nonce = rig.table.control_nonce("127.0.0.1", now)
        assert nonce is not None
        to = rig.listener.getsockname()
        a_data = _signed_allocate(nonce, extra=(Attr.DONT_FRAGMENT, True))  # the engine's
        a.sendto(a_data, to)
        b.sendto(_signed_allocate(nonce, password="wrong"), to)  # the engine's too
        _, left = rig.table.pump(rig.listener.fileno(), 0, now)
        assert len(left) == 2
        a.sendto(_signed_allocate(nonce), to)  # a plain Allocate of A: still the engine's
        _, left = rig.table.pump(rig.listener.fileno(), 0, now)
        assert len(left) == 1 and rig.table.control_stats()["allocations"] == 0
    finally:
        rig.close()
        spare.close()
        a.close()
        b.close()


def test_hostile_signed_allocates_never_crash() -> None:
    rig, spare = _allocate_rig(_engine())
    rng = random.Random(1414)
    try:
        now = time.time()
        nonce = rig.table.control_nonce("127.0.0.1", now)
        assert nonce is not None
        base = _signed_allocate(nonce, fingerprint=True)
        answered = 0
        for _ in range(300):
            data = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:  # an attribute length far past the end
                pos = rng.randrange(20, len(data) - 4)
                data[pos + 2 : pos + 4] = b"\xff\xf0"
            data = data[: rng.randint(20, len(data))]
            data[0:2] = b"\x00\x03"
            reply, _ = rig.exchange(bytes(data), now)
            answered += reply is not None
        assert answered == rig.table.control_stats()["allocations"] <= 1
    finally:
        rig.close()
        spare.close()
