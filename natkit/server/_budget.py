"""Per-source budget for the UDP general path, so one flooding address cannot starve others.

Plain Binding requests never reach it (the fast path answers them at line rate); what does
reach it costs a full decode, so each source IP gets a token bucket: ``rate`` requests per
second with bursts of ``burst``. Over budget, a datagram is dropped before decoding (counted).
The table is bounded (a fresh start for forgotten sources, never a refusal).
"""

from __future__ import annotations

import time

from natkit.turn.limits import TokenBuckets


class SourceBudget:
    """``rate`` requests per second per source IP, bursts of ``burst``; ``max_sources``
    bounds the table (natkit.turn.limits.TokenBuckets: refilled keys, then the oldest half,
    are forgotten; a fresh start for those, never a refusal)."""

    __slots__ = ("_buckets",)

    def __init__(
        self, rate: float = 2000.0, burst: float = 200.0, max_sources: int = 65536
    ) -> None:
        self._buckets = TokenBuckets(burst, rate, max_sources)

    @property
    def rate(self) -> float:
        return self._buckets.rate

    @property
    def burst(self) -> float:
        return self._buckets.burst

    def allow(self, ip: str, now: float | None = None) -> bool:
        """Take one token for ``ip``; False when its bucket is empty."""
        return self._buckets.take(ip, time.monotonic() if now is None else now)
