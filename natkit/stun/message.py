"""STUN message: header, class/method encoding, attribute list, encode and strict decode."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from natkit.stun.attributes import CODECS, REPEATABLE, ErrorCode
from natkit.stun.constants import (
    ERROR_REASONS,
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE_BYTES,
    Attr,
    Class,
    Method,
    is_comprehension_required,
)
from natkit.stun.errors import StunParseError

_HEADER = struct.Struct("!HH")
_ATTR_HEAD = struct.Struct("!HH")
_U32 = struct.Struct("!I")

# Plain ints on the decode loop: an IntEnum member lookup costs more than the comparison.
_MI = int(Attr.MESSAGE_INTEGRITY)
_MI256 = int(Attr.MESSAGE_INTEGRITY_SHA256)
_FP = int(Attr.FINGERPRINT)
# Only these may follow MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5, §14.6).
_AFTER_MI = frozenset({_MI256, _FP})
_AFTER_MI256 = frozenset({_FP})
_REPEATABLE = frozenset(int(a) for a in REPEATABLE)
_CODECS = {int(k): v for k, v in CODECS.items()}


def message_type(method: int, cls: int) -> int:
    """Interleave method and class bits into the 14-bit message type (RFC 8489 §5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0x1) << 4)
        | ((cls & 0x2) << 7)
    )


def split_type(msg_type: int) -> tuple[int, int]:
    """The inverse of :func:`message_type`: (method, class)."""
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type & 0x0010) >> 4) | ((msg_type & 0x0100) >> 7)
    return method, cls


def random_transaction_id() -> bytes:
    return os.urandom(12)


def _enum_or_int(enum: type[Method] | type[Class], value: int) -> int:
    try:
        return enum(value)
    except ValueError:
        return value


class Message:
    """A STUN message. Attributes are kept in order as ``(type, value)`` pairs.

    ``transaction_id`` is 12 bytes, or 16 for a ``legacy`` RFC 3489 message (no magic cookie:
    the cookie field is part of its transaction id). ``raw`` is the wire form of a decoded
    message, used to check its integrity.
    """

    __slots__ = ("attributes", "cls", "legacy", "method", "raw", "transaction_id")

    def __init__(
        self,
        method: int,
        cls: int = Class.REQUEST,
        transaction_id: bytes | None = None,
        attributes: list[tuple[int, Any]] | None = None,
        *,
        legacy: bool = False,
    ) -> None:
        self.method = method
        self.cls = cls
        self.legacy = legacy
        if transaction_id is None:
            transaction_id = os.urandom(16 if legacy else 12)
        if len(transaction_id) != (16 if legacy else 12):
            raise ValueError("transaction id must be 12 bytes (16 for a legacy message)")
        self.transaction_id = transaction_id
        self.attributes: list[tuple[int, Any]] = attributes if attributes is not None else []
        self.raw: bytes | None = None

    # -- attribute access -------------------------------------------------------------------

    def add(self, attr_type: int, value: Any = True) -> Message:
        self.attributes.append((attr_type, value))
        return self

    def get(self, attr_type: int, default: Any = None) -> Any:
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return default

    def get_all(self, attr_type: int) -> list[Any]:
        return [v for t, v in self.attributes if t == attr_type]

    def has(self, attr_type: int) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def __contains__(self, attr_type: object) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return iter(self.attributes)

    def unknown_required(self) -> list[int]:
        """Comprehension-required attribute types this codec does not know (for a 420)."""
        return [t for t, _ in self.attributes if is_comprehension_required(t) and t not in CODECS]

    @property
    def error_code(self) -> ErrorCode | None:
        value = self.get(Attr.ERROR_CODE)
        return value if isinstance(value, ErrorCode) else None

    # -- building responses -------------------------------------------------------------------

    def response(self, cls: int = Class.SUCCESS) -> Message:
        """A response to this request: same method and transaction id, no attributes."""
        return Message(self.method, cls, self.transaction_id, legacy=self.legacy)

    def error(self, code: int, reason: str | None = None) -> Message:
        resp = self.response(Class.ERROR)
        resp.add(Attr.ERROR_CODE, ErrorCode(code, reason or ERROR_REASONS.get(code, "")))
        return resp

    # -- wire form ----------------------------------------------------------------------------

    @property
    def _mask(self) -> bytes:
        return MAGIC_COOKIE_BYTES + self.transaction_id

    def encode(
        self,
        *,
        key: bytes | None = None,
        integrity: str = "sha1",
        fingerprint: bool = False,
        pad: bytes = b"\x00",
    ) -> bytes:
        """The wire form. With ``key``, MESSAGE-INTEGRITY (``integrity="sha1"``),
        MESSAGE-INTEGRITY-SHA256 (``"sha256"``) or both (``"both"``) are appended after the
        attributes; with ``fingerprint``, FINGERPRINT last. ``pad`` is the padding byte."""
        mask = self._mask
        parts: list[bytes] = []
        for attr_type, value in self.attributes:
            codec = CODECS.get(attr_type)
            body = bytes(value) if codec is None else codec[1](value, mask)
            parts.append(_ATTR_HEAD.pack(attr_type, len(body)))
            parts.append(body)
            if len(body) % 4:
                parts.append(pad * (4 - len(body) % 4))
        body = b"".join(parts)
        prefix = self.transaction_id if self.legacy else MAGIC_COOKIE_BYTES + self.transaction_id
        mtype = message_type(self.method, self.cls)
        if key is not None:
            if integrity in ("sha1", "both"):
                head = _HEADER.pack(mtype, len(body) + 24) + prefix
                mac = hmac.new(key, head + body, hashlib.sha1).digest()
                body += _ATTR_HEAD.pack(Attr.MESSAGE_INTEGRITY, 20) + mac
            if integrity in ("sha256", "both"):
                head = _HEADER.pack(mtype, len(body) + 36) + prefix
                mac = hmac.new(key, head + body, hashlib.sha256).digest()
                body += _ATTR_HEAD.pack(Attr.MESSAGE_INTEGRITY_SHA256, 32) + mac
            if integrity not in ("sha1", "sha256", "both"):
                raise ValueError(f"integrity must be sha1, sha256 or both, not {integrity!r}")
        if fingerprint:
            head = _HEADER.pack(mtype, len(body) + 8) + prefix
            crc = zlib.crc32(head + body) ^ FINGERPRINT_XOR
            body += _ATTR_HEAD.pack(Attr.FINGERPRINT, 4) + _U32.pack(crc)
        return _HEADER.pack(mtype, len(body)) + prefix + body

    def __repr__(self) -> str:
        method = _enum_or_int(Method, self.method)
        cls = _enum_or_int(Class, self.cls)
        names = []
        for t, v in self.attributes:
            try:
                name = Attr(t).name
            except ValueError:
                name = f"0x{t:04x}"
            names.append(f"{name}={v!r}")
        return (
            f"Message({getattr(method, 'name', method)}, {getattr(cls, 'name', cls)}, "
            f"tid={self.transaction_id.hex()}, {', '.join(names)})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.method == other.method
            and self.cls == other.cls
            and self.transaction_id == other.transaction_id
            and self.legacy == other.legacy
            and self.attributes == other.attributes
        )

    __hash__ = None  # type: ignore[assignment]


def decode(data: bytes | bytearray | memoryview, *, allow_legacy: bool = False) -> Message:
    """Decode one STUN message, strictly. Any malformed input raises :class:`StunParseError`
    and nothing else: bad length or padding, truncated attributes, a wrong magic cookie (unless
    ``allow_legacy``: RFC 3489 messages), bad address families, duplicate attributes,
    attributes after MESSAGE-INTEGRITY other than those allowed, a wrong FINGERPRINT."""
    data = bytes(data)
    n = len(data)
    if n < HEADER_LENGTH:
        raise StunParseError(f"{n} bytes is shorter than a STUN header")
    msg_type, length = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunParseError("first two bits are not zero")
    if length % 4:
        raise StunParseError(f"message length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != n:
        raise StunParseError(f"message length {length} does not match {n - HEADER_LENGTH} bytes")
    legacy = data[4:8] != MAGIC_COOKIE_BYTES
    if legacy and not allow_legacy:
        raise StunParseError("wrong magic cookie")
    tid = data[4:20] if legacy else data[8:20]
    mask = data[4:20]
    method, cls = split_type(msg_type)
    attributes: list[tuple[int, Any]] = []
    seen: set[int] = set()
    pos = HEADER_LENGTH
    after: frozenset[int] | None = None  # what may still follow, once integrity has been seen
    codecs, repeatable, unpack = _CODECS, _REPEATABLE, _ATTR_HEAD.unpack_from
    while pos < n:
        if pos + 4 > n:
            raise StunParseError("truncated attribute header")
        attr_type, alen = unpack(data, pos)
        start = pos + 4
        end = start + alen
        padded = end + (-alen % 4)
        if padded > n:
            raise StunParseError(f"attribute 0x{attr_type:04x} overruns the message")
        if after is not None and attr_type not in after:
            raise StunParseError(f"attribute 0x{attr_type:04x} after message integrity")
        if attr_type in seen and attr_type not in repeatable:
            raise StunParseError(f"duplicate attribute 0x{attr_type:04x}")
        seen.add(attr_type)
        value = data[start:end]
        codec = codecs.get(attr_type)
        decoded: Any = value if codec is None else codec[0](value, mask)
        if attr_type == _FP:
            if padded != n:
                raise StunParseError("FINGERPRINT is not the last attribute")
            head = _HEADER.pack(msg_type, pos + 8 - HEADER_LENGTH) + data[4:20]
            if (zlib.crc32(data[HEADER_LENGTH:pos], zlib.crc32(head)) ^ FINGERPRINT_XOR) != decoded:
                raise StunParseError("FINGERPRINT does not match")
            after = frozenset()
        elif attr_type == _MI:
            after = _AFTER_MI
        elif attr_type == _MI256:
            after = _AFTER_MI256
        attributes.append((attr_type, decoded))
        pos = padded
    msg = Message(method, cls, tid, attributes, legacy=legacy)
    msg.raw = data
    return msg


def is_stun(data: bytes | bytearray | memoryview) -> bool:
    """Cheap test: does this look like an RFC 5389+ STUN message (header and cookie)?"""
    return (
        len(data) >= HEADER_LENGTH
        and data[0] & 0xC0 == 0
        and bytes(data[4:8]) == MAGIC_COOKIE_BYTES
        and (len(data) - HEADER_LENGTH) == _HEADER.unpack_from(data)[1]
    )
