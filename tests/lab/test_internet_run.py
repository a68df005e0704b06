"""The internet topology (configs/lab/internet.toml) run whole: every cell as its behaviours
predict, every probe as its kind says, nothing left behind. Needs root, namespaces, tayga.
(The run, ``natkit lab run configs/lab/internet.toml --stacks aiortc``, is the session's
``internet_run`` from tests/lab/conftest.py, started in the background with the session.)"""

from __future__ import annotations

import os

import pytest

from tests.lab.background import QUEUE_WAIT_S
from tests.lab.conftest import INTERNET_RUN_TIMEOUT, LabRun

pytestmark = [
    pytest.mark.timeout(INTERNET_RUN_TIMEOUT + QUEUE_WAIT_S),
    pytest.mark.skipif(os.geteuid() != 0, reason="the netns lab needs root"),
]


def test_internet_topology_passes_and_leaves_nothing(internet_run: LabRun) -> None:
    data = internet_run.data
    assert data, internet_run.explain()
    bad = [f"{c['id']}: {c['expected']} vs {c['observed']} ({c['error']})" for c in data["cases"] if not c["pass"]]
    bad += [f"probe {p['nat']}: {p['expected']} vs {p['observed']}" for p in data["probes"] if not p["pass"]]
    assert data["pass"] is True and internet_run.proc.returncode == 0, "\n".join(bad[:20] + data["errors"])
    assert data["plan"]["stacks"] == ["aiortc"] and data["plan"]["cases"] == len(data["cases"])
    families = {c["family"] for c in data["cases"]}
    assert families == {"ipv4", "ipv6", "nat64"}
    ev = data["timings"].get("evidence_s", 0.0)
    assert ev <= 0.15 * data["duration_s"], data["timings"]
