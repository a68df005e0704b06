"""Fixtures the lab's tests share: the default `natkit lab run`, run once per session for every
test that only reads what it reports (its JSON, HTML page and text)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NATKIT = [sys.executable, "-m", "natkit"]
# What the whole default run may take on a loaded 2-core box (it takes about a minute quiet).
DEFAULT_RUN_TIMEOUT = 360
# A test that reads the shared run may be the one that starts it: its own budget plus the run's.
DEFAULT_RUN_TEST_TIMEOUT = DEFAULT_RUN_TIMEOUT + 60


@dataclass(frozen=True)
class LabRun:
    """One `natkit lab run` as a subprocess: its exit, its text, its reports, how long it took."""

    argv: list[str]
    proc: subprocess.CompletedProcess[str]
    data: dict[str, Any]
    json_path: Path
    html_path: Path
    took: float

    def explain(self) -> str:
        """The tail of its output, for an assertion's message."""
        return self.proc.stdout[-3000:] + self.proc.stderr[-2000:]


def lab_root_reason() -> str | None:
    """Why this machine cannot run a netns lab with a capture (None: it can)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("dumpcap") is None:
        return "needs root on Linux (namespaces, nftables) and dumpcap"
    return None


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    """`natkit lab run --json FILE --html FILE` with nothing else: the default topology, every
    built-in stack, the default selection of cases, the packet capture on."""
    why = lab_root_reason()
    if why is not None:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("default-run")
    json_path, html_path = out / "lab.json", out / "lab.html"
    argv = [*NATKIT, "lab", "run", "--json", str(json_path), "--html", str(html_path)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=DEFAULT_RUN_TIMEOUT)
    took = time.monotonic() - t0
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    return LabRun(argv, proc, data, json_path, html_path, took)
