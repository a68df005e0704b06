"""The TURN state machine, driven without sockets (RFC 8656 behaviour, error codes)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from natkit.stun import (
    Attr,
    Class,
    Message,
    Method,
    PasswordAlgorithm,
    decode,
    encode_channel_data,
    long_term_key,
    verify_integrity,
)
from natkit.turn.allocation import Relay
from natkit.turn.auth import Grant, StaticUsers, rest_credentials
from tests.turn.harness import REALM, Client, Harness, code, make_engine

PEER = ("198.51.100.7", 4000)


def from_peer(harness: Harness, relay: Relay, data: bytes, peer: tuple[str, int]) -> bytes | None:
    """What the engine sends the client for ``data`` from ``peer`` on ``relay`` (None: dropped)."""
    out = harness.engine.forward_from_peer(relay, peer, data, harness.now)
    if out is None:
        return None
    alloc = relay.allocation
    assert alloc is not None and (out.client, out.addr) == (alloc.client, alloc.client_addr)
    return out.data


def test_unauthenticated_allocate_is_challenged(harness: Harness) -> None:
    anonymous = Client(harness, username=None)
    resp = anonymous.allocate()
    assert code(resp) == 401
    assert resp.get(Attr.REALM) == REALM
    nonce = resp.get(Attr.NONCE)
    assert nonce.startswith("obMatJos2")
    assert resp.get(Attr.PASSWORD_ALGORITHMS) == (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256)
    assert Attr.MESSAGE_INTEGRITY not in resp
    assert Attr.SOFTWARE not in resp
    assert not harness.engine.allocations


def test_allocate_success_signed_with_lifetime_and_addresses(client: Client) -> None:
    resp = client.allocate()
    assert resp.cls == Class.SUCCESS, resp
    assert resp.get(Attr.XOR_RELAYED_ADDRESS)[0] == "203.0.113.1"  # the advertised address
    assert resp.get(Attr.XOR_MAPPED_ADDRESS) == client.addr
    assert resp.get(Attr.LIFETIME) == 600
    assert verify_integrity(resp, client.key())
    assert Attr.SOFTWARE not in resp


def test_wrong_password_is_401_then_braked_but_a_good_one_always_gets_through(
    harness: Harness,
) -> None:
    mallory = Client(harness, username="alice", password="wrong")
    mallory.allocate()  # the first 401, with a nonce
    allocate = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
    answered = sum(len(mallory.raw(mallory._sign(allocate, "sha1"))) for _ in range(40))
    assert answered == int(harness.engine.limiter.burst) - 1  # then failures go unanswered
    assert harness.engine.stats.auth_blocked > 0
    # the same user with the right password, from the very same IP: never dropped
    good = Client(harness, addr=(mallory.addr[0], 40001))
    good.nonce = mallory.nonce
    assert good.allocate().cls == Class.SUCCESS
    assert Client(harness, addr=("198.51.100.99", 1)).allocate().cls == Class.SUCCESS


def test_unknown_user_and_wrong_realm_are_401(harness: Harness) -> None:
    assert code(Client(harness, username="nobody").allocate()) == 401
    c = Client(harness)
    c.allocate()  # fetch a nonce
    c.realm = "other"
    c.addr = ("198.51.100.10", 40002)
    resp = decode(
        c.raw(c._sign(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17), "sha1"))[0]
    )
    assert code(resp) == 401


def test_stale_nonce_is_438_then_works(harness: Harness, client: Client) -> None:
    assert client.allocate().cls == Class.SUCCESS
    harness.now += harness.engine.config.nonce_lifetime + 1
    msg = Message(Method.REFRESH)
    replies = client.raw(client._sign(msg, "sha1"))
    assert code(decode(replies[0])) == 438
    assert client.refresh().cls == Class.SUCCESS  # the helper takes the new nonce


def test_nonce_is_bound_to_client_ip(harness: Harness, client: Client) -> None:
    client.allocate()
    other = Client(harness, addr=("198.51.100.11", 40000))
    other.nonce = client.nonce
    resp = decode(
        other.raw(other._sign(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17), "sha1"))[
            0
        ]
    )
    assert code(resp) == 438


def test_sha256_password_algorithm_and_integrity(harness: Harness) -> None:
    c = Client(harness, algorithm=PasswordAlgorithm.SHA256)
    resp = c.send(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17), integrity="sha256")
    assert resp.cls == Class.SUCCESS
    assert Attr.MESSAGE_INTEGRITY_SHA256 in resp
    assert verify_integrity(resp, c.key())


def test_password_algorithms_downgrade_is_400(harness: Harness) -> None:
    c = Client(harness)
    c.allocate()  # nonce
    c.addr = ("198.51.100.10", 1)
    msg = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
    msg.add(Attr.USERNAME, "alice").add(Attr.REALM, REALM).add(Attr.NONCE, c.nonce)
    msg.add(Attr.PASSWORD_ALGORITHMS, (PasswordAlgorithm.MD5,))  # SHA-256 stripped by an attacker
    msg.add(Attr.PASSWORD_ALGORITHM, PasswordAlgorithm.MD5)
    assert code(decode(c.raw(msg.encode(key=c.key()))[0])) == 400


def test_rest_api_credentials_with_rotation_and_expiry(harness: Harness) -> None:
    engine = make_engine(users={}, secrets=("new-secret", "old-secret"))
    h = Harness(engine)
    for secret in ("old-secret", "new-secret"):
        user, password = rest_credentials(secret, 60, h.now, "carol")
        c = Client(h, addr=("198.51.100.20", len(secret)), username=user, password=password)
        assert c.allocate().cls == Class.SUCCESS
    assert engine.quota.users == {"carol": 2}
    user, password = rest_credentials("unknown", 60, h.now, "carol")
    assert (
        code(Client(h, addr=("198.51.100.21", 1), username=user, password=password).allocate())
        == 401
    )
    # Expiry is enforced on Refresh too.
    user, password = rest_credentials("new-secret", 30, h.now)
    c = Client(h, addr=("198.51.100.22", 1), username=user, password=password)
    assert c.allocate().cls == Class.SUCCESS
    assert c.refresh().cls == Class.SUCCESS
    h.now += 31
    assert code(c.refresh()) == 401


def test_retransmitted_allocate_gets_same_answer_new_one_437(client: Client) -> None:
    assert code(client.refresh()) == 437  # learns a nonce
    msg = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
    first = client.send(msg)
    assert first.cls == Class.SUCCESS
    again = client.raw(client._sign(msg, "sha1"))
    assert decode(again[0]).get(Attr.XOR_RELAYED_ADDRESS) == first.get(Attr.XOR_RELAYED_ADDRESS)
    assert code(client.allocate()) == 437


def test_allocate_validation(harness: Harness, client: Client) -> None:
    assert code(client.allocate(transport=6)) == 442
    assert code(client.send(Message(Method.ALLOCATE))) == 400
    assert code(client.allocate(requested_address_family=2)) == 440  # no IPv6 relay configured
    assert code(client.allocate(even_port=True, reservation_token=b"12345678")) == 400
    assert code(client.allocate(reservation_token=b"12345678")) == 508
    assert code(client.allocate(requested_address_family=1, additional_address_family=2)) == 400
    assert code(client.allocate(additional_address_family=1)) == 400
    harness.fail_bind = True
    assert code(client.allocate()) == 508
    assert not harness.engine.allocations and not harness.engine.pending


def test_requests_without_allocation_are_437(client: Client) -> None:
    assert code(client.refresh()) == 437
    assert code(client.permit(PEER[0])) == 437
    assert code(client.channel(0x4000, PEER)) == 437


def test_other_user_on_same_five_tuple_is_441(harness: Harness, client: Client) -> None:
    client.allocate()
    bob = Client(harness, username="bob", password="pw")
    bob.transport, bob.addr = client.transport, client.addr
    assert code(bob.permit(PEER[0])) == 441


def test_lifetimes_and_refresh(harness: Harness, client: Client) -> None:
    assert client.allocate(lifetime=60).get(Attr.LIFETIME) == 600  # never below the default
    assert client.refresh(100_000).get(Attr.LIFETIME) == 3600  # capped
    assert client.refresh().get(Attr.LIFETIME) == 600
    harness.tick(599)
    assert client.allocation is not None
    harness.tick(2)
    assert client.allocation is None and not harness.open
    assert harness.engine.stats.allocations_expired == 1


def test_refresh_zero_deletes_and_frees_socket(harness: Harness, client: Client) -> None:
    client.allocate()
    assert len(harness.open) == 1
    resp = client.refresh(0)
    assert resp.cls == Class.SUCCESS and resp.get(Attr.LIFETIME) == 0
    assert client.allocation is None and not harness.open
    assert code(client.refresh()) == 437
    assert harness.engine.quota.users == {} and harness.engine.quota.total == 0


def test_create_permission_several_peers_and_lifetime(harness: Harness, client: Client) -> None:
    client.allocate()
    assert client.permit("198.51.100.7", "198.51.100.8").cls == Class.SUCCESS
    alloc = client.allocation
    assert alloc.permitted("198.51.100.8", harness.now)
    harness.now += 301
    assert not alloc.permitted("198.51.100.8", harness.now)


def test_default_policy_refuses_special_peers_with_403(harness: Harness) -> None:
    engine = make_engine(allow=())
    h = Harness(engine)
    c = Client(h)
    c.allocate()
    for ip in (
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "240.0.0.1",
        "255.255.255.255",
    ):
        assert code(c.permit(ip)) == 403, ip
        assert code(c.channel(0x4001, (ip, 5))) == 403, ip
    # all or nothing: one bad address refuses the whole request
    assert code(c.permit("8.8.8.8", "10.1.2.3")) == 403
    assert not c.allocation.perms
    assert c.permit("8.8.8.8").cls == Class.SUCCESS
    assert engine.stats.refused_peers >= 21


def test_ipv4_mapped_peer_is_judged_by_its_ipv4_address(harness: Harness) -> None:
    h = Harness(make_engine(allow=()))
    c = Client(h)
    c.allocate()
    for ip in (
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",
        "2002:a9fe:a9fe::1",
        "::1",
        "fe80::1",
        "fc00::1",
    ):
        assert code(c.permit(ip)) == 403, ip
    # A globally reachable IPv6 peer with an IPv4-only relay: family mismatch.
    assert code(c.permit("2a00:1450::1")) == 443


def test_permission_quota(harness: Harness) -> None:
    h = Harness(make_engine(max_permissions=3))
    c = Client(h)
    c.allocate()
    assert c.permit("198.51.100.1", "198.51.100.2", "198.51.100.3").cls == Class.SUCCESS
    assert code(c.permit("198.51.100.4")) == 508
    assert c.permit("198.51.100.3").cls == Class.SUCCESS  # refreshing is not a new one
    h.now += 301
    assert c.permit("198.51.100.4").cls == Class.SUCCESS  # expired ones are swept first


def test_allocation_quotas_486() -> None:
    h = Harness(make_engine(user_quota=2, max_allocations=3))
    first = Client(h, addr=("198.51.100.10", 1))
    assert first.allocate().cls == Class.SUCCESS
    assert Client(h, addr=("198.51.100.10", 2)).allocate().cls == Class.SUCCESS
    assert code(Client(h, addr=("198.51.100.10", 3)).allocate()) == 486
    assert (
        Client(h, addr=("198.51.100.10", 4), username="bob", password="pw").allocate().cls
        == Class.SUCCESS
    )
    assert (
        code(Client(h, addr=("198.51.100.10", 5), username="bob", password="pw").allocate()) == 486
    )
    assert first.refresh(0).cls == Class.SUCCESS
    assert Client(h, addr=("198.51.100.10", 6)).allocate().cls == Class.SUCCESS


def test_channel_bind_rules(harness: Harness, client: Client) -> None:
    client.allocate()
    assert code(client.channel(0x3FFF, PEER)) == 400
    assert code(client.channel(0x7FFF, PEER)) == 400
    assert client.channel(0x4000, PEER).cls == Class.SUCCESS
    assert client.allocation.permitted(PEER[0], harness.now)  # binding installs a permission
    assert client.channel(0x4000, PEER).cls == Class.SUCCESS  # refresh: same pair
    assert code(client.channel(0x4000, ("198.51.100.7", 4001))) == 400  # number taken
    assert code(client.channel(0x4001, PEER)) == 400  # peer taken
    assert client.channel(0x4FFF, ("198.51.100.7", 4001)).cls == Class.SUCCESS
    # After expiry the pair stays reserved for 5 minutes against other bindings.
    client.refresh(3600)
    harness.tick(601)
    harness.tick(10)
    assert not client.allocation.channels
    assert code(client.channel(0x4000, ("198.51.100.9", 1))) == 400
    assert client.channel(0x4000, PEER).cls == Class.SUCCESS  # same pair is fine
    harness.now += 301
    assert client.channel(0x4002, ("198.51.100.7", 4001)).cls == Class.SUCCESS


def test_strict_channel_range() -> None:
    h = Harness(make_engine(strict_channels=True))
    c = Client(h)
    c.allocate()
    assert code(c.channel(0x5000, PEER)) == 400
    assert c.channel(0x4FFF, PEER).cls == Class.SUCCESS
    # RFC 5766 numbers are accepted by default (coturn's and older clients use them).
    c2 = Client(harness_default := Harness(make_engine()))
    c2.allocate()
    assert c2.channel(0x7FFE, PEER).cls == Class.SUCCESS
    c2.raw(struct.pack("!HH", 0x7FFE, 2) + b"hi")
    assert [a.data for a in harness_default.sent_to_peers] == [b"hi"]


def _cd_payload(harness: Harness) -> list[tuple[bytes, tuple[str, int]]]:
    out = [(a.data, a.peer) for a in harness.sent_to_peers]
    harness.sent_to_peers.clear()
    return out


def test_send_and_data_indications(harness: Harness, client: Client) -> None:
    client.allocate()
    client.send_indication(PEER, b"early")  # no permission yet: dropped
    assert _cd_payload(harness) == []
    client.permit(PEER[0])
    client.send_indication(PEER, b"hello", dont_fragment=True)
    sent = harness.sent_to_peers[0]
    assert (sent.data, sent.peer, sent.dont_fragment) == (b"hello", PEER, True)
    alloc = client.allocation
    relay = alloc.relays[0]
    out = from_peer(harness, relay, b"back", PEER)
    data_ind = decode(out)
    assert (data_ind.method, data_ind.cls) == (Method.DATA, Class.INDICATION)
    assert data_ind.get(Attr.XOR_PEER_ADDRESS) == PEER and data_ind.get(Attr.DATA) == b"back"
    # A peer without a permission is dropped.
    assert from_peer(harness, relay, b"x", ("198.51.100.8", 1)) is None


def test_channel_data_both_ways_and_padding(harness: Harness, client: Client) -> None:
    client.allocate()
    client.channel(0x4001, PEER)
    client.raw(encode_channel_data(0x4001, b"abc"))
    assert _cd_payload(harness) == [(b"abc", PEER)]
    client.raw(encode_channel_data(0x4001, b"abc", pad=True))  # padding accepted
    assert _cd_payload(harness) == [(b"abc", PEER)]
    alloc = client.allocation
    assert (
        from_peer(harness, alloc.relays[0], b"xyz", PEER) == struct.pack("!HH", 0x4001, 3) + b"xyz"
    )
    alloc.stream = True
    padded = from_peer(harness, alloc.relays[0], b"xyz", PEER)
    assert padded == encode_channel_data(0x4001, b"xyz", pad=True) and len(padded) == 8


def test_bad_channel_data_is_dropped(harness: Harness, client: Client) -> None:
    client.allocate()
    client.channel(0x4001, PEER)
    for bad in (
        encode_channel_data(0x4002, b"unbound"),
        struct.pack("!HH", 0x4001, 100) + b"short",
        b"\x40\x01",
        b"\x40",
        struct.pack("!HH", 0x4001, 65535) + b"x" * 10,
    ):
        assert client.raw(bad) == []
    assert _cd_payload(harness) == []
    assert Client(harness, addr=("198.51.100.50", 1)).raw(encode_channel_data(0x4001, b"x")) == []
    assert harness.engine.stats.dropped_packets >= 6


def test_channel_data_stops_when_channel_expires(harness: Harness, client: Client) -> None:
    client.allocate()
    client.channel(0x4001, PEER)
    client.permit(PEER[0])
    harness.now += 599
    client.permit(PEER[0])  # the permission is kept alive; the channel is not
    harness.now += 2
    client.raw(encode_channel_data(0x4001, b"late"))
    assert _cd_payload(harness) == []
    alloc = client.allocation
    out = from_peer(harness, alloc.relays[0], b"in", PEER)
    assert decode(out).method == Method.DATA  # falls back to a Data indication


def test_even_port_and_reservation_token(harness: Harness, client: Client) -> None:
    resp = client.allocate(even_port=True)
    token = resp.get(Attr.RESERVATION_TOKEN)
    port = resp.get(Attr.XOR_RELAYED_ADDRESS)[1]
    assert port % 2 == 0 and len(token) == 8
    second = Client(harness, addr=("198.51.100.10", 40100))
    resp2 = second.allocate(reservation_token=token)
    assert resp2.get(Attr.XOR_RELAYED_ADDRESS)[1] == port + 1
    assert (
        code(Client(harness, addr=("198.51.100.10", 40101)).allocate(reservation_token=token))
        == 508
    )
    # An unused reservation is released after its lifetime.
    Client(harness, addr=("198.51.100.10", 40102)).allocate(even_port=True)
    assert len(harness.open) == 4
    harness.tick(31)
    assert len(harness.open) == 3


def test_dual_stack_allocation_and_family_rules() -> None:
    h = Harness(make_engine(families=frozenset({4, 6})))
    c = Client(h)
    resp = c.allocate(additional_address_family=2)
    relayed = resp.get_all(Attr.XOR_RELAYED_ADDRESS)
    assert [":" in ip for ip, _ in relayed] == [False, True]
    assert c.permit("198.51.100.7", "2001:db8:1::7").cls == Class.SUCCESS
    c6 = Client(h, addr=("198.51.100.10", 2))
    resp6 = c6.allocate(requested_address_family=2)
    assert ":" in resp6.get(Attr.XOR_RELAYED_ADDRESS)[0]
    assert code(c6.permit("198.51.100.7")) == 443
    msg = Message(Method.REFRESH).add(Attr.REQUESTED_ADDRESS_FAMILY, 1)
    assert code(c6.send(msg)) == 443


def test_dual_request_on_ipv4_only_server_reports_address_error() -> None:
    h = Harness(make_engine())
    resp = Client(h).allocate(additional_address_family=2)
    assert resp.cls == Class.SUCCESS
    assert len(resp.get_all(Attr.XOR_RELAYED_ADDRESS)) == 1
    assert resp.get(Attr.ADDRESS_ERROR_CODE).code == 440


def test_stream_client_gone_releases_allocation(harness: Harness) -> None:
    c = Client(harness, stream=True)
    c.allocate()
    assert harness.open
    harness.run(harness.engine.client_gone(c.transport, c.addr, harness.now))
    assert not harness.open and not harness.engine.allocations


def test_binding_answered_and_unknown_attributes_420(client: Client) -> None:
    resp = decode(client.raw(Message(Method.BINDING).encode(fingerprint=True))[0])
    assert resp.cls == Class.SUCCESS and resp.get(Attr.XOR_MAPPED_ADDRESS) == client.addr
    assert Attr.FINGERPRINT in resp
    msg = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).add(0x0777, b"??")
    resp = decode(client.raw(msg.encode())[0])
    assert code(resp) == 420 and resp.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0777,)


def test_software_only_when_asked() -> None:
    h = Harness(make_engine(software="natkit-test"))
    resp = Client(h, username=None).allocate()
    assert resp.get(Attr.SOFTWARE) == "natkit-test"


def test_no_auth_mode() -> None:
    h = Harness(make_engine(auth=False))
    c = Client(h, username=None)
    resp = c.allocate()
    assert resp.cls == Class.SUCCESS and Attr.MESSAGE_INTEGRITY not in resp


def test_bandwidth_cap_drops_excess(harness: Harness) -> None:
    h = Harness(make_engine(bandwidth=1000))
    c = Client(h)
    c.allocate()
    c.channel(0x4001, PEER)
    for _ in range(5):
        c.raw(encode_channel_data(0x4001, b"x" * 400))
    assert len(h.sent_to_peers) == 2
    h.now += 1
    c.raw(encode_channel_data(0x4001, b"x" * 400))
    assert len(h.sent_to_peers) == 3


def test_close_all_releases_everything(harness: Harness) -> None:
    for port in range(5):
        Client(harness, addr=("198.51.100.10", port)).allocate(even_port=True)
    assert len(harness.open) == 10
    harness.run(harness.engine.close_all())
    assert not harness.open and not harness.engine.allocations
    assert harness.engine.counts()["allocations"] == 0


def _full_path_challenge(harness: Harness, request: Message, fingerprint: bool) -> bytes:
    """The 401 the general path gives ``request`` (decoded, then challenged)."""
    msg = decode(request.encode(fingerprint=fingerprint))
    return harness.engine._challenge(msg, 401, "Unauthorized", "198.51.100.10", harness.now)


def test_quick_challenge_is_the_full_paths_answer(harness: Harness) -> None:
    anonymous = Client(harness, username=None)
    plain = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).add(Attr.LIFETIME, 900)
    replies = anonymous.raw(plain.encode())  # qualifies for the quick 401
    assert replies == [_full_path_challenge(harness, plain, False)]
    resp = decode(replies[0])
    assert resp.transaction_id == plain.transaction_id and code(resp) == 401
    # with FINGERPRINT (what browsers send) the patched template is still exact
    fp = anonymous.raw(plain.encode(fingerprint=True))
    assert fp == [_full_path_challenge(harness, plain, True)]
    assert Attr.FINGERPRINT in decode(fp[0])  # decode checks the CRC
    # the same nonce within a second: one template serves every transaction id
    other = Message(Method.REFRESH)
    assert decode(anonymous.raw(other.encode())[0]).get(Attr.NONCE) == resp.get(Attr.NONCE)
    assert decode(anonymous.raw(other.encode())[0]).method == Method.REFRESH


def test_quick_challenge_leaves_unusual_requests_to_the_full_path(harness: Harness) -> None:
    anonymous = Client(harness, username=None)
    # malformed: a bad REQUESTED-TRANSPORT length is dropped as before, not challenged
    bad = bytearray(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode())
    bad[22:24] = b"\x00\x03"
    assert anonymous.raw(bytes(bad)) == []
    # duplicate attributes are malformed too
    dup = Message(Method.ALLOCATE).add(Attr.LIFETIME, 1).add(Attr.LIFETIME, 2)
    assert anonymous.raw(dup.encode()) == []
    # an unknown comprehension-required attribute is a 420 before any 401
    unknown = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).add(0x0033, b"xxxx")
    assert code(decode(anonymous.raw(unknown.encode())[0])) == 420
    # a source over its error-response budget gets nothing, quick path or not
    responses = harness.engine.responses
    while responses.allow(anonymous.addr[0], harness.now):
        pass
    assert anonymous.raw(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode()) == []
    assert anonymous.raw(unknown.encode()) == []
    assert harness.engine.stats.rate_limited == 2


def test_direct_allocate_success_is_the_codecs_bytes() -> None:
    from natkit.stun import long_term_key
    from natkit.turn.allocation import Relay
    from natkit.turn.wire import allocate_success

    key = long_term_key("alice", REALM, "secret")
    relays = [Relay(4, ("10.0.0.1", 50000), ("203.0.113.9", 50000), object())]
    mapped = ("198.51.100.10", 40000)
    for integrity in ("sha1", "sha256", "both"):
        for fingerprint in (False, True):
            request = decode(
                Message(Method.ALLOCATE)
                .add(Attr.REQUESTED_TRANSPORT, 17)
                .add(Attr.USERNAME, "alice")
                .encode(key=key, integrity=integrity, fingerprint=fingerprint)
            )
            expected = (
                request.response()
                .add(Attr.XOR_RELAYED_ADDRESS, relays[0].advertised)
                .add(Attr.LIFETIME, 777)
                .add(Attr.XOR_MAPPED_ADDRESS, mapped)
                .encode(
                    key=key,
                    integrity="sha1" if integrity == "sha1" else "sha256",
                    fingerprint=fingerprint,
                )
            )
            assert allocate_success(request, relays, 777, mapped, key) == expected
    # IPv6 is left to the codec
    six = [Relay(6, ("2001:db8::1", 50000), ("2001:db8::1", 50000), object())]
    assert allocate_success(request, six, 600, mapped, key) is None
    assert allocate_success(request, relays, 600, ("2001:db8::5", 1), key) is None


def test_peer_datagram_too_big_for_a_data_indication_is_dropped() -> None:
    h = Harness(make_engine(families=frozenset({4, 6})))
    c = Client(h)
    assert c.allocate(additional_address_family=2).cls == Class.SUCCESS
    peer6 = ("2001:db8:1::9", 7)
    assert c.permit(PEER[0], peer6[0]).cls == Class.SUCCESS
    relay4, relay6 = c.allocation.relay_for(4), c.allocation.relay_for(6)
    biggest = {4: 65516, 6: 65504}
    for relay, peer in ((relay4, PEER), (relay6, peer6)):
        n = biggest[relay.family]
        frame = from_peer(h, relay, b"x" * n, peer)
        assert frame is not None and decode(frame).get(Attr.DATA) == b"x" * n
        dropped = h.engine.stats.dropped_packets
        assert from_peer(h, relay, b"x" * (n + 1), peer) is None
        assert h.engine.stats.dropped_packets == dropped + 1
    assert from_peer(h, relay6, b"x", PEER) is None  # an IPv4 peer never reaches the v6 relay
    assert h.engine.stats.bugs == 0


class _Recorder:
    """An Authenticator, PeerPolicy and Quota in one, recording what the engine asks."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []
        self.held = 0

    def lookup(self, username: str, realm: str, source: tuple[str, int], now: float) -> Any:
        self.asked.append(("lookup", username, realm, source[0]))
        if username == "grant":  # a ready MD5 key, counted against another account
            return Grant(key=long_term_key("grant", realm, "pw"), account="team")
        return {"alice": "secret"}.get(username)

    def refuse(self, peer: tuple[str, int]) -> str | None:
        self.asked.append(("refuse", peer[0]))
        return "not on the list" if peer[0].endswith(".66") else None

    def acquire(self, user: str | None, source: tuple[str, int]) -> str | None:
        self.asked.append(("acquire", str(user)))
        if self.held >= 2:
            return "two at most"
        self.held += 1
        return None

    def release(self, user: str | None, source: tuple[str, int]) -> None:
        self.asked.append(("release", str(user)))
        self.held -= 1


def test_plugged_in_authenticator_policy_and_quota_decide() -> None:
    rec = _Recorder()
    engine = make_engine(auth=rec)
    engine.peer_policy = rec
    engine.quota = rec
    h = Harness(engine)
    alice = Client(h)
    assert alice.allocate().cls == Class.SUCCESS
    assert ("lookup", "alice", REALM, "198.51.100.10") in rec.asked
    assert code(alice.permit("198.51.100.66")) == 403 and engine.stats.refused_peers == 1
    assert alice.permit("198.51.100.7").cls == Class.SUCCESS
    grant = Client(h, addr=("198.51.100.11", 1), username="grant", password="pw")
    assert grant.allocate().cls == Class.SUCCESS
    assert ("acquire", "team") in rec.asked  # the Grant's account, not the username
    sha = Client(
        h,
        addr=("198.51.100.12", 1),
        username="grant",
        password="pw",
        algorithm=PasswordAlgorithm.SHA256,
    )
    assert code(sha.allocate()) == 401  # an MD5 key cannot serve SHA-256
    third = Client(h, addr=("198.51.100.13", 1))
    assert code(third.allocate()) == 486 and rec.held == 2
    assert alice.refresh(0).cls == Class.SUCCESS
    assert rec.held == 1 and ("release", "alice") in rec.asked
    assert third.allocate().cls == Class.SUCCESS


def test_a_bug_is_a_500_logged_and_counted_never_a_400(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def lookup(self, username: str, realm: str, source: Any, now: float) -> Any:
            return {}["boom"]  # a KeyError: a bug of the server, not the client's doing

    class WrongType:
        def lookup(self, username: str, realm: str, source: Any, now: float) -> Any:
            return 42

    for auth in (Broken(), WrongType()):
        engine = make_engine(auth=auth)
        c = Client(Harness(engine))
        msg = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
        first = decode(c.raw(msg.encode())[0])  # the 401 asks for credentials
        c.nonce = first.get(Attr.NONCE)
        replies = engine.handle_client(c.transport, c.addr, c._sign(msg, "sha1"), c.h.now)
        (reply,) = replies
        assert code(decode(reply.data)) == 500
        assert engine.stats.bugs == 1 and engine.stats.bad_packets == 0
    assert "event=internal_error" in caplog.text and "Traceback" in caplog.text


# ---- abuse (docs/security.md): each of these was possible before the fix -------------------


def _own_engine(**config: Any) -> Any:
    from natkit.turn.policy import OwnAddresses

    engine = make_engine(allow=("198.51.100.0/24", "192.0.2.0/24", "203.0.113.0/24"), **config)
    # the harness binds relays on 192.0.2.1 and advertises 203.0.113.1; the listener is
    # 192.0.2.1:3478; the allow list reopens those IPs explicitly (for other ports)
    engine.own = OwnAddresses(
        ["192.0.2.1"], listen_ports=[(4, 3478)], reopened=["192.0.2.0/24", "203.0.113.0/24"]
    )
    return engine


def test_relay_refuses_its_own_relayed_addresses_and_listener_as_peers() -> None:
    h = Harness(_own_engine())
    a, b = Client(h, addr=("198.51.100.10", 1)), Client(h, addr=("198.51.100.11", 1))
    a.allocate(), b.allocate()
    relay_a, relay_b = a.allocation.relays[0], b.allocation.relays[0]
    for c, other in ((a, relay_b), (b, relay_a)):  # two allocations pointed at each other
        for target in (other.address, other.advertised):
            assert code(c.channel(0x4000, target)) == 403
            assert code(c.permit_exact(target)) == 403
    assert code(a.channel(0x4001, relay_a.address)) == 403  # itself
    assert code(a.channel(0x4001, ("192.0.2.1", 3478))) == 403  # the listener
    assert code(a.channel(0x4001, ("::ffff:192.0.2.1", relay_b.address[1]))) == 403
    assert h.engine.stats.refused_by_reason["own_relay"] >= 5
    assert h.engine.stats.refused_by_reason["own_listener"] == 1
    # the IP itself was reopened explicitly: another port on it is a peer like any other...
    assert a.permit_exact(("192.0.2.1", 9)).cls == Class.SUCCESS
    # ...but Send indications to the relay's own ports go nowhere, and nothing is offloaded
    a.send_indication(relay_b.address, b"loop")
    a.send_indication(("192.0.2.1", 3478), b"nested")
    assert h.sent_to_peers == []
    a.send_indication(("192.0.2.1", 9), b"fine")
    assert [s.peer for s in h.sent_to_peers] == [("192.0.2.1", 9)]
    # and datagrams from a relay or the listener are not relayed to a client either
    assert h.engine.forward_from_peer(relay_a, relay_b.address, b"x", h.now) is None
    assert h.engine.forward_from_peer(relay_a, ("192.0.2.1", 3478), b"x", h.now) is None
    assert h.engine.forward_from_peer(relay_a, ("192.0.2.1", 9), b"x", h.now) is not None


def test_own_ips_refused_at_any_port_unless_reopened() -> None:
    h = Harness(make_engine(allow=("198.51.100.0/24", "192.0.2.0/24", "203.0.113.0/24")))
    c = Client(h)
    c.allocate()
    # the relay's IPs (bound and advertised) are its own even though the allow list covers
    # them: only the server's own allow list (OwnAddresses.reopened) reopens them
    for peer in (("192.0.2.1", 9), ("203.0.113.1", 53), ("0.0.0.0", 3478)):
        assert code(c.channel(0x4000, peer)) == 403, peer
    assert h.engine.stats.refused_by_reason["own_address"] == 3


def test_allocate_sent_through_the_relay_to_the_listener_is_dropped() -> None:
    h = Harness(_own_engine())
    a = Client(h)
    a.allocate()
    relay = a.allocation.relays[0]
    for source in (relay.address, relay.advertised):
        nested = Client(h, addr=source, username="bob", password="pw")
        assert nested.raw(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode()) == []
        assert nested.raw(Message(Method.BINDING).encode()) == []
    assert h.engine.stats.from_own_relay == 4
    assert len(h.engine.allocations) == 1


def test_a_channel_to_a_port_a_relay_later_takes_is_void() -> None:
    h = Harness(_own_engine())
    a = Client(h)
    a.allocate()
    # the harness hands out relay ports 50000, 50002, ...: a got 50000, the next is 50002
    assert a.channel(0x4000, ("192.0.2.1", 50002)).cls == Class.SUCCESS
    b = Client(h, addr=("198.51.100.11", 1))
    b.allocate()
    assert b.allocation.relays[0].address == ("192.0.2.1", 50002)
    assert 0x4000 not in (a.allocation.channels or {})  # void: it now names b's relay
    out = h.engine.forward_from_client(
        (a.transport, a.addr), encode_channel_data(0x4000, b"x"), h.now
    )
    assert out is None


def test_channels_are_capped_per_allocation(harness: Harness) -> None:
    h = Harness(make_engine(max_channels=5))
    c = Client(h)
    c.allocate()
    for n in range(5):
        assert c.channel(0x4000 + n, ("198.51.100.7", 2000 + n)).cls == Class.SUCCESS
    assert code(c.channel(0x4005, ("198.51.100.7", 2005))) == 508
    assert c.channel(0x4004, ("198.51.100.7", 2004)).cls == Class.SUCCESS  # a refresh is fine
    assert h.engine.stats.quota_refusals == 1
    assert make_engine().config.max_channels == 500  # the documented default


def test_per_request_work_does_not_grow_with_the_channels_of_one_peer_ip() -> None:
    """5,271 channels to one IP made every request mirror them all (finding 3); now a request
    emits its own entries and the next tick renews the rest, once."""

    def events_per_request(channels: int) -> tuple[int, int, int]:
        h = Harness(make_engine(offload=True, max_channels=channels + 1))
        c = Client(h)
        c.allocate()
        for n in range(channels):
            c.channel(0x4000 + n, ("198.51.100.7", 1000 + n))
        h.tick(1)
        seen = len(h.offloads)
        c.channel(0x4000, ("198.51.100.7", 1000))
        bind = len(h.offloads) - seen
        seen = len(h.offloads)
        c.permit("198.51.100.7")
        permit = len(h.offloads) - seen
        seen = len(h.offloads)
        h.tick(0)
        return bind, permit, len(h.offloads) - seen

    small, large = events_per_request(3), events_per_request(1500)
    assert small[:2] == large[:2] == (1, 0)
    assert large[2] == 1 + 1500  # the tick: the permission and every channel, once


def test_spoofed_wrong_passwords_never_lock_out_the_real_user(harness: Harness) -> None:
    """~2.5 bad requests/s from the victim's IP kept it from every refresh (finding 4)."""
    victim = Client(harness, addr=("198.51.100.20", 5000))
    assert victim.allocate().cls == Class.SUCCESS
    spoofer = Client(harness, addr=("198.51.100.20", 6000), username="alice", password="guess")
    spoofer.allocate()
    refresh = Message(Method.REFRESH).add(Attr.LIFETIME, 600)
    ok = 0
    for _ in range(20):
        for _ in range(50):  # far more than 2.5/s: the brake is spent at once
            spoofer.raw(spoofer._sign(refresh, "sha1"))
        harness.now += 0.4
        ok += victim.refresh(600).cls == Class.SUCCESS
    assert ok == 20
    assert harness.engine.stats.auth_blocked > 900
    # a user behind the same NAT with another name is not braked either
    bob = Client(harness, addr=("198.51.100.20", 7000), username="bob", password="pw")
    assert bob.allocate().cls == Class.SUCCESS


def test_unauthenticated_error_responses_are_rate_limited_per_source(harness: Harness) -> None:
    """3,000 unauthenticated Allocates got 3,000 401s in 1.4 s (finding 5)."""
    flooder = Client(harness, addr=("198.51.100.30", 1), username=None)
    allocate = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
    replies = 0
    for _ in range(3000):
        harness.now += 1.4 / 3000
        replies += len(flooder.raw(allocate.encode()))
    limiter = harness.engine.responses
    assert replies <= limiter.burst + 1.4 * limiter.rate + 1
    assert harness.engine.stats.rate_limited == 3000 - replies
    # another source is served; a stream (a proven source) is not limited
    assert code(Client(harness, addr=("198.51.100.31", 1)).allocate()) is None
    streamer = Client(harness, addr=("198.51.100.30", 2), username=None, stream=True)
    assert all(len(streamer.raw(allocate.encode())) == 1 for _ in range(300))


def test_many_real_clients_behind_one_address_are_not_rate_limited(harness: Harness) -> None:
    # each costs one 401 and then authenticates, which gives its token back
    for port in range(1000):
        c = Client(harness, addr=("198.51.100.40", 10000 + port))
        assert c.allocate().cls == Class.SUCCESS
    assert harness.engine.stats.rate_limited == 0


def test_rest_credentials_far_in_the_future_or_with_unicode_digits_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(make_engine(secrets=("s3cret",)))
    ok_name, ok_pw = rest_credentials("s3cret", 3600, h.now, "carol")
    assert Client(h, username=ok_name, password=ok_pw).allocate().cls == Class.SUCCESS
    for name in (
        "99999999999:carol",
        f"{int(h.now) + 86400 * 2}:carol",
        "１７００００３６００:carol",
    ):
        from natkit.turn.auth import rest_password

        c = Client(
            h,
            addr=("198.51.100.50", len(name)),
            username=name,
            password=rest_password("s3cret", name),
        )
        with caplog.at_level("INFO", logger="natkit.turn"):
            assert code(c.allocate()) == 401, name
    assert "ahead" in caplog.text


def test_requests_from_another_workers_relay_ports_are_dropped() -> None:
    """--workers: a request from a relay port of another worker's share (on a relay IP) is a
    nested allocation across workers: dropped and counted, like one from an own relay."""
    from natkit.turn.policy import OwnAddresses

    engine = make_engine(allow=("198.51.100.0/24", "192.0.2.0/24"))
    engine.own = OwnAddresses(
        ["192.0.2.1"], listen_ports=[(4, 3478)], relay_ports=(50000, 50049),
        sibling_ports=[(50050, 50099)], sibling_ips=["192.0.2.1"],
    )  # fmt: skip
    h = Harness(engine)
    nested = Client(h, addr=("192.0.2.1", 50070))
    assert nested.raw(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17).encode()) == []
    assert engine.stats.from_own_relay == 1 and not engine.allocations
    ordinary = Client(h, addr=("192.0.2.1", 40000))  # not a relay port: served as usual
    assert ordinary.allocate().cls == Class.SUCCESS


def test_a_changed_password_takes_effect_at_once_despite_the_identity_cache() -> None:
    """The identity of a plain password is made once per (user, password, algorithm): the
    next request with the old password after a change fails, the new one works."""
    users = StaticUsers({"alice": "secret"})
    harness = Harness(make_engine(auth=users))
    first = Client(harness, ("198.51.100.10", 40000))
    assert first.allocate().cls == Class.SUCCESS
    users.users["alice"] = "changed"
    old = Client(harness, ("198.51.100.11", 40000))
    assert code(old.allocate()) == 401
    new = Client(harness, ("198.51.100.12", 40000), password="changed")
    assert new.allocate().cls == Class.SUCCESS
    sha = Client(harness, ("198.51.100.13", 40000), password="changed",
                 algorithm=PasswordAlgorithm.SHA256)  # fmt: skip
    assert sha.allocate().cls == Class.SUCCESS  # another algorithm: another key
    assert len(harness.engine._plain) == 3


def test_an_adopted_allocation_is_the_engines_and_a_duplicate_is_refused() -> None:
    """A fast path's allocation (TurnEngine.adopt_allocation): counted, quota'd, cached for a
    retransmission; a second one for the same 5-tuple keeps the first and closes its relay."""
    from natkit.turn.actions import CloseRelay, OffloadAllocation, OffloadWithdraw

    engine = make_engine(offload=True, max_allocations=1)
    addr = ("192.0.2.50", 5000)
    relay = Relay(4, ("192.0.2.1", 40000), ("192.0.2.1", 40000), object())
    assert engine.adopt_allocation("udp", addr, "alice", relay, 600, b"t" * 12, b"ok", 100.0) == []
    allocation = engine.allocations[("udp", addr)]
    assert allocation.username == "alice" and allocation.expires == 700.0
    assert allocation.last_request == (b"t" * 12, b"ok") and allocation.offloaded
    assert engine.quota.total == 1 and engine.stats.allocations_created == 1
    assert ("192.0.2.1", 40000) in engine._relay_addrs
    second = Relay(4, ("192.0.2.1", 40001), ("192.0.2.1", 40001), object())
    actions = engine.adopt_allocation("udp", addr, "alice", second, 600, b"u" * 12, b"", 101.0)
    assert [type(a) for a in actions] == [OffloadAllocation, CloseRelay]
    assert engine.allocations[("udp", addr)] is allocation and engine.stats.bugs == 1
    other = ("192.0.2.51", 5000)  # the quota is full: refused, its table entry withdrawn
    actions = engine.adopt_allocation("udp", other, "alice", second, 600, b"v" * 12, b"", 101.0)
    assert [type(a) for a in actions] == [OffloadWithdraw, CloseRelay]
    assert ("udp", other) not in engine.allocations and engine.quota.total == 1
