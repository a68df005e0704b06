"""Who may use the relay: authenticators (pion/turn's AuthHandler), REST API secrets, nonces.

An :class:`Authenticator` is asked, for each request that carries credentials, what it knows of
the USERNAME: a password, or :class:`Grant` objects (a password or a ready MD5 key, the account
quotas count against, an expiry), or None to refuse. The engine derives the long-term keys
(RFC 8489 §9.2.2, MD5 or SHA-256 as the client chose) and checks MESSAGE-INTEGRITY against each.
The built-in authenticators:

* :class:`StaticUsers`: name -> password.
* :class:`RestSecrets`: the TURN REST API (coturn-compatible): the username is
  ``expiry[:user]`` (a UNIX time in ASCII digits), the password
  ``base64(HMAC-SHA1(secret, username))``. Several secrets may be live at once so they can be
  rotated; an expired username is refused on every request, Refresh included, and so is one
  whose expiry lies more than ``max_ttl`` seconds ahead (a credential minted "forever" is a
  static password that cannot be revoked).
* :class:`FirstOf`: the first of several that knows the username.
* :class:`NoAuth`: an open relay; requests carry no credentials and nothing is asked.

Nonces are stateless: they carry their own expiry and an HMAC binding them to the client's IP
address, so a restart or many clients cost no memory. They begin with the RFC 8489
security-feature cookie announcing PASSWORD-ALGORITHMS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from natkit.stun import make_nonce
from natkit.turn.limits import FailureLimiter, ResponseLimiter

__all__ = [
    "Authenticator",
    "FailureLimiter",
    "FirstOf",
    "Grant",
    "Identity",
    "Lookup",
    "NoAuth",
    "NonceIssuer",
    "Refused",
    "ResponseLimiter",
    "RestSecrets",
    "StaticUsers",
    "rest_credentials",
    "rest_password",
]

Address = tuple[str, int]

#: The nonce's fixed start: the security-feature cookie announcing PASSWORD-ALGORITHMS.
_PREFIX = make_nonce(0x800000, "")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as."""

    username: str
    key: bytes
    #: the user quotas are counted against (the part after ``expiry:`` for REST names)
    account: str
    #: UNIX time after which the credential stops working (None: never)
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """What an authenticator knows of one username.

    ``password`` serves both password algorithms; ``key`` is a ready MD5 long-term key
    (MD5(username:realm:password), what pion's handlers and coturn's database hold; a client
    that asks for SHA-256 is then refused). ``account`` is what quotas count (default: the
    username); after ``expires`` (UNIX time) every request with it is refused.
    """

    password: str | None = None
    key: bytes | None = None
    account: str | None = None
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """An authenticator's "no" with the reason for the log (the client still gets a 401)."""

    reason: str


Lookup = str | Grant | Sequence[Grant] | Refused | None


@runtime_checkable
class Authenticator(Protocol):
    """Decides who may use the relay, like pion/turn's ``AuthHandler``."""

    def lookup(self, username: str, realm: str, source: Address, now: float) -> Lookup:
        """The password of ``username`` (or Grants) for a request from ``source``; None or
        :class:`Refused` refuses it (401). ``realm`` is the server's (a request for another is refused first);
        ``now`` is the engine's clock. Called for every authenticated request: keep it fast."""
        ...


class NoAuth:
    """No authentication: an open relay (for closed labs). Never asked anything."""

    def lookup(self, username: str, realm: str, source: Address, now: float) -> Lookup:
        return None


class StaticUsers:
    """Long-term credentials from a name -> password mapping."""

    __slots__ = ("users",)

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)

    def lookup(self, username: str, realm: str, source: Address, now: float) -> Lookup:
        return self.users.get(username)


class RestSecrets:
    """TURN REST API credentials (coturn's ``use-auth-secret``), any of several secrets.

    ``max_ttl``: the furthest ahead (seconds) an expiry may lie; None: no limit."""

    __slots__ = ("max_ttl", "secrets", "separator")

    def __init__(
        self, secrets: Iterable[str], *, separator: str = ":", max_ttl: float | None = 86400
    ) -> None:
        self.secrets = list(secrets)
        self.separator = separator
        self.max_ttl = max_ttl

    def expiry(self, username: str) -> float | None:
        """The expiry a REST username carries, or None if it is not a REST username.
        Only ASCII digits count (``str.isdigit`` would take other scripts' digits too)."""
        head = username.split(self.separator, 1)[0]
        if not (head.isascii() and head.isdigit()) or len(head) > 12:
            return None
        return float(head)

    def lookup(self, username: str, realm: str, source: Address, now: float) -> Lookup:
        expiry = self.expiry(username)
        if expiry is None or not self.secrets:
            return None
        if self.max_ttl is not None and expiry - now > self.max_ttl:
            return Refused(f"REST expiry more than {self.max_ttl:g} s ahead")
        _, sep, user = username.partition(self.separator)
        account = user if sep and user else username
        return [Grant(rest_password(s, username), None, account, expiry) for s in self.secrets]


class FirstOf:
    """Asks each authenticator in turn; the first answer that is not None wins."""

    __slots__ = ("authenticators",)

    def __init__(self, *authenticators: Authenticator) -> None:
        self.authenticators = authenticators

    def lookup(self, username: str, realm: str, source: Address, now: float) -> Lookup:
        for auth in self.authenticators:
            found = auth.lookup(username, realm, source, now)
            if found is not None:
                return found
        return None


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

    def scheme(self) -> tuple[bytes, float, str]:
        """(secret, lifetime, prefix): what another issuer of the same nonces needs (the C
        control path): prefix + expiry (10 hex digits) + the first 20 hex digits of
        HMAC-SHA256(secret, "<expiry hex>|<client IP>"), expiry = int(now + lifetime)."""
        return self._secret, self.lifetime, _PREFIX

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
