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
    edited = image_tag(root, "natkit-base:b", "sha256:2")
    assert edited not in (tag, changed)
    # and so are the compiled peers it carries: another build of the pion peer, another image
    prog = tmp_path / "natkit-pion-peer"
    prog.write_bytes(b"\x7fELF one")
    with_peer = image_tag(root, "natkit-base:b", "sha256:2", [prog])
    assert with_peer != edited
    prog.write_bytes(b"\x7fELF two")
    assert image_tag(root, "natkit-base:b", "sha256:2", [prog]) not in (with_peer, edited)


def test_the_image_carries_the_hosts_current_compiled_peers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from natkit.errors import PrerequisiteError
    from natkit.lab.stacks import build

    def missing(*args: object, **kw: object) -> Path:
        raise PrerequisiteError("not built")

    monkeypatch.setattr(build, "find_program", missing)
    assert image.host_programs() == []  # an image without them: the pion stack is left out
    monkeypatch.setattr(build, "find_program", lambda *a, **kw: tmp_path / "natkit-pion-peer")
    assert image.host_programs() == [tmp_path / "natkit-pion-peer"]


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


def test_the_stacks_packages_make_one_flavour_of_their_own(tmp_path: Path) -> None:
    from natkit.lab.stacks.libnice import PACKAGES

    assert image.stack_packages(["aiortc", "pion", "mine"]) == ((), ())  # the plain image
    one = image.stack_packages(["aiortc", "libnice"])
    # any of them: all of them (one cached flavour serves every run), whatever the order
    assert one == image.stack_packages(["firefox", "chromium"]) == image.stack_packages(["libnice", "firefox", "chromium"])
    assert one[0] == ("chromium", "firefox", "libnice")
    assert {"chromium", "firefox-esr", *PACKAGES.split()} == set(one[1]) and list(one[1]) == sorted(one[1])
    # the libnice stack's own list (what it tells a user to install) is what the image gets
    assert set(image.STACK_PACKAGES["libnice"]) == set(PACKAGES.split())
    root = _tree(tmp_path)
    plain = image_tag(root, "python:3.11-slim-bookworm", "sha256:1")
    assert image_tag(root, "python:3.11-slim-bookworm", "sha256:1", packages=one[1]) != plain
    # natkit's own base: a flavour with the packages is another base (mmdebstrap includes them)
    mirrors = ["http://mirror.lab/debian"]
    assert image._base_tag(mirrors) != image._base_tag(mirrors, one[1])
    assert image._base_tag(mirrors, one[1]) != image._base_tag([*mirrors, "deb http://x/debian-security bookworm-security main"], one[1])


def test_the_flavour_with_stacks_takes_the_security_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATKIT_DEBIAN_MIRROR", "http://mirror.lab/debian")
    monkeypatch.setenv("NATKIT_DEBIAN_SECURITY", "http://mirror.lab/debian-security")
    assert image._mirrors(()) == ["http://mirror.lab/debian"]  # the plain base: as it was
    assert image._mirrors(("chromium",)) == ["http://mirror.lab/debian",
                                             "deb http://mirror.lab/debian-security bookworm-security main"]
    monkeypatch.setenv("NATKIT_DEBIAN_SECURITY", "")
    assert image._mirrors(("chromium",)) == ["http://mirror.lab/debian"]
