from __future__ import annotations

from tests.stun import bench_codec


def test_microbenchmark_runs_and_reports_every_case() -> None:
    results = bench_codec.run(number=200)
    assert set(results) == set(bench_codec._cases())
    assert all(us > 0 for us in results.values())
