"""Per-source budget for the UDP general path, so one flooding address cannot starve others.

Plain Binding requests never reach it (the fast path answers them at line rate); what does
reach it costs a full decode, so each source IP gets a token bucket: ``rate`` requests per
second with bursts of ``burst``. Over budget, a datagram is dropped before decoding (counted).
The table is bounded: when full, it is cleared (a fresh start for everyone, never a refusal).
"""

from __future__ import annotations

import time


class SourceBudget:
    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(
        self, rate: float = 2000.0, burst: float = 200.0, max_sources: int = 65536
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, list[float]] = {}

    def allow(self, ip: str, now: float | None = None) -> bool:
        """Take one token for ``ip``; False when its bucket is empty."""
        if now is None:
            now = time.monotonic()
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.clear()
            self._buckets[ip] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True
