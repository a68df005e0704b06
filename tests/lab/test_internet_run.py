"""The internet topology (configs/lab/internet.toml) run whole: every cell as its behaviours
predict, every probe as its kind says, nothing left behind. Needs root, namespaces, tayga."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INTERNET = Path(__file__).parents[2] / "configs" / "lab" / "internet.toml"

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(os.geteuid() != 0, reason="the netns lab needs root"),
]


def test_internet_topology_passes_and_leaves_nothing() -> None:
    from natkit.lab.runner import run
    from natkit.lab.topology import load

    result = run(load(INTERNET))
    bad = [f"{c.case.id}: {c.expected} vs {c.observed} ({c.error})" for c in result.cases if not c.passed]
    bad += [f"probe {p.nat}: {p.expected} vs {p.observed}" for p in result.probes if not p.passed]
    assert result.passed, "\n".join(bad[:20] + result.errors)
    families = {c.case.family for c in result.cases}
    assert families == {"ipv4", "ipv6", "nat64"}
    ev = result.timings.get("evidence_s", 0.0)
    assert ev <= 0.15 * result.duration_s, result.timings
