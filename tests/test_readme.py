"""The README's examples run as written: every Python block that needs only loopback, and the
shell blocks marked ``sh loopback``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str, tag: str | None = None) -> list[tuple[int, str]]:
    out = []
    for match in BLOCK.finditer(README):
        lang, info, body = match.group(1), match.group(2).split(), match.group(3)
        if lang != language or (tag is not None and tag not in info):
            continue
        out.append((README.count("\n", 0, match.start()) + 1, body))
    return out


PYTHON = [(line, body) for line, body in _blocks("python")
          if not body.lstrip().startswith("# needs root")]
SHELL = _blocks("sh", "loopback")


def test_readme_has_runnable_examples() -> None:
    assert len(PYTHON) >= 2 and SHELL


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"line{n}" for n, _ in PYTHON])
def test_python_block(line: int, code: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                         text=True, timeout=100)
    assert out.returncode == 0, f"README.md:{line}:\n{out.stdout}\n{out.stderr}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("line", "code"), SHELL, ids=[f"line{n}" for n, _ in SHELL])
def test_shell_block(line: int, code: str, tmp_path: Path) -> None:
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + code
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=100, env=env)
    assert out.returncode == 0, f"README.md:{line}:\n{out.stdout}\n{out.stderr}"
