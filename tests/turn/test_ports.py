from __future__ import annotations

import pytest

from natkit.turn.ports import PortPool


def test_candidates_in_range_even_and_pairs() -> None:
    pool = PortPool(50000, 50009, seed=1)
    assert set(pool.candidates()) == set(range(50000, 50010))
    assert all(p % 2 == 0 for p in pool.candidates(even=True))
    pool.take(50003)
    pairs = list(pool.candidates(even=True, pair=True))
    assert 50002 not in pairs and 50008 in pairs
    assert 50003 not in set(pool.candidates())
    assert pool.free == 9
    pool.release(50003)
    assert pool.free == 10


def test_ephemeral_and_limits() -> None:
    assert PortPool().ephemeral and list(PortPool().candidates()) == [] and PortPool().free is None
    assert len(list(PortPool(1024, 65535).candidates(limit=10))) == 10
    with pytest.raises(ValueError):
        PortPool(10, 5)
