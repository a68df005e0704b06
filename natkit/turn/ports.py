"""Relay port selection in a configured range (sans-IO: the adapter does the binding).

Ports are tried in random order so allocations are not predictable, and ports the pool has
handed out are not offered again until released. A port may still be busy for a reason the
pool cannot know (another process); the adapter then simply tries the next candidate.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


class PortPool:
    """Hands out candidate relay ports in ``[low, high]``; ``low == 0`` means "any port"."""

    __slots__ = ("_rng", "high", "in_use", "low")

    def __init__(self, low: int = 0, high: int = 0, *, seed: int | None = None) -> None:
        if low and not 1 <= low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self.low = low
        self.high = high
        self.in_use: set[int] = set()
        self._rng = random.Random(seed)

    @property
    def ephemeral(self) -> bool:
        """True when the kernel picks the port (no range configured)."""
        return self.low == 0

    def candidates(
        self, *, even: bool = False, pair: bool = False, limit: int = 64
    ) -> Iterator[int]:
        """Up to ``limit`` free ports (even ones with ``even``; ``pair``: port+1 free too)."""
        if self.ephemeral:
            return
        span = self.high - self.low + 1
        in_use, rng = self.in_use, self._rng
        yielded: set[int] = set()
        # random probes first: a few per candidate while the range has room (a scan from a
        # random start would walk the taken ports of a nearly full range for every
        # allocation), then the scan, which finds the last free ports too
        for _ in range(min(8 * limit, 4 * span)):
            if len(yielded) >= limit:
                return
            port = self.low + rng.randrange(span)
            if port in yielded or port in in_use or (even and port % 2):
                continue
            if pair and (port + 1 > self.high or port + 1 in in_use):
                continue
            yielded.add(port)
            yield port
        start = rng.randrange(span)
        tried = len(yielded)
        for i in range(span):
            if tried >= limit:
                return
            port = self.low + (start + i) % span
            if even and port % 2:
                continue
            if port in in_use or port in yielded:
                continue
            if pair and (port + 1 > self.high or port + 1 in in_use):
                continue
            tried += 1
            yield port

    def take(self, port: int) -> None:
        self.in_use.add(port)

    def release(self, port: int) -> None:
        self.in_use.discard(port)

    @property
    def free(self) -> int | None:
        """How many ports remain (None when the kernel picks)."""
        if self.ephemeral:
            return None
        return self.high - self.low + 1 - len(self.in_use)
