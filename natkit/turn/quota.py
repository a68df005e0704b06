"""How many allocations may exist: per user, per source address, in total.

The engine takes one unit from its :class:`Quota` when it accepts an Allocate (before the
relay sockets are bound, so concurrent Allocates count) and gives it back when the allocation
ends or could not be made; a refusal is a 486 (Allocation Quota Reached). Any object with
``acquire``/``release`` can replace :class:`AllocationQuota`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from natkit.errors import ConfigError

Address = tuple[str, int]


@runtime_checkable
class Quota(Protocol):
    def acquire(self, user: str | None, source: Address) -> str | None:
        """Take one allocation for ``user`` (its account; None without authentication) from
        ``source``; the reason it is refused, or None when it was taken."""
        ...

    def release(self, user: str | None, source: Address) -> None:
        """Give back what :meth:`acquire` took for the same ``user`` and ``source``."""
        ...


def _limit(value: int | None, param: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"must be a whole number of at least 1, not {value!r}", param=param)
    return value


class AllocationQuota:
    """Limits per user (account), per source IP and in total; None: no limit."""

    __slots__ = ("per_source", "per_user", "sources", "total", "total_limit", "users")

    def __init__(
        self,
        per_user: int | None = None,
        per_source: int | None = None,
        total: int | None = None,
    ) -> None:
        self.per_user = _limit(per_user, "per_user")
        self.per_source = _limit(per_source, "per_source")
        self.total_limit = _limit(total, "total")
        self.users: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.total = 0

    def acquire(self, user: str | None, source: Address) -> str | None:
        if self.total_limit is not None and self.total >= self.total_limit:
            return "server allocation limit"
        if (
            user is not None
            and self.per_user is not None
            and self.users.get(user, 0) >= self.per_user
        ):
            return "user allocation limit"
        ip = source[0]
        if self.per_source is not None and self.sources.get(ip, 0) >= self.per_source:
            return "source allocation limit"
        self.total += 1
        if user is not None:
            self.users[user] = self.users.get(user, 0) + 1
        self.sources[ip] = self.sources.get(ip, 0) + 1
        return None

    def release(self, user: str | None, source: Address) -> None:
        self.total = max(0, self.total - 1)
        if user is not None:
            _decrement(self.users, user)
        _decrement(self.sources, source[0])


def _decrement(counts: dict[str, int], name: str) -> None:
    left = counts.get(name, 0) - 1
    if left > 0:
        counts[name] = left
    else:
        counts.pop(name, None)
