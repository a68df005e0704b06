"""Long-term credentials (RFC 8489 §9.2), TURN REST API secrets, nonces, failure limits.

* Static users: name -> password, keys cached per (user, algorithm).
* TURN REST API (coturn-compatible): the username is ``expiry[:user]`` (a UNIX time), the
  password ``base64(HMAC-SHA1(secret, username))``. Several secrets may be live at once so
  they can be rotated; an expired username is refused on every request, Refresh included.
* Nonces are stateless: they carry their own expiry and an HMAC binding them to the client's
  IP address, so a restart or many clients cost no memory. They begin with the RFC 8489
  security-feature cookie announcing PASSWORD-ALGORITHMS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from natkit.stun import PasswordAlgorithm, long_term_key, make_nonce

#: The nonce's fixed start: the security-feature cookie announcing PASSWORD-ALGORITHMS.
_PREFIX = make_nonce(0x800000, "")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as."""

    username: str
    key: bytes
    #: the user quotas are counted against (the part after ``expiry:`` for REST names)
    account: str
    #: UNIX time after which a REST credential stops working (None: never)
    expires: float | None = None


class Credentials:
    """Resolves a (username, realm, algorithm) to candidate keys."""

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        *,
        separator: str = ":",
    ) -> None:
        self.realm = realm
        self.users = dict(users or {})
        self.secrets = [s.encode() for s in secrets]
        self.separator = separator
        # (user, algorithm) -> [its identity]: static users' keys are derived once
        self._static: dict[tuple[str, int], list[Identity]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.secrets)

    def rest_expiry(self, username: str) -> float | None:
        """The expiry a REST username carries, or None if it is not a REST username."""
        head = username.split(self.separator, 1)[0]
        if not head.isdigit() or len(head) > 12:
            return None
        return float(head)

    def candidates(
        self, username: str, algorithm: PasswordAlgorithm, now: float
    ) -> list[Identity] | str:
        """Identities whose key may have signed the request; or a reason string if none."""
        password = self.users.get(username)
        if password is not None:
            cache_key = (username, algorithm.algorithm)
            cached = self._static.get(cache_key)
            if cached is None:
                key = long_term_key(username, self.realm, password, algorithm)
                cached = [Identity(username, key, username)]
                if len(self._static) < 100_000:
                    self._static[cache_key] = cached
            return cached
        if not self.secrets:
            return "unknown user"
        expiry = self.rest_expiry(username)
        if expiry is None:
            return "unknown user"
        if expiry <= now:
            return "expired REST credential"
        account = username.split(self.separator, 1)[1] if self.separator in username else ""
        return [
            Identity(
                username,
                long_term_key(username, self.realm, rest_password(secret, username), algorithm),
                account or username,
                expiry,
            )
            for secret in self.secrets
        ]


def rest_password(secret: bytes | str, username: str) -> str:
    """The TURN REST API password for ``username`` under ``secret``."""
    if isinstance(secret, str):
        secret = secret.encode()
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


def rest_credentials(secret: str, ttl: float, now: float, user: str = "") -> tuple[str, str]:
    """A (username, password) pair valid for ``ttl`` seconds from ``now`` (UNIX time)."""
    username = f"{int(now + ttl)}:{user}" if user else str(int(now + ttl))
    return username, rest_password(secret, username)


class NonceIssuer:
    """Stateless nonces: cookie + features + expiry + HMAC(expiry, client IP).

    Two small caches keep the HMACs off the Allocate path without making nonces stateful:
    the nonce last issued per client IP is reused while its expiry (whole seconds) is the
    same, and a nonce this issuer made is checked against the IP it was issued to without
    recomputing its MAC. Both are bounded; a miss falls back to the MAC.
    """

    _CACHE_MAX = 4096

    def __init__(self, lifetime: float = 600.0, secret: bytes | None = None) -> None:
        self.lifetime = lifetime
        self._secret = secret or os.urandom(16)
        self._last: dict[str, tuple[int, str]] = {}  # client IP -> (expiry, nonce)
        self._issued: dict[str, str] = {}  # nonce -> the client IP it was issued to

    def _mac(self, expiry_hex: str, client_ip: str) -> str:
        msg = f"{expiry_hex}|{client_ip}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:20]

    def issue(self, client_ip: str, now: float) -> str:
        expiry = int(now + self.lifetime)
        last = self._last.get(client_ip)
        if last is not None and last[0] == expiry:
            return last[1]
        expiry_hex = f"{expiry:010x}"
        nonce = f"{_PREFIX}{expiry_hex}{self._mac(expiry_hex, client_ip)}"
        if len(self._last) >= self._CACHE_MAX:
            self._last.clear()
        self._last[client_ip] = (expiry, nonce)
        if len(self._issued) >= self._CACHE_MAX:
            self._issued.clear()
        self._issued[nonce] = client_ip
        return nonce

    def valid(self, nonce: str, client_ip: str, now: float) -> bool:
        """True if we issued ``nonce`` to ``client_ip`` and it has not expired."""
        prefix = _PREFIX
        if len(nonce) != len(prefix) + 30 or not nonce.startswith(prefix):
            return False
        expiry_hex, mac = nonce[len(prefix) : len(prefix) + 10], nonce[len(prefix) + 10 :]
        try:
            expiry = int(expiry_hex, 16)
        except ValueError:
            return False
        if expiry <= now:
            return False
        issued_to = self._issued.get(nonce)
        if issued_to is not None:
            return issued_to == client_ip
        return hmac.compare_digest(mac, self._mac(expiry_hex, client_ip))


class FailureLimiter:
    """Token bucket per source IP for failed authentications (a brute-force brake)."""

    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, burst: float = 20.0, rate: float = 1.0, max_sources: int = 50_000) -> None:
        self.burst = burst
        self.rate = rate
        self.max_sources = max_sources
        self._buckets: dict[str, list[float]] = {}

    def _tokens(self, ip: str, now: float) -> list[float] | None:
        bucket = self._buckets.get(ip)
        if bucket is None:
            return None
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        return bucket

    def blocked(self, ip: str, now: float) -> bool:
        bucket = self._tokens(ip, now)
        return bucket is not None and bucket[0] < 1.0

    def failure(self, ip: str, now: float) -> None:
        bucket = self._tokens(ip, now)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self.prune(now)
            bucket = self._buckets[ip] = [self.burst, now]
        bucket[0] = max(0.0, bucket[0] - 1.0)

    def prune(self, now: float) -> None:
        """Forget sources whose bucket has refilled (and, if still full, the oldest half)."""
        for ip in [
            ip for ip, b in self._buckets.items() if b[0] + (now - b[1]) * self.rate >= self.burst
        ]:
            del self._buckets[ip]
        if len(self._buckets) >= self.max_sources:
            for ip in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[ip]

    def __len__(self) -> int:
        return len(self._buckets)
