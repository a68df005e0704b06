"""Token buckets that brake what a client can make the relay do for free, sans-IO.

* :class:`FailureLimiter` - failed authentications, keyed by (username, realm, source IP), with
  a budget for the whole server on top. Over budget, a *failing* request is dropped without its
  401; a request whose MESSAGE-INTEGRITY verifies is never touched, so nobody can lock out
  another user by failing in their name (from their IP, or behind the same NAT).
* :class:`ResponseLimiter` - error responses sent to sources that have not authenticated
  (401/438 challenges, 400, 420, ...), per source IP: an unauthenticated request costs a few
  dozen bytes and its 401 about six times that, so a spoofed flood would make the relay a
  reflector without it.

Both are bounded in memory: a key whose bucket has refilled is forgotten, and a full table
forgets its oldest half (a fresh start for those keys, never a refusal).
"""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, burst: float, rate: float, max_keys: int = 50_000) -> None:
        self.burst = float(burst)
        self.rate = float(rate)
        self.max_keys = max_keys
        self._buckets: dict[Hashable, list[float]] = {}

    def take(self, key: Hashable, now: float) -> bool:
        """Take one token for ``key``; False (nothing taken) when its bucket is empty."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.prune(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def give(self, key: Hashable, now: float) -> None:
        """Give ``key`` one token back (up to ``burst``); nothing for an unknown key."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[0], bucket[1] = min(self.burst, tokens + 1.0), now

    def empty(self, key: Hashable, now: float) -> bool:
        """True when ``key`` has no token left (nothing is taken)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return False
        return bucket[0] + (now - bucket[1]) * self.rate < 1.0

    def prune(self, now: float) -> None:
        """Forget keys whose bucket has refilled; if still full, the oldest half."""
        rate, burst = self.rate, self.burst
        for key in [k for k, b in self._buckets.items() if b[0] + (now - b[1]) * rate >= burst]:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for key in list(self._buckets)[: len(self._buckets) // 2 + 1]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class FailureLimiter:
    """The brute-force brake: how many failed authentications get their 401.

    ``burst``/``rate`` per (username, realm, source IP): a client that mistypes a password
    gets its 401s; one that keeps guessing from one address gets one every ``1/rate`` s, the
    rest are dropped unanswered (a timeout for a guesser, who must wait for each verdict).
    ``global_burst``/``global_rate``: the same for the whole server, so guessing spread over
    many names or addresses is braked too. Only failures are counted and only failures are
    dropped: the brake cannot stop a request whose MESSAGE-INTEGRITY verifies.
    """

    __slots__ = ("_global", "_keys")

    def __init__(
        self,
        burst: float = 10.0,
        rate: float = 0.2,
        *,
        global_burst: float = 1000.0,
        global_rate: float = 200.0,
        max_keys: int = 10_000,
    ) -> None:
        self._keys = TokenBuckets(burst, rate, max_keys)
        self._global = TokenBuckets(global_burst, global_rate, 1)

    @property
    def burst(self) -> float:
        return self._keys.burst

    @property
    def max_keys(self) -> int:
        return self._keys.max_keys

    @max_keys.setter
    def max_keys(self, value: int) -> None:
        self._keys.max_keys = value

    def failure(self, username: str, realm: str, ip: str, now: float) -> bool:
        """Count one failed authentication; True when its 401 may be sent, False when the
        key's or the server's budget is spent (drop the request unanswered)."""
        if not self._keys.take((username, realm, ip), now):
            return False
        return self._global.take(None, now)

    def prune(self, now: float) -> None:
        self._keys.prune(now)

    def __len__(self) -> int:
        return len(self._keys)


class ResponseLimiter:
    """Error responses to unauthenticated requests, per source IP (``burst``, ``rate``/s).

    A request from the source whose MESSAGE-INTEGRITY verifies (with a nonce the relay gave
    that IP: it receives our replies, it is not spoofed) gives a token back, so clients that
    go on to authenticate (one 401 per Allocate, then signed requests) never run dry, however
    many of them share one address, while a source that only ever provokes errors does."""

    __slots__ = ("_buckets", "credited", "limited")

    def __init__(
        self, burst: float = 100.0, rate: float | None = 50.0, max_keys: int = 10_000
    ) -> None:
        """``rate`` None: no limit."""
        self.limited = rate is not None
        self._buckets = TokenBuckets(burst, rate or 0.0, max_keys)
        #: when a list: every credited IP is appended (the adapter passes them on to a C
        #: fast path that answers challenges out of the same credits)
        self.credited: list[str] | None = None

    @property
    def burst(self) -> float:
        return self._buckets.burst

    @property
    def rate(self) -> float:
        return self._buckets.rate

    def allow(self, ip: str, now: float) -> bool:
        """Take one response for ``ip``; False: send nothing (count it)."""
        return not self.limited or self._buckets.take(ip, now)

    def credit(self, ip: str, now: float, *, fast: bool = True) -> None:
        """A verified request from ``ip``: one error response back into its budget
        (``fast`` False: a request the fast path verified, which credited its own)."""
        self._buckets.give(ip, now)
        if fast and self.credited is not None:
            self.credited.append(ip)

    def prune(self, now: float) -> None:
        self._buckets.prune(now)

    def __len__(self) -> int:
        return len(self._buckets)
