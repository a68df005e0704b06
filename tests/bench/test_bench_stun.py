"""natkit.bench.stun: the natkit-vs-coturn Binding benchmark (a short run of the real thing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from natkit.bench.stun import DEFAULT_GENERATOR, run
from natkit.errors import UsageError

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores (server and generator)"),
]


def _need_tools() -> None:
    missing = [t for t in ("turnserver", "taskset", "gcc") if shutil.which(t) is None]
    if not DEFAULT_GENERATOR.is_file():
        missing.append(str(DEFAULT_GENERATOR))
    if missing:
        if os.geteuid() == 0:  # CI runs as root with everything installed
            pytest.fail(f"missing for the STUN benchmark: {missing}")
        pytest.skip(f"missing for the STUN benchmark: {missing}")


def test_bench_cli_json_reports_both_servers_and_the_ratio() -> None:
    _need_tools()
    done = subprocess.run(
        [sys.executable, "-m", "natkit", "bench", "stun", "--seconds", "0.5", "--rounds", "1",
         "--json"],
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    n, c = report["natkit"], report["coturn"]
    assert n["rate"] > 1000 and c["rate"] > 1000
    assert report["ratio"] == pytest.approx(n["rate"] / c["rate"], rel=1e-2)
    assert [r["server"] for r in report["runs"]] == ["natkit", "coturn"]
    for r in report["runs"]:
        assert r["other"] == 0  # every answer was a Binding success
        assert 0 < r["server_core_busy"] <= 1 and 0 < r["generator_core_busy"] <= 1
    assert c["version"] != "unknown"
    assert "round 1/1: coturn" in done.stderr  # progress goes to stderr with --json


def test_bench_natkit_alone_python_fast_path() -> None:
    _need_tools()
    report = run(seconds=0.5, rounds=1, with_coturn=False, fast_path="python")
    assert report["natkit"]["fast_path"] == "python"
    assert report["natkit"]["rate"] > 1000
    assert "coturn" not in report and "ratio" not in report


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server_cpu": 0, "generator_cpu": 0}, "must differ"),
        ({"server_cpu": 99}, "this machine has CPUs"),
        ({"seconds": 0.01}, "bad --seconds"),
        ({"fast_path": "rust"}, "bad --fast-path"),
        ({"sockets": 0}, "bad --sockets"),
    ],
)
def test_bench_usage_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        run(**kwargs)  # type: ignore[arg-type]
