"""``natkit lab run --shard K/N``: a deterministic 1/N of a run's cases (sans-IO).

Case ``i`` of the selection (its fixed order, :class:`~natkit.lab.matrix.Selection`) belongs to
shard ``i mod N + 1``: every shard gets a slice of every part of the matrix (the browsers'
cases, the expected failures that idle until their deadline, each stack pair), so shards take
about the same time. Each shard builds only the NATs its cases use and probes those; its report
carries the plan's id, the shard and each case's ``index``, which is all
:mod:`natkit.lab.merge` needs to put the shards back together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from natkit.errors import ConfigError
from natkit.lab.topology import Case

__all__ = ["MAX_SHARDS", "Shard", "parse_shard", "shard_cases"]

MAX_SHARDS = 1024
_SPEC = re.compile(r"^\s*(\d{1,4})\s*/\s*(\d{1,4})\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1..count
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str) -> Shard:
    """``K/N`` (1 <= K <= N <= MAX_SHARDS) as a :class:`Shard`; ConfigError otherwise."""
    m = _SPEC.match(text or "")
    if not m:
        raise ConfigError(f"{text!r}: expected K/N, e.g. 2/4", param="shard")
    k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= n <= MAX_SHARDS or not 1 <= k <= n:
        raise ConfigError(f"{text}: K must be 1..N and N 1..{MAX_SHARDS}", param="shard")
    return Shard(k, n)


def shard_cases(cases: Sequence[Case], shard: Shard) -> list[tuple[int, Case]]:
    """The cases of ``shard`` with their index in ``cases``; may be empty (N > cases)."""
    return [(i, c) for i, c in enumerate(cases) if i % shard.count == shard.index - 1]
