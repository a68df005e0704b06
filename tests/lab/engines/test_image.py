"""The lab image's tag: natkit's version and a hash of what goes into the image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from natkit import __version__
from natkit.lab.engines import image
from natkit.lab.engines.image import DOCKERFILE, image_tag, source_root

ROOT = Path(__file__).resolve().parents[3]


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for rel in ("pyproject.toml", "README.md", DOCKERFILE):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, root / rel)
    (root / "natkit/lab").mkdir(parents=True)
    (root / "natkit/__init__.py").write_text("x = 1\n")
    (root / "natkit/lab/default.toml").write_text("[lab]\n")
    return root


def test_the_tag_follows_the_inputs_and_nothing_else(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    tag = image_tag(root, "natkit-base:b", "sha256:1")
    assert tag.startswith(f"natkit-lab:{__version__}-") and len(tag.split("-")[-1]) == 12
    assert image_tag(root, "natkit-base:b", "sha256:1") == tag  # a second run finds it
    # caches and build output are not inputs
    (root / "natkit/__pycache__").mkdir()
    (root / "natkit/__pycache__/x.pyc").write_bytes(b"\0")
    (root / "natkit/_fast.so").write_bytes(b"\0")
    (root / "natkit.egg-info").mkdir()
    assert image_tag(root, "natkit-base:b", "sha256:1") == tag
    # the package, the Dockerfile and the base are
    (root / "natkit/lab/default.toml").write_text("[lab]\nname = 'x'\n")
    changed = image_tag(root, "natkit-base:b", "sha256:1")
    assert changed != tag
    assert image_tag(root, "natkit-base:b", "sha256:2") != changed
    (root / DOCKERFILE).write_text((root / DOCKERFILE).read_text() + "\n# more\n")
    assert image_tag(root, "natkit-base:b", "sha256:2") not in (tag, changed)


def test_the_files_of_the_wheel_are_what_is_copied() -> None:
    files = {p.as_posix() for p in image._files(ROOT)}
    assert {"pyproject.toml", "README.md", "natkit/__init__.py", "natkit/lab/default.toml"} <= files
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".so"))]
    assert not [f for f in files if f.startswith((".venv", ".git", "tests/"))]


def test_the_source_root_is_this_clone() -> None:
    assert source_root() == ROOT


def test_the_debian_mirror_is_the_hosts_or_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATKIT_DEBIAN_MIRROR", "http://mirror.lab/debian")
    assert image.debian_mirror() == "http://mirror.lab/debian"
    monkeypatch.delenv("NATKIT_DEBIAN_MIRROR")
    assert image.debian_mirror().startswith(("http://", "https://"))


def test_the_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("**")] == "**"  # everything out, then only what the install needs
    kept = {ln[1:] for ln in lines if ln.startswith("!")}
    assert kept == {"pyproject.toml", "setup.py", "README.md", "natkit", "configs"}
