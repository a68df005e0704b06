"""Byte-exact against RFC 5769 and RFC 8489 Appendix B.1, in both directions."""

from __future__ import annotations

from natkit.stun import (
    Attr,
    Class,
    Message,
    Method,
    PasswordAlgorithm,
    decode,
    long_term_key,
    short_term_key,
    userhash,
    verify_integrity,
)
from tests.stun import vectors as v


def test_request_decodes_and_verifies() -> None:
    msg = decode(v.REQUEST)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.BINDING, Class.REQUEST, v.TID)
    assert msg.get(Attr.SOFTWARE) == "STUN test client"
    assert msg.get(Attr.PRIORITY) == 0x6E0001FF
    assert msg.get(Attr.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert msg.get(Attr.USERNAME) == "evtj:h6vY"
    assert verify_integrity(msg, short_term_key(v.PASSWORD))
    assert not verify_integrity(msg, short_term_key("wrong"))


def test_request_encodes_byte_exact() -> None:
    msg = (
        Message(Method.BINDING, Class.REQUEST, v.TID)
        .add(Attr.SOFTWARE, "STUN test client")
        .add(Attr.PRIORITY, 0x6E0001FF)
        .add(Attr.ICE_CONTROLLED, 0x932FF9B151263B36)
        .add(Attr.USERNAME, "evtj:h6vY")
    )
    # RFC 5769 pads with spaces; any padding value is legal.
    out = msg.encode(key=short_term_key(v.PASSWORD), fingerprint=True, pad=b" ")
    assert out == v.REQUEST


def test_ipv4_response_both_ways() -> None:
    msg = decode(v.RESPONSE_V4)
    assert msg.cls == Class.SUCCESS
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == ("192.0.2.1", 32853)
    assert verify_integrity(msg, short_term_key(v.PASSWORD))
    built = (
        msg.response()
        .add(Attr.SOFTWARE, "test vector")
        .add(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))
    )
    built = Message(Method.BINDING, Class.SUCCESS, v.TID, built.attributes)
    assert built.encode(key=short_term_key(v.PASSWORD), fingerprint=True, pad=b" ") == (
        v.RESPONSE_V4
    )


def test_ipv6_response_both_ways() -> None:
    msg = decode(v.RESPONSE_V6)
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert verify_integrity(msg, short_term_key(v.PASSWORD))
    built = (
        Message(Method.BINDING, Class.SUCCESS, v.TID)
        .add(Attr.SOFTWARE, "test vector")
        .add(Attr.XOR_MAPPED_ADDRESS, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
    )
    assert built.encode(key=short_term_key(v.PASSWORD), fingerprint=True, pad=b" ") == (
        v.RESPONSE_V6
    )


def test_long_term_request_both_ways() -> None:
    key = long_term_key(v.LT_USERNAME, v.LT_REALM, v.LT_PASSWORD)
    msg = decode(v.REQUEST_LONG_TERM)
    assert msg.get(Attr.USERNAME) == v.LT_USERNAME
    assert msg.get(Attr.NONCE) == v.LT_NONCE
    assert msg.get(Attr.REALM) == v.LT_REALM
    assert verify_integrity(msg, key)
    built = (
        Message(Method.BINDING, Class.REQUEST, v.LT_TID)
        .add(Attr.USERNAME, v.LT_USERNAME)
        .add(Attr.NONCE, v.LT_NONCE)
        .add(Attr.REALM, v.LT_REALM)
    )
    assert built.encode(key=key) == v.REQUEST_LONG_TERM


def test_rfc8489_sha256_userhash_both_ways() -> None:
    # No PASSWORD-ALGORITHM in the request: the key is the MD5 one (RFC 8489 §9.2.2), the
    # HMAC is SHA-256.
    key = long_term_key(v.LT_USERNAME, v.LT_REALM, v.LT_PASSWORD)
    assert key != long_term_key(v.LT_USERNAME, v.LT_REALM, v.LT_PASSWORD, PasswordAlgorithm.SHA256)
    msg = decode(v.REQUEST_SHA256)
    assert msg.get(Attr.USERHASH) == userhash(v.LT_USERNAME, v.LT_REALM)
    assert msg.get(Attr.NONCE) == v.SHA256_NONCE
    assert verify_integrity(msg, key)
    built = (
        Message(Method.BINDING, Class.REQUEST, v.LT_TID)
        .add(Attr.USERHASH, userhash(v.LT_USERNAME, v.LT_REALM))
        .add(Attr.NONCE, v.SHA256_NONCE)
        .add(Attr.REALM, v.LT_REALM)
    )
    assert built.encode(key=key, integrity="sha256") == v.REQUEST_SHA256
