from __future__ import annotations

import pytest

from natkit.stun import (
    CHANGE_IP,
    CHANGE_PORT,
    AddressErrorCode,
    Attr,
    Class,
    ErrorCode,
    Icmp,
    Message,
    Method,
    PasswordAlgorithm,
    StunParseError,
    decode,
    is_stun,
    message_type,
    split_type,
)
from natkit.stun.message import _ATTR_HEAD


@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize("cls", list(Class))
def test_type_interleaving_round_trips(method: Method, cls: Class) -> None:
    assert split_type(message_type(method, cls)) == (method, cls)


def test_known_message_types() -> None:
    assert message_type(Method.BINDING, Class.REQUEST) == 0x0001
    assert message_type(Method.BINDING, Class.SUCCESS) == 0x0101
    assert message_type(Method.BINDING, Class.ERROR) == 0x0111
    assert message_type(Method.ALLOCATE, Class.REQUEST) == 0x0003
    assert message_type(Method.SEND, Class.INDICATION) == 0x0016
    assert message_type(Method.DATA, Class.INDICATION) == 0x0017
    assert message_type(Method.CHANNEL_BIND, Class.ERROR) == 0x0119
    assert message_type(Method.CONNECTION_ATTEMPT, Class.INDICATION) == 0x001C


EVERY_ATTRIBUTE: list[tuple[int, object]] = [
    (Attr.MAPPED_ADDRESS, ("192.0.2.1", 1)),
    (Attr.CHANGE_REQUEST, CHANGE_IP | CHANGE_PORT),
    (Attr.USERNAME, "user"),
    (Attr.ERROR_CODE, ErrorCode(438, "Stale Nonce")),
    (Attr.UNKNOWN_ATTRIBUTES, (0x0031, 0x0032, 0x0033)),
    (Attr.CHANNEL_NUMBER, 0x4001),
    (Attr.LIFETIME, 600),
    (Attr.XOR_PEER_ADDRESS, ("198.51.100.9", 4000)),
    (Attr.XOR_PEER_ADDRESS, ("2001:db8::9", 4001)),
    (Attr.DATA, b"\x01\x02\x03"),
    (Attr.REALM, "example.org"),
    (Attr.NONCE, "obMatJos2AAACabc"),
    (Attr.XOR_RELAYED_ADDRESS, ("203.0.113.1", 50000)),
    (Attr.REQUESTED_ADDRESS_FAMILY, 2),
    (Attr.EVEN_PORT, True),
    (Attr.REQUESTED_TRANSPORT, 17),
    (Attr.DONT_FRAGMENT, True),
    (Attr.PASSWORD_ALGORITHM, PasswordAlgorithm.SHA256),
    (Attr.USERHASH, bytes(range(32))),
    (Attr.XOR_MAPPED_ADDRESS, ("2001:db8::1", 3478)),
    (Attr.RESERVATION_TOKEN, b"12345678"),
    (Attr.PRIORITY, 0x6E0001FF),
    (Attr.USE_CANDIDATE, True),
    (Attr.PADDING, b"\x00" * 7),
    (Attr.RESPONSE_PORT, 5000),
    (Attr.CONNECTION_ID, 77),
    (Attr.ADDITIONAL_ADDRESS_FAMILY, 2),
    (Attr.ADDRESS_ERROR_CODE, AddressErrorCode(2, 440, "Address Family not Supported")),
    (
        Attr.PASSWORD_ALGORITHMS,
        (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256, PasswordAlgorithm(9, b"abc")),
    ),
    (Attr.ALTERNATE_DOMAIN, "turn.example.org"),
    (Attr.ICMP, Icmp(3, 1, 0)),
    (Attr.SOFTWARE, "natkit"),
    (Attr.ALTERNATE_SERVER, ("2001:db8::2", 3479)),
    (Attr.ICE_CONTROLLED, 2**64 - 1),
    (Attr.ICE_CONTROLLING, 1),
    (Attr.RESPONSE_ORIGIN, ("192.0.2.2", 3478)),
    (Attr.OTHER_ADDRESS, ("192.0.2.3", 3479)),
    (0x8FFF, b"optional and unknown"),
    (0x0031, b"required and unknown"),
]


def test_every_attribute_round_trips() -> None:
    msg = Message(Method.ALLOCATE, Class.REQUEST, attributes=list(EVERY_ATTRIBUTE))
    back = decode(msg.encode(key=b"k", integrity="both", fingerprint=True))
    assert back.attributes[: len(EVERY_ATTRIBUTE)] == EVERY_ATTRIBUTE
    assert back.unknown_required() == [0x0031]
    assert back.get_all(Attr.XOR_PEER_ADDRESS) == [("198.51.100.9", 4000), ("2001:db8::9", 4001)]
    assert back == decode(back.raw or b"")


def test_xor_address_is_masked_on_the_wire() -> None:
    msg = Message(Method.BINDING, Class.SUCCESS).add(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))
    wire = msg.encode()
    assert b"\xc0\x00\x02\x01" not in wire  # the plain address never appears
    assert decode(wire).get(Attr.XOR_MAPPED_ADDRESS) == ("192.0.2.1", 32853)


def test_error_and_response_helpers() -> None:
    req = Message(Method.ALLOCATE)
    err = decode(req.error(401).encode())
    assert err.cls == Class.ERROR and err.transaction_id == req.transaction_id
    assert err.error_code == ErrorCode(401, "Unauthorized")
    assert decode(req.response().encode()).cls == Class.SUCCESS


def test_legacy_rfc3489_message() -> None:
    wire = bytes.fromhex("0001 0000") + bytes(range(16))
    with pytest.raises(StunParseError, match="cookie"):
        decode(wire)
    msg = decode(wire, allow_legacy=True)
    assert msg.legacy and msg.transaction_id == bytes(range(16))
    resp = msg.response().add(Attr.MAPPED_ADDRESS, ("192.0.2.1", 9)).encode()
    assert resp[4:20] == bytes(range(16))
    assert not is_stun(resp)


def _with_attr(attr_type: int, value: bytes) -> bytes:
    body = _ATTR_HEAD.pack(attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)
    return bytes.fromhex("0001") + len(body).to_bytes(2, "big") + bytes.fromhex(
        "2112a442"
    ) + bytes(12) + body


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x00\x01\x00", "shorter than a STUN header"),
        (bytes.fromhex("c001 0000 2112a442") + bytes(12), "first two bits"),
        (bytes.fromhex("0001 0002 2112a442") + bytes(14), "multiple of 4"),
        (bytes.fromhex("0001 0004 2112a442") + bytes(12), "does not match"),
        (bytes.fromhex("0001 0000 2112a443") + bytes(12), "cookie"),
        (bytes.fromhex("0001 0004 2112a442") + bytes(12) + b"\x00\x06\x00\x08", "overruns"),
        (_with_attr(Attr.XOR_MAPPED_ADDRESS, bytes.fromhex("0003 0001 01020304")), "family"),
        (_with_attr(Attr.XOR_MAPPED_ADDRESS, bytes.fromhex("0001 0001 010203")), "length"),
        (_with_attr(Attr.ERROR_CODE, bytes.fromhex("0000 0763")), "out of range"),
        (_with_attr(Attr.USERNAME, b"\xff\xfe"), "UTF-8"),
        (_with_attr(Attr.LIFETIME, b"\x00\x00"), "expected 4"),
        (_with_attr(Attr.USE_CANDIDATE, b"x"), "flag"),
        (_with_attr(Attr.MESSAGE_INTEGRITY, bytes(19)), "MESSAGE-INTEGRITY"),
    ],
)
def test_malformed_messages_raise_one_error_type(wire: bytes, reason: str) -> None:
    with pytest.raises(StunParseError, match=reason):
        decode(wire)


def test_duplicate_attribute_rejected() -> None:
    msg = Message(Method.BINDING).add(Attr.USERNAME, "a").add(Attr.USERNAME, "b")
    with pytest.raises(StunParseError, match="duplicate"):
        decode(msg.encode())


def test_attribute_after_integrity_rejected() -> None:
    wire = Message(Method.BINDING).encode(key=b"k")
    extra = _ATTR_HEAD.pack(Attr.SOFTWARE, 4) + b"abcd"
    bad = wire[:2] + (len(wire) - 20 + 8).to_bytes(2, "big") + wire[4:] + extra
    with pytest.raises(StunParseError, match="after message integrity"):
        decode(bad)


def test_fingerprint_checked_and_last() -> None:
    wire = bytearray(Message(Method.BINDING).add(Attr.SOFTWARE, "x").encode(fingerprint=True))
    wire[-1] ^= 1
    with pytest.raises(StunParseError, match="FINGERPRINT"):
        decode(bytes(wire))


def test_bad_padding_length_detected() -> None:
    # A 5-byte attribute needs 3 bytes of padding; give it none.
    wire = bytes.fromhex("0001 000c 2112a442") + bytes(12) + bytes.fromhex("8022 0005") + b"abcde"
    with pytest.raises(StunParseError):
        decode(wire)
