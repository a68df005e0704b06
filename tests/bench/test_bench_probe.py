"""natkit.bench.probe: the report's JSON shape (the timed run itself needs the lab: CI)."""

from __future__ import annotations

import json

from natkit.bench.probe import SCHEMA_VERSION, BenchResult, BenchRow


def test_the_json_report_has_a_schema_version_and_its_kind() -> None:
    result = BenchResult(
        rows=[BenchRow("symmetric", "coturn", 0.5, 0.4, "symmetric", True, 1.0, "symmetric"),
              BenchRow("open", "natkit", 0.25, 0.2, "open", False)],
        command="turnutils_natdiscovery -m -f 203.0.113.2",
    )
    doc = json.loads(json.dumps(result.to_json()))
    assert (doc["schema_version"], doc["kind"]) == (SCHEMA_VERSION, "bench-probe")
    assert [r["ratio"] for r in doc["rows"]] == [2.0, None]
    assert doc["ratio"] == 2.0 and doc["all_correct"] is False
