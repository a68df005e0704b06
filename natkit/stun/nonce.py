"""NONCE with the security-feature cookie (RFC 8489 §9.2, §18.1)."""

from __future__ import annotations

import base64

NONCE_COOKIE = "obMatJos2"
FEATURE_PASSWORD_ALGORITHMS = 0x800000  # bit 0: "Password algorithms"
FEATURE_USERNAME_ANONYMITY = 0x400000  # bit 1: "Username anonymity"


def make_nonce(features: int, opaque: str) -> str:
    """A nonce that advertises ``features`` (24 bits) ahead of the server's ``opaque`` part."""
    encoded = base64.b64encode(features.to_bytes(3, "big")).decode("ascii")
    return f"{NONCE_COOKIE}{encoded}{opaque}"


def parse_nonce(nonce: str) -> tuple[int | None, str]:
    """(features, rest): features is None when the nonce has no security-feature cookie."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < len(NONCE_COOKIE) + 4:
        return None, nonce
    field = nonce[len(NONCE_COOKIE) : len(NONCE_COOKIE) + 4]
    try:
        raw = base64.b64decode(field, validate=True)
    except ValueError:
        return None, nonce
    return int.from_bytes(raw, "big"), nonce[len(NONCE_COOKIE) + 4 :]
