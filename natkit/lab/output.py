"""Writing the lab's output files atomically: a reader never sees half a report."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["copy_atomic", "write_atomic"]


def _replace(dest: str | os.PathLike[str], fill: Callable[[Path], object]) -> None:
    target = Path(dest)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fill(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_atomic(dest: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``dest`` through a temporary file in the same directory."""
    _replace(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_atomic(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy the file ``src`` to ``dest`` the same way."""
    _replace(dest, lambda tmp: shutil.copyfile(src, tmp))
