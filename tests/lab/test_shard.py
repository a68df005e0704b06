"""--shard K/N: a deterministic partition of a run's cases (sans-IO)."""

from __future__ import annotations

import pytest

from natkit.errors import ConfigError
from natkit.lab.matrix import BUILTIN, select
from natkit.lab.shard import Shard, parse_shard, shard_cases
from natkit.lab.topology import load

pytestmark = pytest.mark.timeout(30)


def test_shards_partition_the_cases_in_plan_order() -> None:
    cases = list(select(load(), BUILTIN).cases)
    for n in (1, 2, 3, 7, len(cases), len(cases) + 5):
        parts = [shard_cases(cases, Shard(k, n)) for k in range(1, n + 1)]
        indices = sorted(i for part in parts for i, _ in part)
        assert indices == list(range(len(cases)))
        assert all(cases[i] == c for part in parts for i, c in part)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    # every shard of 4 gets browsers' cases and the reference's
    for k in range(1, 5):
        stacks = {s for _, c in shard_cases(cases, Shard(k, 4)) for s in c.stacks}
        assert {"aiortc", "chromium", "firefox"} <= stacks


def test_parse_shard() -> None:
    assert parse_shard("2/4") == Shard(2, 4) and str(parse_shard(" 1 / 1 ")) == "1/1"
    for bad in ("0/4", "5/4", "1/0", "a/b", "1", "", "1/99999", "-1/2"):
        with pytest.raises(ConfigError) as err:
            parse_shard(bad)
        assert err.value.param == "shard"
