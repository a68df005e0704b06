"""Building and finding the lab's compiled peer programs (the pion peer).

The pion peer (``programs/pion_peer.go``) is compiled once, at set-up (``.ci/bootstrap`` runs
``natkit lab build-stacks``), from Debian's Go sources (``golang-go``,
``golang-github-pion-webrtc.v3-dev``) with no network: GOPATH mode, where each Debian source
directory whose ``go.mod`` names a ``/vN`` module path is linked under that path. The binary is
installed into :func:`libexec_dir` (``<prefix>/libexec/natkit/``, owned by whoever installed
natkit) next to a stamp of the source it was built from; nothing is ever compiled at run time,
and :func:`find_program` refuses a missing, stale or writable-by-others binary with the command
that builds it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from natkit.errors import ConfigError, PrerequisiteError

__all__ = [
    "BUILD_COMMAND",
    "PION_PROGRAM",
    "BuiltProgram",
    "build_pion",
    "find_program",
    "libexec_dir",
    "source_digest",
]

PROGRAMS = Path(__file__).resolve().parent / "programs"
PION_SOURCE = PROGRAMS / "pion_peer.go"
PION_PROGRAM = "natkit-pion-peer"
GOCODE = Path("/usr/share/gocode/src")
PION_PACKAGE = "golang-github-pion-webrtc.v3-dev"
BUILD_COMMAND = "natkit lab build-stacks"
RECIPE = "1"  # bump when the way the binary is built changes
BUILD_TIMEOUT_S = 600.0


def libexec_dir(prefix: str | os.PathLike[str] | None = None) -> Path:
    """Where natkit's compiled peers live: ``<prefix>/libexec/natkit`` (prefix: the venv)."""
    return Path(prefix if prefix is not None else sys.prefix) / "libexec" / "natkit"


def source_digest(source: Path = PION_SOURCE) -> str:
    return hashlib.sha256(RECIPE.encode() + b"\0" + source.read_bytes()).hexdigest()


@dataclass(frozen=True)
class BuiltProgram:
    path: Path
    version: str
    seconds: float


def _stamp(binary: Path) -> Path:
    return binary.with_name(binary.name + ".source-sha256")


def find_program(name: str = PION_PROGRAM, source: Path = PION_SOURCE, *, prefix: str | None = None) -> Path:
    """The installed binary ``name`` built from ``source``: in :func:`libexec_dir`, else on
    PATH. PrerequisiteError with the command that (re)builds it when it is missing, stale
    (built from another source) or writable by others."""
    candidate = libexec_dir(prefix) / name
    on_path = shutil.which(name)
    path = candidate if candidate.is_file() else Path(on_path) if on_path else None
    if path is None:
        raise PrerequisiteError(
            f"the pion stack needs its peer program, built once from Debian's Go sources: "
            f"apt-get install golang-go {PION_PACKAGE} && {BUILD_COMMAND}"
        )
    st = path.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_uid not in (0, os.geteuid()):
        raise PrerequisiteError(f"{path} is writable by others or owned by another user; rebuild it: {BUILD_COMMAND}")
    if not os.access(path, os.X_OK):
        raise PrerequisiteError(f"{path} is not executable; rebuild it: {BUILD_COMMAND}")
    stamp = _stamp(path)
    if stamp.exists() or path == candidate:
        try:
            built_from = stamp.read_text().strip()
        except OSError:
            built_from = ""
        if built_from != source_digest(source):
            raise PrerequisiteError(f"{path} was built from another version of {source.name}; rebuild it: {BUILD_COMMAND}")
    return path


def _package_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"(?:\d+:)?([0-9][0-9A-Za-z.+~]*?)(?:-[^-]*)?$", out.stdout.strip())
    return m.group(1) if out.returncode == 0 and m else None


def link_major_versions(gopath_src: Path, gocode: Path = GOCODE) -> list[str]:
    """Link every Debian source directory whose module path ends in ``/vN`` (and has no such
    subdirectory) under that path in ``gopath_src``; the module paths linked."""
    linked = []
    for gomod in sorted(gocode.glob("**/go.mod")):
        try:
            head = gomod.read_text(errors="replace")
        except OSError:
            continue
        m = re.search(r'^module\s+"?([^\s"]+)"?', head, re.M)
        if not m or not re.search(r"/v[2-9][0-9]*$", m.group(1)):
            continue
        module = m.group(1)
        if (gocode / module).exists():
            continue
        link = gopath_src / module
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(gomod.parent, target_is_directory=True)
            linked.append(module)
    return linked


def build_pion(
    prefix: str | os.PathLike[str] | None = None,
    *,
    go: str = "go",
    gocode: Path = GOCODE,
    source: Path = PION_SOURCE,
    timeout_s: float = BUILD_TIMEOUT_S,
) -> BuiltProgram:
    """Compile the pion peer offline and install it into :func:`libexec_dir` (``prefix``)."""
    import time

    exe = shutil.which(go)
    if exe is None:
        raise PrerequisiteError("building the pion peer needs Go: apt-get install golang-go")
    if not (gocode / "github.com/pion/webrtc").is_dir():
        raise PrerequisiteError(f"building the pion peer needs pion's sources: apt-get install {PION_PACKAGE}")
    version = _package_version(PION_PACKAGE)
    pion = f"v{version}" if version else "v3"
    dest = libexec_dir(prefix)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if not os.access(dest, os.W_OK):
            raise PermissionError(f"{dest} is not writable")
    except OSError as exc:
        raise ConfigError(f"cannot install into {dest}: {exc.strerror or exc}", param="prefix") from None
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="natkit-build-") as tmp:
        root = Path(tmp)
        src = root / "src"
        link_major_versions(src, gocode)
        main = src / PION_PROGRAM
        main.mkdir(parents=True)
        shutil.copyfile(source, main / "main.go")
        out = root / PION_PROGRAM
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "GO111MODULE": "off",
            "GOPATH": f"{root}{os.pathsep}{gocode.parent}",
            "GOCACHE": str(root / "cache"),
            "GOFLAGS": "",
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
        }
        argv = [exe, "build", "-trimpath", "-ldflags", f"-s -w -X main.pionVersion={pion}", "-o", str(out), "."]
        try:
            proc = subprocess.run(argv, cwd=main, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PrerequisiteError(f"building the pion peer took longer than {timeout_s:g} s") from None
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise PrerequisiteError(f"building the pion peer failed (go build, exit {proc.returncode}):\n{tail}")
        target = dest / PION_PROGRAM
        staged = dest / f".{PION_PROGRAM}.new"
        shutil.copyfile(out, staged)
        staged.chmod(0o755)
        os.replace(staged, target)
        stamp = _stamp(target)
        stamp.write_text(source_digest(source) + "\n")
        stamp.chmod(0o644)
    return BuiltProgram(target, f"pion/webrtc {pion}", round(time.monotonic() - t0, 1))
