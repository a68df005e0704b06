from __future__ import annotations

import hashlib
import hmac

import pytest

from natkit.stun import (
    Attr,
    Message,
    Method,
    PasswordAlgorithm,
    decode,
    long_term_key,
    make_nonce,
    parse_nonce,
    saslprep,
    short_term_key,
    verify_integrity,
)


def test_saslprep_maps_like_the_rfc_vectors() -> None:
    assert saslprep("The\u00adM\u00aatr\u2168") == "TheMatrIX"
    assert saslprep("user\u00a0name") == "user name"
    with pytest.raises(ValueError):
        saslprep("bad\u0007")


def test_long_term_key_md5_and_sha256() -> None:
    assert long_term_key("u", "r", "p") == hashlib.md5(b"u:r:p").digest()
    assert long_term_key("u", "r", "p", PasswordAlgorithm.SHA256) == hashlib.sha256(b"u:r:p").digest()
    with pytest.raises(ValueError):
        long_term_key("u", "r", "p", 7)


@pytest.mark.parametrize("integrity", ["sha1", "sha256", "both"])
def test_integrity_round_trip(integrity: str) -> None:
    msg = Message(Method.ALLOCATE).add(Attr.USERNAME, "u").add(Attr.REQUESTED_TRANSPORT, 17)
    wire = msg.encode(key=b"key", integrity=integrity, fingerprint=True)
    back = decode(wire)
    assert verify_integrity(back, b"key")
    assert not verify_integrity(back, b"other")


def test_no_integrity_is_not_valid() -> None:
    assert not verify_integrity(decode(Message(Method.BINDING).encode()), b"k")


def test_truncated_sha256_accepted() -> None:
    msg = Message(Method.BINDING).add(Attr.USERNAME, "u")
    full = msg.encode(key=b"k", integrity="sha256")
    # Truncate MESSAGE-INTEGRITY-SHA256 to 16 bytes: recompute over the new length.
    body = full[20:-36]
    head = full[:2] + (len(body) + 20).to_bytes(2, "big") + full[4:20]
    mac = hmac.new(b"k", head + body, "sha256").digest()[:16]
    wire = head + body + bytes.fromhex("001c 0010") + mac
    back = decode(wire)
    assert verify_integrity(back, b"k") and not verify_integrity(back, b"x")


def test_short_term_key() -> None:
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"


def test_nonce_security_feature_cookie() -> None:
    nonce = make_nonce(0x800000, "opaque")
    assert nonce.startswith("obMatJos2")
    assert parse_nonce(nonce) == (0x800000, "opaque")
    assert parse_nonce("plain-nonce") == (None, "plain-nonce")
    assert parse_nonce("obMatJos2AAACf//499k")[0] == 2
