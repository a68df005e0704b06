"""docs/turn-server.md: its custom-authenticator example runs as written, and decides."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

DOC = Path(__file__).resolve().parents[2] / "docs" / "turn-server.md"


def _example() -> str:
    text = DOC.read_text()
    section = text.split("### A custom authenticator", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/turn-server.md lost its example"
    return match.group(1)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_authenticator_example_is_about_ten_lines() -> None:
    code = _example()
    cls = code.split("class AppTokens", 1)[1].split("\n\n\n", 1)[0]
    assert len(cls.strip().splitlines()) <= 12


def test_the_example_runs_and_relays() -> None:
    out = _run(_example())
    assert out.returncode == 0, out.stderr
    assert re.search(r"relayed address: \('127\.0\.0\.1', \d+\)", out.stdout), out.stdout


def test_the_example_authenticator_is_what_decides() -> None:
    code = _example()
    assert code.count('password="t0k3n"') == 1
    out = _run(code.replace('password="t0k3n"', 'password="guess"'))
    assert out.returncode != 0
    assert "401" in out.stderr, out.stderr
