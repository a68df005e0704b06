"""Credentials and message integrity (RFC 8489 §9, §14.5, §14.6, §18.5).

Keys: short-term = the OpaqueString-processed password; long-term = MD5 or SHA-256 of
``username:realm:password``. Verification recomputes the HMAC over the decoded message's raw
bytes with the length field adjusted, as the RFC requires.
"""

from __future__ import annotations

import hashlib
import hmac
import stringprep
import struct
import unicodedata

from natkit.stun.attributes import ALGORITHM_MD5, ALGORITHM_SHA256, PasswordAlgorithm
from natkit.stun.constants import HEADER_LENGTH, Attr
from natkit.stun.message import Message

_ATTR_HEAD = struct.Struct("!HH")


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013) of a password: map, NFKC-normalise, reject prohibited output.

    RFC 8489 names OpaqueString (RFC 8265) but its test vectors, like every deployed server,
    use SASLprep's mapping (soft hyphen removed, compatibility forms folded)."""
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    normal = unicodedata.normalize("NFKC", mapped)
    for ch in normal:
        if (
            stringprep.in_table_c21(ch)
            or stringprep.in_table_c22(ch)
            or stringprep.in_table_c3(ch)
            or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch)
            or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch)
            or stringprep.in_table_c8(ch)
            or stringprep.in_table_c9(ch)
        ):
            raise ValueError(f"password holds a prohibited character U+{ord(ch):04X}")
    return normal


def short_term_key(password: str) -> bytes:
    return saslprep(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: PasswordAlgorithm | int = ALGORITHM_MD5,
) -> bytes:
    """The long-term credential key for MD5 (default) or SHA-256 (RFC 8489 §9.2.2)."""
    code = algorithm if isinstance(algorithm, int) else algorithm.algorithm
    material = f"{username}:{realm}:{saslprep(password)}".encode()
    if code == ALGORITHM_MD5:
        return hashlib.md5(material).digest()
    if code == ALGORITHM_SHA256:
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm {code}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH value (RFC 8489 §14.4)."""
    return hashlib.sha256(f"{username}:{realm}".encode()).digest()


def _integrity_offsets(raw: bytes) -> dict[int, tuple[int, int]]:
    """Attribute type -> (offset of the attribute header, value length) for the integrity
    attributes of a message that :func:`decode` already validated."""
    found: dict[int, tuple[int, int]] = {}
    pos, n = HEADER_LENGTH, len(raw)
    while pos + 4 <= n:
        attr_type, alen = _ATTR_HEAD.unpack_from(raw, pos)
        if attr_type in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256):
            found[attr_type] = (pos, alen)
        pos += 4 + alen + (-alen % 4)
    return found


def _mac_ok(raw: bytes, offset: int, alen: int, key: bytes, digest: str) -> bool:
    head = raw[:2] + struct.pack("!H", offset + 4 + alen - HEADER_LENGTH) + raw[4:HEADER_LENGTH]
    mac = hmac.digest(key, head + raw[HEADER_LENGTH:offset], digest)  # one call, no object
    return hmac.compare_digest(mac[:alen], raw[offset + 4 : offset + 4 + alen])


def verify_integrity(msg: Message, key: bytes) -> bool:
    """True when the decoded message carries MESSAGE-INTEGRITY-SHA256 (checked first) or
    MESSAGE-INTEGRITY that matches ``key``; False when it carries neither or they don't match."""
    raw = msg.raw
    if raw is None:
        raise ValueError("verify_integrity needs a decoded message")
    offsets = _integrity_offsets(raw)
    if Attr.MESSAGE_INTEGRITY_SHA256 in offsets:
        off, alen = offsets[Attr.MESSAGE_INTEGRITY_SHA256]
        return _mac_ok(raw, off, alen, key, "sha256")
    if Attr.MESSAGE_INTEGRITY in offsets:
        off, alen = offsets[Attr.MESSAGE_INTEGRITY]
        return _mac_ok(raw, off, alen, key, "sha1")
    return False
