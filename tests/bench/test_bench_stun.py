"""natkit.bench.stun: natkit vs coturn vs the bare C reflector (a short run of the real thing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from natkit.bench.stun import run
from natkit.errors import ConfigError
from tests._clone import build_in_place, source_tree
from tests._native import need

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores (server and generator)"),
]


def _need_tools() -> None:
    need("natkit.bench._stunload")  # the generator and the reflector (required in CI)
    missing = [t for t in ("turnserver", "taskset") if shutil.which(t) is None]
    if missing:
        if os.geteuid() == 0:  # CI runs as root with everything installed
            pytest.fail(f"missing for the STUN benchmark: {missing}")
        pytest.skip(f"missing for the STUN benchmark: {missing}")


def test_bench_cli_json_reports_all_servers_and_the_ratios() -> None:
    _need_tools()
    done = subprocess.run(
        [sys.executable, "-m", "natkit", "bench", "stun", "--seconds", "0.5", "--rounds", "1",
         "--json"],
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["schema_version"], report["kind"]) == (2, "bench-stun")
    n, c, top = report["natkit"], report["coturn"], report["ceiling"]
    assert n["rate"] > 1000 and c["rate"] > 1000 and top["rate"] > 1000
    assert report["ratio"] == pytest.approx(n["rate"] / c["rate"], rel=1e-2)
    assert report["ceiling_ratio"] == pytest.approx(n["rate"] / top["rate"], rel=1e-2)
    assert [r["server"] for r in report["runs"]] == ["natkit", "coturn", "ceiling"]
    for r in report["runs"]:
        assert r["other"] == 0  # every answer was a Binding success to our own request
        assert r["responses"] <= r["sent"]
        assert 0 < r["server_core_busy"] <= 1 and 0 < r["generator_core_busy"] <= 1
    assert n["udp_path"].startswith("C fast path (natkit.server._stunfast")
    assert c["version"] != "unknown"
    assert "round 1/1: ceiling" in done.stderr  # progress goes to stderr with --json


def test_bench_natkit_alone_python_fast_path() -> None:
    _need_tools()
    report = run(seconds=0.5, rounds=1, with_coturn=False, with_ceiling=False, fast_path="python")
    assert report["natkit"]["fast_path"] == "python (NATKIT_NO_CEXT=1)"
    assert report["natkit"]["udp_path"] == "pure Python: NATKIT_NO_CEXT=1"
    assert report["natkit"]["rate"] > 1000
    assert "coturn" not in report and "ratio" not in report and "ceiling" not in report


def test_loadgen_reflector_answers_like_a_stun_server() -> None:
    """The ceiling is a real Binding responder: XOR-MAPPED-ADDRESS is the client's address."""
    import socket

    from natkit.bench import loadgen
    from natkit.server.coturn import free_port, wait_for_binding
    from natkit.stun import Attr, Message, Method, decode

    need("natkit.bench._stunload")
    port = free_port("127.0.0.1")
    proc = subprocess.Popen([*loadgen.command("stun-reflect"), "127.0.0.1", str(port), "30"])
    try:
        assert wait_for_binding(("127.0.0.1", port), 10, proc) == "ok"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
            s.send(Message(Method.BINDING, transaction_id=b"r" * 12).encode())
            answer = decode(s.recv(512))
            assert answer.transaction_id == b"r" * 12
            assert answer.get(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()
    finally:
        proc.kill()
        proc.wait(5)


def test_bench_runs_in_a_clone_with_no_sibling_folders(tmp_path: Path) -> None:
    """A clone alone in its folder (no sibling folder of any name beside it) builds its own
    generator and reflector and runs the benchmark with them."""
    _need_tools()
    clone = source_tree(tmp_path / "alone" / "natkit")
    assert [p.name for p in clone.parent.iterdir()] == ["natkit"]
    build_in_place(clone)
    env = {k: v for k, v in os.environ.items() if k not in ("NATKIT_NO_CEXT", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "natkit", "bench", "stun", "--seconds", "0.5", "--rounds", "1",
         "--no-coturn", "--json"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["natkit"]["rate"] > 1000 and report["ceiling"]["rate"] > 1000
    assert report["natkit"]["udp_path"].startswith("C fast path")
    where = subprocess.run(
        [sys.executable, "-c", "import natkit.bench._stunload as m; print(m.__file__)"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(clone)), where  # the clone's own build ran


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"server_cpu": 0, "generator_cpu": 0}, "generator_cpu", "one core each"),
        ({"server_cpu": 99}, "server_cpu", "this machine has CPUs"),
        ({"seconds": 0.01}, "seconds", "give 0.5-600"),
        ({"fast_path": "rust"}, "fast_path", "auto, c or python"),
        ({"sockets": 0}, "sockets", "1-1024 sockets"),
    ],
)
def test_bench_usage_errors(kwargs: dict[str, object], param: str, message: str) -> None:
    """The library names its parameter (the CLI turns it into the flag), never a flag."""
    with pytest.raises(ConfigError, match=message) as info:
        run(**kwargs)  # type: ignore[arg-type]
    assert info.value.param == param and "--" not in str(info.value)
