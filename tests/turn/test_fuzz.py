"""Bad input never crashes the engine, never leaks a relay, and others keep being served."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natkit.stun import Attr, Class, Message, Method, PasswordAlgorithm, encode_channel_data
from tests.turn.harness import Client, Harness, code, make_engine

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TURN_METHODS = [
    Method.ALLOCATE,
    Method.REFRESH,
    Method.CREATE_PERMISSION,
    Method.CHANNEL_BIND,
    Method.SEND,
    Method.DATA,
    Method.BINDING,
    0x0A,
    0x0B,
    0x3F,
]

ip4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ip6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda g: ":".join(f"{x:x}" for x in g)
)
address = st.tuples(
    st.one_of(ip4, ip6, st.sampled_from(["198.51.100.7", "127.0.0.1", "::ffff:10.0.0.1"])),
    st.integers(0, 65535),
)
attribute = st.one_of(
    st.tuples(st.just(Attr.REQUESTED_TRANSPORT), st.sampled_from([17, 6, 0, 255])),
    st.tuples(st.just(Attr.LIFETIME), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(Attr.XOR_PEER_ADDRESS), address),
    st.tuples(st.just(Attr.CHANNEL_NUMBER), st.integers(0, 0xFFFF)),
    st.tuples(st.just(Attr.DATA), st.binary(max_size=64)),
    st.tuples(st.just(Attr.EVEN_PORT), st.booleans()),
    st.tuples(st.just(Attr.RESERVATION_TOKEN), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(Attr.REQUESTED_ADDRESS_FAMILY), st.sampled_from([1, 2])),
    st.tuples(st.just(Attr.ADDITIONAL_ADDRESS_FAMILY), st.sampled_from([1, 2])),
    st.tuples(st.just(Attr.DONT_FRAGMENT), st.just(True)),
    st.tuples(
        st.just(Attr.PASSWORD_ALGORITHM),
        st.sampled_from([PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256, PasswordAlgorithm(9)]),
    ),
    st.tuples(
        st.integers(0x0030, 0x7FFF).filter(lambda t: t not in set(Attr)), st.binary(max_size=8)
    ),
    st.tuples(
        st.integers(0x8030, 0xBFFF).filter(lambda t: t not in set(Attr)), st.binary(max_size=8)
    ),
)
request = st.tuples(
    st.sampled_from(TURN_METHODS),
    st.sampled_from([Class.REQUEST, Class.REQUEST, Class.INDICATION, Class.SUCCESS]),
    st.lists(attribute, max_size=6),
    st.floats(0, 400),
    st.booleans(),
)


def assert_no_leak(h: Harness) -> None:
    """Every open relay belongs to exactly one allocation or reservation."""
    engine = h.engine
    owned = [r.handle.id for a in engine.allocations.values() for r in a.relays]
    owned += [r.relay.handle.id for r in engine.reservations.values()]
    assert sorted(owned) == sorted(h.open), (owned, list(h.open))
    assert engine.quota.total == sum(engine.quota.users.values()) == len(engine.allocations)
    assert not engine.pending


def check_still_serving(h: Harness) -> None:
    bystander = Client(h, addr=("198.51.100.200", 3478), username="bob", password="pw")
    resp = bystander.allocate()
    assert resp.cls == Class.SUCCESS or code(resp) == 437, resp
    assert bystander.permit("198.51.100.9").cls == Class.SUCCESS


def _send_structured(h: Harness, c: Client, item: tuple[Any, ...]) -> None:
    method, cls, attrs, advance, signed = item
    msg = Message(method, cls)
    for attr_type, value in attrs:
        msg.add(attr_type, value)
    h.tick(advance)
    if signed and cls == Class.REQUEST:
        c.try_send(msg)
    else:
        c.raw(msg.encode())


@SETTINGS
@given(st.lists(request, min_size=1, max_size=25))
def test_random_turn_requests_authenticated_and_not(items: list[tuple[Any, ...]]) -> None:
    h = Harness(make_engine(families=frozenset({4, 6}), max_permissions=5))
    authed = Client(h)
    anonymous = Client(h, addr=("198.51.100.77", 5000), username=None)
    for i, item in enumerate(items):
        _send_structured(h, authed if i % 2 == 0 else anonymous, item)
        assert_no_leak(h)
    check_still_serving(h)
    h.tick(3601 + 400 * 25)
    assert not h.engine.allocations and not h.open  # everything expires in the end
    assert_no_leak(h)


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] ^= value or 1
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    return bytes(buf)


@SETTINGS
@given(
    st.sampled_from(["allocate", "refresh", "permission", "channel", "send", "binding"]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_mutated_requests(kind: str, flips: list[tuple[int, int]], cut: int | None) -> None:
    h = Harness(make_engine())
    c = Client(h)
    assert c.allocate().cls == Class.SUCCESS
    msgs = {
        "allocate": Message(Method.ALLOCATE)
        .add(Attr.REQUESTED_TRANSPORT, 17)
        .add(Attr.EVEN_PORT, True),
        "refresh": Message(Method.REFRESH).add(Attr.LIFETIME, 0),
        "permission": Message(Method.CREATE_PERMISSION).add(
            Attr.XOR_PEER_ADDRESS, ("198.51.100.7", 1)
        ),
        "channel": Message(Method.CHANNEL_BIND)
        .add(Attr.CHANNEL_NUMBER, 0x4000)
        .add(Attr.XOR_PEER_ADDRESS, ("198.51.100.7", 1)),
        "send": Message(Method.SEND, Class.INDICATION)
        .add(Attr.XOR_PEER_ADDRESS, ("198.51.100.7", 1))
        .add(Attr.DATA, b"xyz"),
        "binding": Message(Method.BINDING),
    }
    data = c._sign(msgs[kind], "sha1")
    c.raw(_mutate(data, flips, cut))
    other = Client(h, addr=("198.51.100.12", 1))  # a fresh 5-tuple, mutated too
    other.raw(_mutate(data, flips, cut))
    assert_no_leak(h)
    check_still_serving(h)


@SETTINGS
@given(st.binary(max_size=200), st.integers(0x40, 0x7F))
def test_bad_channel_data_and_garbage(payload: bytes, first: int) -> None:
    h = Harness(make_engine())
    c = Client(h)
    c.allocate()
    c.channel(0x4000, ("198.51.100.7", 9))
    for data in (
        payload,
        bytes([first]) + payload,
        struct.pack("!HH", 0x4000, len(payload) + 1) + payload,
        encode_channel_data(0x4001, payload[:100]),
        struct.pack("!HH", 0x4000, 0xFFFF) + payload,
    ):
        assert c.raw(data) == []
        Client(h, addr=("198.51.100.13", 2), username=None).raw(data)
    # only a well-formed frame on the bound channel reached the peer (possibly from `payload`)
    assert all(a.peer == ("198.51.100.7", 9) for a in h.sent_to_peers)
    assert_no_leak(h)
    check_still_serving(h)


def test_client_that_never_refreshes_is_released() -> None:
    h = Harness(make_engine())
    clients = [Client(h, addr=("198.51.100.30", p)) for p in range(50)]
    for c in clients:
        c.allocate()
        c.channel(0x4000, ("198.51.100.7", 9))
    assert len(h.open) == 50
    keeper = clients[0]
    for _ in range(12):
        h.tick(60)
        keeper.refresh()
    assert list(h.engine.allocations) == [(keeper.transport, keeper.addr)]
    assert len(h.open) == 1
    h.tick(1000)
    assert not h.open and not h.engine.allocations
    assert h.engine.stats.allocations_expired == 50


def test_thousands_of_permissions_are_capped_and_others_served() -> None:
    h = Harness(make_engine(allow=("198.51.100.0/24", "10.0.0.0/8")))
    greedy = Client(h)
    greedy.allocate()
    refused = 0
    for i in range(3000):
        resp = greedy.permit(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}")
        refused += code(resp) == 508
    alloc = greedy.allocation
    assert len(alloc.perms) == h.engine.config.max_permissions == 1000
    assert refused == 2000
    check_still_serving(h)
    # once they expire, the space is free again and the table shrinks
    h.tick(301)
    h.tick(10)
    assert not alloc.perms


def test_auth_failures_from_many_sources_do_not_grow_without_bound() -> None:
    engine = make_engine()
    engine.limiter.max_keys = 500
    h = Harness(engine)
    for i in range(2000):
        c = Client(h, addr=(f"10.9.{i // 256}.{i % 256}", 1), password="wrong")
        c.try_send(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17))
    assert len(engine.limiter) <= 500
    check_still_serving(h)
