"""Build a C file with the system gcc on first use and load it through ctypes.

Used by the optional C helpers (the STUN fast path, and later the TURN data path) and by the
benchmarks' C load generators. The output lands in ``~/.cache/natkit`` (``$XDG_CACHE_HOME``
respected) under a name keyed by the source's hash, so an edited source is rebuilt and
concurrent builders never see a half-written file (each writes a temporary file, then renames).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path


class BuildError(OSError):
    """The compiler rejected the source; ``detail`` is its first error line."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class NoCompilerError(BuildError):
    """Neither gcc nor cc is on PATH."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "natkit"


def compile_c(
    source: Path, stem: str, *, shared: bool, salt: bytes = b"", timeout: float = 120
) -> Path:
    """``source`` compiled with ``gcc -O2`` into the cache (once per source hash + ``salt``):
    a shared library ``STEM-HASH.so`` when ``shared``, else an executable ``STEM-HASH``."""
    tag = hashlib.sha256(source.read_bytes() + salt).hexdigest()[:16]
    target = cache_dir() / (f"{stem}-{tag}.so" if shared else f"{stem}-{tag}")
    if target.exists():
        return target
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise NoCompilerError("no C compiler (gcc) found")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so" if shared else "")
    os.close(fd)
    flags = ["-shared", "-fPIC"] if shared else []
    try:
        done = subprocess.run(
            [gcc, "-O2", *flags, "-o", tmp, str(source)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            lines = done.stderr.strip().splitlines() or ["?"]
            detail = next((line for line in lines if "error:" in line), lines[-1])
            raise BuildError(f"cannot build {source}: {detail}", detail)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: concurrent builders all end with a whole file
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


class CHelper:
    """A C helper library loaded once, on first :meth:`load`, or the reason it is not.

    ``setup`` declares the functions' ctypes signatures (and may raise OSError to refuse a
    library, e.g. on a struct layout mismatch). ``NATKIT_NO_CEXT=1`` and non-Linux platforms
    disable the helper; callers then run their pure-Python path."""

    def __init__(
        self,
        source: Path,
        stem: str,
        setup: Callable[[ctypes.CDLL], None],
        *,
        salt: bytes = b"",
        timeout: float = 120,
    ) -> None:
        self.source, self.stem, self.salt, self.timeout = source, stem, salt, timeout
        self._setup = setup
        self._lock = threading.Lock()
        self._tried = False
        self.lib: ctypes.CDLL | None = None
        self.disabled = False  # by NATKIT_NO_CEXT or the platform, not by a failure
        self.why = ""  # why there is no library: "NATKIT_NO_CEXT set", "not Linux", an error

    def load(self) -> ctypes.CDLL | None:
        with self._lock:
            if self._tried:
                return self.lib
            self._tried = True
            if os.environ.get("NATKIT_NO_CEXT"):
                self.disabled, self.why = True, "NATKIT_NO_CEXT set"
                return None
            if not sys.platform.startswith("linux"):
                self.disabled, self.why = True, "not Linux"
                return None
            try:
                path = compile_c(
                    self.source, self.stem, shared=True, salt=self.salt, timeout=self.timeout
                )
                lib = ctypes.CDLL(str(path))
                self._setup(lib)
            except (OSError, subprocess.SubprocessError) as exc:
                self.why = str(exc)
                return None
            self.lib = lib
            return lib
