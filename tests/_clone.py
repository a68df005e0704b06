"""A copy of the project as a fresh clone holds it, for tests that must not see this tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_tree(dest: Path) -> Path:
    """The project's sources copied to ``dest``: no venv, no build output, no .so files."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".*_cache",
        ".hypothesis",
    )  # fmt: skip
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def build_in_place(tree: Path) -> None:
    """Build the extension modules next to their sources, as an editable install does
    (offline: this interpreter's setuptools)."""
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tree, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    if done.returncode:
        raise AssertionError(f"building the extensions failed:\n{done.stderr[-2000:]}")
