"""Typed attribute values, both directions.

Each known attribute type has a codec: ``decode(value, txid) -> object`` and
``encode(obj, txid) -> bytes``. ``txid`` is the 16 bytes magic cookie + transaction id that the
XOR-address attributes are masked with. Decoders raise :class:`StunParseError` on any
malformed value; they are called by :func:`natkit.stun.message.decode` for every attribute.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

# Address text conversion only; the codec never opens a socket.
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any, ClassVar, NamedTuple

from natkit.stun.constants import FAMILY_IPV4, FAMILY_IPV6, Attr
from natkit.stun.errors import StunParseError

Address = tuple[str, int]


class ErrorCode(NamedTuple):
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class PasswordAlgorithm:
    """PASSWORD-ALGORITHM(S) entry (RFC 8489 §14.11/14.12): ``PasswordAlgorithm.MD5``,
    ``PasswordAlgorithm.SHA256``."""

    algorithm: int
    params: bytes = b""

    MD5: ClassVar[PasswordAlgorithm]
    SHA256: ClassVar[PasswordAlgorithm]


ALGORITHM_MD5 = 0x0001
ALGORITHM_SHA256 = 0x0002
PasswordAlgorithm.MD5 = PasswordAlgorithm(ALGORITHM_MD5)
PasswordAlgorithm.SHA256 = PasswordAlgorithm(ALGORITHM_SHA256)


class Icmp(NamedTuple):
    """ICMP attribute (RFC 8656 §18.13)."""

    type: int
    code: int
    error_data: int = 0


class AddressErrorCode(NamedTuple):
    """ADDRESS-ERROR-CODE (RFC 8656 §18.12)."""

    family: int
    code: int
    reason: str


_Decoder = Callable[[bytes, bytes], Any]
_Encoder = Callable[[Any, bytes], bytes]

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_ADDR_HEAD = struct.Struct("!BBH")


def _xor(raw: bytes, mask: bytes) -> bytes:
    """``raw`` XOR the first ``len(raw)`` bytes of ``mask`` (cookie + transaction id)."""
    n = len(raw)
    value = int.from_bytes(raw, "big") ^ int.from_bytes(mask[:n], "big")
    return value.to_bytes(n, "big")


def _decode_address(value: bytes, mask: bytes | None) -> Address:
    if len(value) < 4:
        raise StunParseError("address attribute shorter than 4 bytes")
    _reserved, family, port = _ADDR_HEAD.unpack_from(value)
    if family == FAMILY_IPV4:
        if len(value) != 8:
            raise StunParseError(f"IPv4 address attribute of length {len(value)}, expected 8")
        raw = value[4:8]
    elif family == FAMILY_IPV6:
        if len(value) != 20:
            raise StunParseError(f"IPv6 address attribute of length {len(value)}, expected 20")
        raw = value[4:20]
    else:
        raise StunParseError(f"bad address family 0x{family:02x}")
    if mask is not None:
        port ^= 0x2112
        raw = _xor(raw, mask)
    ip = inet_ntop(AF_INET if family == FAMILY_IPV4 else AF_INET6, raw)
    return ip, port


def _encode_address(addr: Address, mask: bytes | None) -> bytes:
    ip, port = addr
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    if ":" in ip:
        family, raw = FAMILY_IPV6, inet_pton(AF_INET6, ip)
    else:
        family, raw = FAMILY_IPV4, inet_pton(AF_INET, ip)
    if mask is not None:
        port ^= 0x2112
        raw = _xor(raw, mask)
    return _ADDR_HEAD.pack(0, family, port) + raw


def _plain_address() -> tuple[_Decoder, _Encoder]:
    return (lambda v, t: _decode_address(v, None), lambda a, t: _encode_address(a, None))


def _xor_address() -> tuple[_Decoder, _Encoder]:
    return (lambda v, t: _decode_address(v, t), lambda a, t: _encode_address(a, t))


def _fixed(size: int, st: struct.Struct, name: str) -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> int:
        if len(v) != size:
            raise StunParseError(f"{name} of length {len(v)}, expected {size}")
        return int(st.unpack(v)[0])

    def enc(x: int, t: bytes) -> bytes:
        return st.pack(x)

    return dec, enc


def _u32() -> tuple[_Decoder, _Encoder]:
    return _fixed(4, _U32, "32-bit attribute")


def _u64() -> tuple[_Decoder, _Encoder]:
    return _fixed(8, _U64, "64-bit attribute")


def _text(limit: int) -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> str:
        if len(v) > limit:
            raise StunParseError(f"text attribute longer than {limit} bytes")
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise StunParseError("text attribute is not UTF-8") from None

    def enc(s: str, t: bytes) -> bytes:
        return s.encode("utf-8")

    return dec, enc


def _raw() -> tuple[_Decoder, _Encoder]:
    return (lambda v, t: bytes(v), lambda b, t: bytes(b))


def _flag() -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> bool:
        if v:
            raise StunParseError("flag attribute with a value")
        return True

    return dec, lambda b, t: b""


def _error_code() -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> ErrorCode:
        if len(v) < 4:
            raise StunParseError("ERROR-CODE shorter than 4 bytes")
        cls, number = v[2] & 0x07, v[3]
        if not 3 <= cls <= 6 or number > 99:
            raise StunParseError(f"ERROR-CODE class {cls} number {number} out of range")
        try:
            reason = v[4:].decode("utf-8")
        except UnicodeDecodeError:
            raise StunParseError("ERROR-CODE reason is not UTF-8") from None
        return ErrorCode(cls * 100 + number, reason)

    def enc(e: Any, t: bytes) -> bytes:
        code, reason = (e, "") if isinstance(e, int) else (e[0], e[1])
        return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")

    return dec, enc


def _unknown_attributes() -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> tuple[int, ...]:
        if len(v) % 2:
            raise StunParseError("UNKNOWN-ATTRIBUTES of odd length")
        return struct.unpack(f"!{len(v) // 2}H", v)

    def enc(types: Any, t: bytes) -> bytes:
        return struct.pack(f"!{len(types)}H", *types)

    return dec, enc


def _u32_high_byte(name: str) -> tuple[_Decoder, _Encoder]:
    """REQUESTED-TRANSPORT, REQUESTED-/ADDITIONAL-ADDRESS-FAMILY: a byte then 3 RFFU bytes."""

    def dec(v: bytes, t: bytes) -> int:
        if len(v) != 4:
            raise StunParseError(f"{name} of length {len(v)}, expected 4")
        return v[0]

    return dec, lambda x, t: bytes((x, 0, 0, 0))


def _family_value(name: str) -> tuple[_Decoder, _Encoder]:
    dec, enc = _u32_high_byte(name)

    def checked(v: bytes, t: bytes) -> int:
        family = int(dec(v, t))
        if family not in (FAMILY_IPV4, FAMILY_IPV6):
            raise StunParseError(f"{name} with bad family 0x{family:02x}")
        return family

    return checked, enc


def _u16_high(name: str) -> tuple[_Decoder, _Encoder]:
    """CHANNEL-NUMBER, RESPONSE-PORT: 16 bits then 16 RFFU bits."""

    def dec(v: bytes, t: bytes) -> int:
        if len(v) != 4:
            raise StunParseError(f"{name} of length {len(v)}, expected 4")
        return int(_U16.unpack_from(v)[0])

    return dec, lambda x, t: _U16.pack(x) + b"\x00\x00"


def _even_port() -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> bool:
        if len(v) != 1:
            raise StunParseError(f"EVEN-PORT of length {len(v)}, expected 1")
        return bool(v[0] & 0x80)

    return dec, lambda r, t: b"\x80" if r else b"\x00"


def _reservation_token() -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> bytes:
        if len(v) != 8:
            raise StunParseError(f"RESERVATION-TOKEN of length {len(v)}, expected 8")
        return bytes(v)

    return dec, lambda b, t: bytes(b)


def _decode_algorithms(v: bytes, single: bool) -> list[PasswordAlgorithm]:
    out: list[PasswordAlgorithm] = []
    pos = 0
    while pos < len(v):
        if pos + 4 > len(v):
            raise StunParseError("truncated PASSWORD-ALGORITHM")
        alg, plen = struct.unpack_from("!HH", v, pos)
        pos += 4
        end = pos + plen
        if end > len(v):
            raise StunParseError("PASSWORD-ALGORITHM parameters overrun")
        out.append(PasswordAlgorithm(alg, bytes(v[pos:end])))
        pos = end + (-plen % 4)
        if pos > len(v):
            raise StunParseError("PASSWORD-ALGORITHM padding overrun")
    if single and len(out) != 1:
        raise StunParseError("PASSWORD-ALGORITHM must hold exactly one algorithm")
    return out


def _encode_algorithm(a: PasswordAlgorithm) -> bytes:
    params = bytes(a.params)
    return struct.pack("!HH", a.algorithm, len(params)) + params + b"\x00" * (-len(params) % 4)


def _password_algorithm() -> tuple[_Decoder, _Encoder]:
    return (
        lambda v, t: _decode_algorithms(v, True)[0],
        lambda a, t: _encode_algorithm(a),
    )


def _password_algorithms() -> tuple[_Decoder, _Encoder]:
    return (
        lambda v, t: tuple(_decode_algorithms(v, False)),
        lambda algs, t: b"".join(_encode_algorithm(a) for a in algs),
    )


def _icmp() -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> Icmp:
        if len(v) != 8:
            raise StunParseError(f"ICMP of length {len(v)}, expected 8")
        _, typ, code, data = struct.unpack("!HBBI", v)
        return Icmp(typ & 0x7F, code, data)

    return dec, lambda i, t: struct.pack("!HBBI", 0, i[0], i[1], i[2])


def _address_error_code() -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> AddressErrorCode:
        if len(v) < 4:
            raise StunParseError("ADDRESS-ERROR-CODE shorter than 4 bytes")
        family, cls, number = v[0], v[2] & 0x07, v[3]
        if not 3 <= cls <= 6 or number > 99:
            raise StunParseError("ADDRESS-ERROR-CODE out of range")
        try:
            reason = v[4:].decode("utf-8")
        except UnicodeDecodeError:
            raise StunParseError("ADDRESS-ERROR-CODE reason is not UTF-8") from None
        return AddressErrorCode(family, cls * 100 + number, reason)

    def enc(a: AddressErrorCode, t: bytes) -> bytes:
        head = struct.pack("!BBBB", a.family, 0, a.code // 100, a.code % 100)
        return head + a.reason.encode("utf-8")

    return dec, enc


def _integrity(sizes: tuple[int, ...], name: str) -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, t: bytes) -> bytes:
        if len(v) not in sizes:
            raise StunParseError(f"{name} of length {len(v)}")
        return bytes(v)

    return dec, lambda b, t: bytes(b)


CODECS: dict[int, tuple[_Decoder, _Encoder]] = {
    Attr.MAPPED_ADDRESS: _plain_address(),
    Attr.RESPONSE_ADDRESS: _plain_address(),
    Attr.SOURCE_ADDRESS: _plain_address(),
    Attr.CHANGED_ADDRESS: _plain_address(),
    Attr.REFLECTED_FROM: _plain_address(),
    Attr.ALTERNATE_SERVER: _plain_address(),
    Attr.RESPONSE_ORIGIN: _plain_address(),
    Attr.OTHER_ADDRESS: _plain_address(),
    Attr.XOR_MAPPED_ADDRESS: _xor_address(),
    Attr.XOR_PEER_ADDRESS: _xor_address(),
    Attr.XOR_RELAYED_ADDRESS: _xor_address(),
    Attr.CHANGE_REQUEST: _u32(),
    Attr.USERNAME: _text(513),
    Attr.PASSWORD: _raw(),
    Attr.MESSAGE_INTEGRITY: _integrity((20,), "MESSAGE-INTEGRITY"),
    Attr.MESSAGE_INTEGRITY_SHA256: _integrity(tuple(range(16, 33, 4)), "MESSAGE-INTEGRITY-SHA256"),
    Attr.FINGERPRINT: _u32(),
    Attr.ERROR_CODE: _error_code(),
    Attr.UNKNOWN_ATTRIBUTES: _unknown_attributes(),
    Attr.CHANNEL_NUMBER: _u16_high("CHANNEL-NUMBER"),
    Attr.LIFETIME: _u32(),
    Attr.DATA: _raw(),
    Attr.REALM: _text(763),
    Attr.NONCE: _text(763),
    Attr.REQUESTED_ADDRESS_FAMILY: _family_value("REQUESTED-ADDRESS-FAMILY"),
    Attr.ADDITIONAL_ADDRESS_FAMILY: _family_value("ADDITIONAL-ADDRESS-FAMILY"),
    Attr.EVEN_PORT: _even_port(),
    Attr.REQUESTED_TRANSPORT: _u32_high_byte("REQUESTED-TRANSPORT"),
    Attr.DONT_FRAGMENT: _flag(),
    Attr.PASSWORD_ALGORITHM: _password_algorithm(),
    Attr.PASSWORD_ALGORITHMS: _password_algorithms(),
    Attr.USERHASH: _integrity((32,), "USERHASH"),
    Attr.RESERVATION_TOKEN: _reservation_token(),
    Attr.PRIORITY: _u32(),
    Attr.USE_CANDIDATE: _flag(),
    Attr.PADDING: _raw(),
    Attr.RESPONSE_PORT: _u16_high("RESPONSE-PORT"),
    Attr.CONNECTION_ID: _u32(),
    Attr.ADDRESS_ERROR_CODE: _address_error_code(),
    Attr.ALTERNATE_DOMAIN: _text(255),
    Attr.ICMP: _icmp(),
    Attr.SOFTWARE: _text(763),
    Attr.TRANSACTION_TRANSMIT_COUNTER: _u32(),
    Attr.CACHE_TIMEOUT: _u32(),
    Attr.ICE_CONTROLLED: _u64(),
    Attr.ICE_CONTROLLING: _u64(),
}

# Attributes that may legitimately appear more than once in one message.
REPEATABLE = frozenset({Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS})
