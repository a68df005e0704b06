"""natkit lab merge: shards' reports joined into one, checked to be the shards of one plan;
hostile files end in one line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from natkit.errors import ConfigError
from natkit.lab.merge import load_reports, merge

pytestmark = pytest.mark.timeout(60)

NATKIT = [sys.executable, "-m", "natkit"]


def _case(i: int, ok: bool = True) -> dict[str, Any]:
    return {"index": i, "id": f"c{i}", "nats": ["a", "b"], "path": "srflx", "same_lan": False,
            "caller_stack": "aiortc", "callee_stack": "pion" if i % 2 else "aiortc",
            "expected": "connected", "observed": "connected" if ok else "failed", "pass": ok,
            "decided_by": "nats", "route": "direct", "expected_route": "direct"}


def _shard(k: int, n: int, total: int, *, plan: str = "p1", bad: int | None = None) -> dict[str, Any]:
    cases = [_case(i, ok=i != bad) for i in range(total) if i % n == k - 1]
    return {
        "schema_version": 1, "natkit_version": "0", "topology": "t.toml", "turn_engine": "natkit",
        "engine": "netns", "host": f"h{k}", "started_at": "x", "duration_s": 10.0 + k,
        "timings": {"cases_s": float(k)}, "pass": all(c["pass"] for c in cases),
        "lab": {"routers": [{"id": f"r{k}"}, {"id": "r0"}]}, "cases": cases,
        "probes": [{"nat": "a", "type": "x", "expected": {"nat_type": "x"}, "observed": {"nat_type": "x"}, "pass": True},
                   {"nat": f"n{k}", "type": "x", "expected": {"nat_type": "x"}, "observed": {"nat_type": "x"},
                    "pass": k != 2 or bad is None}],
        "errors": [], "plan": {"id": plan, "cases": total, "kind": "default", "stacks": ["aiortc", "pion"], "reference": "aiortc"},
        "shard": {"index": k, "count": n}, "stacks": [{"name": "aiortc"}, {"name": "pion"}],
    }


def test_shards_merge_into_the_plan_order_with_one_verdict() -> None:
    data = merge([(f"s{k}", _shard(k, 3, 10)) for k in (2, 3, 1)])
    assert [c["index"] for c in data["cases"]] == list(range(10))
    assert data["pass"] is True and data["shard"] is None and data["errors"] == []
    assert {p["nat"] for p in data["probes"]} == {"a", "n1", "n2", "n3"}
    assert [r["id"] for r in data["lab"]["routers"]] == ["r0", "r1", "r2", "r3"]
    assert data["duration_s"] == 13.0 and data["timings"]["cases_s"] == 3.0
    assert [m["shard"]["index"] for m in data["merged"]] == [1, 2, 3]
    assert {(r["caller_stack"], r["callee_stack"]): r["cases"] for r in data["stack_pairs"]} == {
        ("aiortc", "aiortc"): 5, ("aiortc", "pion"): 5}


def test_a_failing_case_or_probe_fails_the_merge() -> None:
    data = merge([(f"s{k}", _shard(k, 2, 6, bad=3)) for k in (1, 2)])
    assert data["pass"] is False
    assert next(p for p in data["probes"] if p["nat"] == "n2")["pass"] is False


def test_shards_of_another_plan_missing_or_twice_are_refused() -> None:
    with pytest.raises(ConfigError, match="another plan"):
        merge([("a", _shard(1, 2, 4)), ("b", _shard(2, 2, 4, plan="p2"))])
    with pytest.raises(ConfigError, match="shard\\(s\\) 2 of 3 missing"):
        merge([("a", _shard(1, 3, 6)), ("b", _shard(3, 3, 6))])
    with pytest.raises(ConfigError, match="again"):
        merge([("a", _shard(1, 2, 4)), ("b", _shard(1, 2, 4))])
    with pytest.raises(ConfigError, match="shard of 3"):
        merge([("a", _shard(1, 2, 4)), ("b", _shard(2, 3, 4))])


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[1, 2]", b"{}", b'{"schema_version": 9}', b"[" * 100000 + b"]" * 100000,
    json.dumps({"schema_version": 1, "cases": [], "probes": [], "errors": []}).encode(),
    json.dumps({**_shard(1, 1, 2), "cases": [{"index": "x"}]}).encode(),
    json.dumps({**_shard(1, 1, 2), "cases": "many"}).encode(),
    json.dumps({**_shard(1, 1, 2), "shard": {"index": 3, "count": 2}}).encode(),
    json.dumps({**_shard(1, 1, 2), "probes": [7]}).encode(),
])
def test_hostile_reports_end_in_one_line(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "r.json"
    f.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        merge(load_reports([f]))
    assert str(f) in str(err.value) and "\n" not in str(err.value)
    proc = subprocess.run([*NATKIT, "lab", "merge", str(f)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_the_cli_writes_json_and_html_and_never_over_an_input(tmp_path: Path) -> None:
    files = []
    for k in (1, 2):
        f = tmp_path / f"s{k}.json"
        f.write_text(json.dumps(_shard(k, 2, 6)))
        files.append(str(f))
    out, page = tmp_path / "all.json", tmp_path / "all.html"
    proc = subprocess.run([*NATKIT, "lab", "merge", *files, "--json", str(out), "--html", str(page)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert len(data["cases"]) == 6 and data["pass"] and "natkit" in page.read_text()
    assert "stacks (rows" in proc.stdout
    proc = subprocess.run([*NATKIT, "lab", "merge", *files, "--json", files[0]], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and json.loads(Path(files[0]).read_text())["shard"]["index"] == 1


@pytest.mark.timeout(60)
def test_a_device_or_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # nobody writes: reading it would block forever
    for path, says in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"),
                       (str(tmp_path), "not a regular file")):
        with pytest.raises(ConfigError) as err:
            load_reports([path])
        assert says in str(err.value) and "not JSON" not in str(err.value), err.value
    proc = subprocess.run([*NATKIT, "lab", "merge", "/dev/zero"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "/dev/zero: not a regular file" in proc.stderr
