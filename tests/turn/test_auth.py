"""Authenticators, TURN REST API passwords, stateless nonces and the failure limiter."""

from __future__ import annotations

import base64
import hashlib
import hmac

from natkit.turn.auth import (
    Authenticator,
    FailureLimiter,
    FirstOf,
    Grant,
    NoAuth,
    NonceIssuer,
    Refused,
    ResponseLimiter,
    RestSecrets,
    StaticUsers,
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


def test_static_users_and_first_of() -> None:
    static = StaticUsers({"alice": "pw"})
    assert static.lookup("alice", "r", ("192.0.2.1", 1), NOW) == "pw"
    assert static.lookup("bob", "r", ("192.0.2.1", 1), NOW) is None
    both = FirstOf(static, StaticUsers({"alice": "other", "bob": "b"}))
    assert both.lookup("alice", "r", ("192.0.2.1", 1), NOW) == "pw"  # the first one wins
    assert both.lookup("bob", "r", ("192.0.2.1", 1), NOW) == "b"
    assert isinstance(static, Authenticator) and isinstance(NoAuth(), Authenticator)


def test_rest_grants_one_per_secret_with_account_and_expiry() -> None:
    rest = RestSecrets(["a", "b"])
    user = "1700000600:carol"
    grants = rest.lookup(user, "r", ("192.0.2.1", 1), NOW)
    assert isinstance(grants, list) and len(grants) == 2
    assert grants[1] == Grant(rest_password("b", user), None, "carol", 1700000600)
    assert rest.lookup("carol", "r", ("192.0.2.1", 1), NOW) is None  # not a REST name
    (anonymous, _) = rest.lookup("1700000600", "r", ("192.0.2.1", 1), NOW)
    assert anonymous.account == "1700000600"
    assert RestSecrets([]).lookup(user, "r", ("192.0.2.1", 1), NOW) is None


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


def test_failure_limiter_is_per_user_realm_and_source_with_a_global_budget() -> None:
    limiter = FailureLimiter(burst=3, rate=1.0, global_burst=10, global_rate=1.0, max_keys=100)
    for _ in range(3):
        assert limiter.failure("alice", "r", "a", NOW)
    assert not limiter.failure("alice", "r", "a", NOW)  # this key is spent...
    assert limiter.failure("bob", "r", "a", NOW)  # ...not another user from the same source
    assert limiter.failure("alice", "r", "b", NOW)  # nor the same user from elsewhere
    assert limiter.failure("alice", "r", "a", NOW + 1.5)  # and tokens come back
    # the server-wide budget brakes guessing spread over many keys
    answered = sum(limiter.failure(f"u{i}", "r", "c", NOW + 1.5) for i in range(50))
    assert answered < 10
    for i in range(1000):
        limiter.failure("x", "r", f"10.0.{i // 256}.{i % 256}", NOW + 100 + i)
    assert len(limiter) <= 100


def test_response_limiter_budget_and_credit() -> None:
    limiter = ResponseLimiter(burst=3, rate=1.0)
    assert [limiter.allow("a", NOW) for _ in range(4)] == [True, True, True, False]
    limiter.credit("a", NOW)  # a verified request from "a": one more
    assert limiter.allow("a", NOW) and not limiter.allow("a", NOW)
    assert limiter.allow("b", NOW)


def test_rest_expiry_ascii_digits_and_max_ttl() -> None:
    rest = RestSecrets(["s"], max_ttl=86400)
    assert isinstance(rest.lookup(f"{int(NOW) + 86400}:u", "r", ("192.0.2.1", 1), NOW), list)
    far = rest.lookup(f"{int(NOW) + 86401}:u", "r", ("192.0.2.1", 1), NOW)
    assert isinstance(far, Refused) and "ahead" in far.reason
    assert isinstance(rest.lookup("99999999999:u", "r", ("192.0.2.1", 1), NOW), Refused)
    # digits of other scripts are digits to str.isdigit(), not to a REST timestamp
    for name in ("١٧٠٠٠٠٠٦٠٠:u", "１７００００００６００:u", "1700000600²:u"):
        assert rest.expiry(name) is None and rest.lookup(name, "r", ("192.0.2.1", 1), NOW) is None
    assert isinstance(
        RestSecrets(["s"], max_ttl=None).lookup("99999999999:u", "r", ("x", 1), NOW), list
    )


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
