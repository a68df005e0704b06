"""Credentials, TURN REST API passwords, stateless nonces and the failure limiter."""

from __future__ import annotations

import base64
import hashlib
import hmac

from natkit.stun import PasswordAlgorithm, long_term_key
from natkit.turn.auth import (
    Credentials,
    FailureLimiter,
    NonceIssuer,
    rest_credentials,
    rest_password,
)

NOW = 1_700_000_000.0


def test_rest_password_matches_coturn_formula() -> None:
    expected = base64.b64encode(
        hmac.new(b"north", b"1700000600:bob", hashlib.sha1).digest()
    ).decode()
    assert rest_password("north", "1700000600:bob") == expected
    user, password = rest_credentials("north", 600, NOW, "bob")
    assert (user, password) == ("1700000600:bob", expected)
    assert rest_credentials("north", 600, NOW)[0] == "1700000600"


def test_static_user_keys_and_algorithms() -> None:
    creds = Credentials("r", {"alice": "pw"})
    (md5,) = creds.candidates("alice", PasswordAlgorithm.MD5, NOW)
    (sha,) = creds.candidates("alice", PasswordAlgorithm.SHA256, NOW)
    assert md5.key == long_term_key("alice", "r", "pw") and len(md5.key) == 16
    assert (
        sha.key == long_term_key("alice", "r", "pw", PasswordAlgorithm.SHA256)
        and len(sha.key) == 32
    )
    assert creds.candidates("bob", PasswordAlgorithm.MD5, NOW) == "unknown user"


def test_rest_candidates_one_per_secret_and_expiry() -> None:
    creds = Credentials("r", secrets=["a", "b"])
    user = "1700000600:carol"
    identities = creds.candidates(user, PasswordAlgorithm.MD5, NOW)
    assert isinstance(identities, list) and len(identities) == 2
    assert identities[1].key == long_term_key(user, "r", rest_password("b", user))
    assert identities[0].account == "carol" and identities[0].expires == 1700000600
    assert creds.candidates(user, PasswordAlgorithm.MD5, NOW + 601) == "expired REST credential"
    assert creds.candidates("carol", PasswordAlgorithm.MD5, NOW) == "unknown user"
    anonymous = creds.candidates("1700000600", PasswordAlgorithm.MD5, NOW)
    assert isinstance(anonymous, list) and anonymous[0].account == "1700000600"


def test_nonce_is_stateless_bound_and_expires() -> None:
    issuer = NonceIssuer(lifetime=60, secret=b"k" * 16)
    nonce = issuer.issue("192.0.2.1", NOW)
    assert nonce.startswith("obMatJos2gAAA")  # security feature: password algorithms
    assert len(nonce) < 128
    assert issuer.valid(nonce, "192.0.2.1", NOW + 59)
    assert not issuer.valid(nonce, "192.0.2.1", NOW + 61)
    assert not issuer.valid(nonce, "192.0.2.2", NOW)
    assert not issuer.valid(nonce[:-1] + ("0" if nonce[-1] != "0" else "1"), "192.0.2.1", NOW)
    assert not issuer.valid("garbage", "192.0.2.1", NOW)
    assert NonceIssuer(secret=b"k" * 16).valid(nonce, "192.0.2.1", NOW)  # survives a restart
    assert not NonceIssuer(secret=b"x" * 16).valid(nonce, "192.0.2.1", NOW)


def test_failure_limiter_blocks_refills_and_stays_bounded() -> None:
    limiter = FailureLimiter(burst=3, rate=1.0, max_sources=100)
    for _ in range(3):
        assert not limiter.blocked("a", NOW)
        limiter.failure("a", NOW)
    assert limiter.blocked("a", NOW)
    assert not limiter.blocked("b", NOW)
    assert not limiter.blocked("a", NOW + 1.5)
    for i in range(1000):
        limiter.failure(f"10.0.{i // 256}.{i % 256}", NOW)
    assert len(limiter) <= 100


def test_nonce_caches_reuse_per_second_and_stay_bounded() -> None:
    issuer = NonceIssuer(lifetime=60, secret=b"k" * 16)
    first = issuer.issue("192.0.2.1", NOW)
    assert issuer.issue("192.0.2.1", NOW + 0.4) == first  # same expiry second: reused
    assert issuer.issue("192.0.2.1", NOW + 1) != first
    assert issuer.issue("192.0.2.2", NOW) != first  # bound to the IP
    # a cached nonce is still bound to its IP and still expires
    assert issuer.valid(first, "192.0.2.1", NOW) and not issuer.valid(first, "192.0.2.2", NOW)
    assert not issuer.valid(first, "192.0.2.1", NOW + 61)
    for i in range(3 * NonceIssuer._CACHE_MAX):
        issuer.issue(f"10.0.{i // 250}.{i % 250}", NOW)
    assert len(issuer._issued) <= NonceIssuer._CACHE_MAX
    assert len(issuer._last) <= NonceIssuer._CACHE_MAX
    assert issuer.valid(first, "192.0.2.1", NOW)  # out of the cache: the MAC still proves it
