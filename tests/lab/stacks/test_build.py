"""Finding and building the compiled peers: a missing, stale or unsafe binary is refused with
the command that builds it; Debian's /vN Go sources are linked under their module paths; a
prefix that cannot be written is a one-line error before anything compiles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab.stacks import build
from natkit.lab.stacks.build import (
    BUILD_COMMAND,
    find_program,
    libexec_dir,
    link_major_versions,
    source_digest,
)


def _install(prefix: Path, source: Path, *, stamp: str | None = None, mode: int = 0o755) -> Path:
    target = libexec_dir(prefix) / "natkit-test-peer"
    target.parent.mkdir(parents=True)
    target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(mode)
    (target.parent / "natkit-test-peer.source-sha256").write_text((stamp or source_digest(source)) + "\n")
    return target


def test_a_fresh_binary_is_found(tmp_path: Path) -> None:
    source = tmp_path / "peer.go"
    source.write_text("package main\n")
    target = _install(tmp_path / "venv", source)
    assert find_program("natkit-test-peer", source, prefix=str(tmp_path / "venv")) == target


def test_missing_stale_and_unsafe_binaries_name_the_build_command(tmp_path: Path) -> None:
    source = tmp_path / "peer.go"
    source.write_text("package main\n")
    with pytest.raises(PrerequisiteError, match=BUILD_COMMAND) as err:
        find_program("natkit-test-peer", source, prefix=str(tmp_path / "none"))
    assert "apt-get install golang-go golang-github-pion-webrtc.v3-dev" in str(err.value)
    _install(tmp_path / "stale", source, stamp="0" * 64)
    with pytest.raises(PrerequisiteError, match=r"built from another version of peer\.go; rebuild it: natkit lab build-stacks"):
        find_program("natkit-test-peer", source, prefix=str(tmp_path / "stale"))
    _install(tmp_path / "unsafe", source, mode=0o777)
    with pytest.raises(PrerequisiteError, match="writable by others"):
        find_program("natkit-test-peer", source, prefix=str(tmp_path / "unsafe"))


def test_debian_major_version_sources_are_linked_under_their_module_paths(tmp_path: Path) -> None:
    gocode = tmp_path / "gocode"
    for path, module in [("github.com/a/lib", "github.com/a/lib/v3"), ("github.com/a/old", "github.com/a/old"),
                         ("github.com/a/has/v2", "github.com/a/has/v2")]:
        (gocode / path).mkdir(parents=True)
        (gocode / path / "go.mod").write_text(f"module {module}\n\ngo 1.13\n")
    src = tmp_path / "src"
    assert link_major_versions(src, gocode) == ["github.com/a/lib/v3"]
    assert (src / "github.com/a/lib/v3").resolve() == (gocode / "github.com/a/lib").resolve()


def test_a_prefix_that_cannot_be_written_fails_before_compiling(tmp_path: Path) -> None:
    if not Path(build.GOCODE, "github.com/pion/webrtc").is_dir():
        pytest.skip("needs golang-github-pion-webrtc.v3-dev (CI's bootstrap installs it)")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot install into") as err:
        build.build_pion(blocker)
    assert err.value.param == "prefix"


def test_the_cli_says_so_in_one_line(tmp_path: Path) -> None:
    if not Path(build.GOCODE, "github.com/pion/webrtc").is_dir():
        pytest.skip("needs golang-github-pion-webrtc.v3-dev (CI's bootstrap installs it)")
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "natkit", "lab", "build-stacks", "--prefix", str(blocker)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--prefix: cannot install into" in proc.stderr


def test_the_installed_pion_peer_is_current() -> None:
    """bootstrap builds it; a stale one would fail every pion case."""
    if os.geteuid() != 0:
        pytest.skip("CI (root) builds the pion peer in its bootstrap")
    path = find_program()
    out = subprocess.run([str(path), "-version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout.startswith("pion/webrtc v3.")
