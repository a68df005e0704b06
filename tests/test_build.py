"""How natkit's C fast paths are built and chosen: extension modules built at install time
(setup.py), never compiled or loaded from a cache directory at run time, with the pure-Python
paths when they are missing or NATKIT_NO_CEXT is set, and the servers saying which one runs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.server._fastpath import EXTENSION as STUN_EXTENSION
from natkit.server._turn_fast import EXTENSION as TURN_EXTENSION
from tests._clone import ROOT, source_tree
from tests._native import need

EXTENSIONS = (
    "natkit/server/_stunfast",
    "natkit/server/_turnfast",
    "natkit/bench/_turnload",
    "natkit/bench/_stunload",
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C paths are Linux code"),
]


def _serve(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 30
) -> str:
    """Start ``natkit serve ...``, read its output up to the "Ctrl-C" line, stop it (SIGTERM);
    returns everything it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "natkit", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            # the last start-up line: "Ctrl-C ..." in text mode, the JSON document with --json
            if "Ctrl-C" in line or line.startswith("{") or len(lines) > 200:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    return "".join(lines) + (out or "")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NATKIT_NO_CEXT"}
    env.update(extra)
    return env


STUN = ["stun", "--listen", "127.0.0.1:0", "--no-tcp"]
TURN = ["turn", "--listen", "127.0.0.1:0", "--relay-ip", "127.0.0.1", "--user", "u:p",
        "--realm", "r", "--no-tcp"]  # fmt: skip


# -- a planted library in HOME is never loaded -----------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(HOME, XDG_CACHE_HOME, marker): both cache directories hold a shared library, under
    every name natkit ever used there, whose constructor creates ``marker`` when loaded."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc is missing in CI (.ci/bootstrap installs it)")
        pytest.skip("no C compiler to build the planted library")
    marker = tmp_path / "LOADED"
    src = tmp_path / "planted.c"
    src.write_text(
        "#include <fcntl.h>\n#include <unistd.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f'    int fd = open("{marker}", O_CREAT | O_WRONLY, 0644);\n'
        "    if (fd >= 0) close(fd);\n}\n"
    )
    lib = tmp_path / "planted.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, timeout=60)
    # Names the old run-time builder loaded (STEM-<sha256(source + salt)[:16]>.so, salt = the
    # platform for the STUN helper) and any a future one might try.
    names = {"stunfast.so", "turnfast.so", "_stunfast.abi3.so", "_turnfast.abi3.so"}
    for stem, source, salt in (
        ("stunfast", ROOT / "natkit/server/_stunfast.c", sysconfig.get_platform().encode()),
        ("turnfast", ROOT / "natkit/server/_turnfast.c", b""),
    ):
        if source.is_file():
            names.add(f"{stem}-{hashlib.sha256(source.read_bytes() + salt).hexdigest()[:16]}.so")
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    for cache in (home / ".cache" / "natkit", xdg / "natkit", home):
        cache.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(lib, cache / name)
    # The control: the library does write the marker when something loads it.
    probe = subprocess.run(
        [sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(lib)!r})"], timeout=30
    )
    assert probe.returncode == 0 and marker.exists()
    marker.unlink()
    yield home, xdg, marker


@pytest.mark.parametrize("server", [STUN, TURN], ids=["serve-stun", "serve-turn"])
def test_a_library_planted_in_home_is_never_loaded(
    planted: tuple[Path, Path, Path], server: list[str]
) -> None:
    home, xdg, marker = planted
    out = _serve(server, _env(HOME=str(home), XDG_CACHE_HOME=str(xdg)))
    assert "Ctrl-C" in out, out
    assert not marker.exists(), f"a library from {home} was loaded:\n{out}"
    # nothing was written there either (no cache of built helpers)
    assert sorted(p.name for p in (xdg / "natkit").iterdir()) == sorted(
        p.name for p in (home / ".cache" / "natkit").iterdir()
    )


def test_no_source_reads_the_cache_directory_or_a_compiler() -> None:
    """No module of natkit runs a compiler, loads a library file through ctypes (the lab's
    ``ctypes.CDLL(None)``, libc itself for prctl/setns, is no file) or reads the user's cache
    directory (setting XDG_CACHE_HOME for a child, as the browser launcher does, is fine)."""
    banned = re.compile(
        r"CDLL\((?!None\b)|(environ\.get\(|environ\[|getenv\()[\"']XDG_CACHE_HOME"
        r"|\.cache/natkit|which\([\"'](gcc|cc)[\"']\)|\[[\"'](gcc|cc)[\"']"
    )
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "natkit").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if banned.search(line)
    ]
    assert hits == []


def test_nothing_reads_outside_the_repository() -> None:
    """natkit/, tests/ and .ci/ never reach into a sibling folder of the clone."""
    sibling = re.compile(re.escape("..") + r"[/\\]" + "shared" + "|" + r"parent\s*/\s*['\"]shared")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in ("natkit", "tests", ".ci")
        for path in sorted((ROOT / top).rglob("*"))
        if path.is_file() and path.suffix in ("", ".py", ".c", ".h", ".toml", ".sh", ".md")
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if sibling.search(line)
    ]
    assert hits == []


# -- which path runs, and the start line saying so -------------------------------------------


@pytest.mark.parametrize(
    ("server", "label", "extension"),
    [(STUN, "UDP path", STUN_EXTENSION), (TURN, "data path", TURN_EXTENSION)],
    ids=["serve-stun", "serve-turn"],
)
def test_the_start_line_names_the_path_and_why(
    server: list[str], label: str, extension: str
) -> None:
    need(extension)
    c = _serve(server, _env())
    assert re.search(rf"{label}: C fast path \({re.escape(extension)}, ", c), c
    py = _serve(server, _env(NATKIT_NO_CEXT="1"))
    assert f"{label}: pure Python: NATKIT_NO_CEXT=1\n" in py, py


def test_no_cext_serves_in_python_and_json_says_so() -> None:
    out = _serve([*STUN, "--json"], _env(NATKIT_NO_CEXT="1"))
    ready = json.loads(out.splitlines()[0])
    assert ready["fast_path"] == "python (NATKIT_NO_CEXT=1)"


def test_without_the_extensions_the_python_path_serves(tmp_path: Path) -> None:
    """A natkit whose extension modules were not built (a pure-Python install) still serves,
    on its Python paths, and says why."""
    tree = source_tree(tmp_path / "natkit-src")
    env = _env(PYTHONPATH=str(tree))
    out = _serve(STUN, env, cwd=tree)
    assert "UDP path: pure Python: extension not built\n" in out, out
    out = _serve(TURN, env, cwd=tree)
    assert "data path: pure Python: extension not built\n" in out, out


# -- the wheel --------------------------------------------------------------------------------


def test_the_wheel_carries_the_extensions_and_a_platform_tag(tmp_path: Path) -> None:
    """`pip wheel .` (offline: the venv's setuptools) builds every extension module into a
    cp311-abi3 wheel for this platform, not a pure-Python one."""
    tree = source_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    env = _env(PIP_NO_INDEX="1")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(dist)],
        cwd=tree, env=env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = dist.glob("natkit-*.whl")
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name.endswith(f"-cp311-abi3-{platform}.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    for ext in EXTENSIONS:
        assert f"{ext}.abi3.so" in names, sorted(n for n in names if n.endswith(".so"))
    assert "Root-Is-Purelib: false" in meta
