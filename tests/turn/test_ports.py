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


def test_a_nearly_full_range_finds_its_free_ports_without_walking_it() -> None:
    """18,000 of 20,000 ports taken (the bench's allocations): a candidate comes from a few
    random probes, not a walk over the taken ports; the last free port is still found."""
    import time

    pool = PortPool(10000, 29999, seed=3)
    for port in range(10000, 28000):
        pool.take(port)
    t0 = time.perf_counter()
    for _ in range(2000):
        port = next(pool.candidates())
        assert 28000 <= port <= 29999
    assert time.perf_counter() - t0 < 2.0  # (a walk per call: 3.7 s on a quiet machine)
    got = list(pool.candidates(limit=3000))
    assert sorted(got) == list(range(28000, 30000))  # every free port once
    for port in range(28000, 29999):
        pool.take(port)
    assert list(pool.candidates()) == [29999]
    assert list(pool.candidates(even=True)) == []
