"""The lab's container image, built offline and reused.

One image runs every container of the Compose lab (:data:`DOCKERFILE`, ``FROM`` a base given
as a build argument). :func:`ensure_image` makes it from nothing without a registry or PyPI
inside the build:

1. **base**: any local image (``python:3.11-slim-bookworm`` for users with a registry), or
   ``debian`` (the default unless that python image is already there): a Debian bookworm root
   made on the host by ``mmdebstrap`` from the host's own Debian mirror, with Python 3.11,
   nftables, iproute2 and coturn, loaded by ``docker import`` (:func:`ensure_debian_base`);
2. **wheelhouse**: natkit's own wheel, built on the host from a copy of the source tree (so
   whatever natkit builds at install time, C extensions included, is built here with the
   host's compiler), and every dependency's wheel (``pip wheel``, with the host's pip and its
   configured index);
3. **compiled peers**: the lab's compiled peer programs that ``natkit lab build-stacks``
   installed on the host (the pion peer: a static Go binary, with the stamp of the source it
   was built from), copied into the image's ``<venv>/libexec/natkit`` (:func:`host_programs`);
   a host without them gives an image without them, and the pion stack is then left out of
   Compose runs, with that command as the reason;
4. **stack packages**: the stacks that are Debian packages (Chromium, Firefox ESR, libnice
   through GStreamer's webrtcbin: :data:`STACK_PACKAGES`) come only when a run asks for one
   of them: the ``debian`` base then has a second flavour, ``natkit-base:<suite>-<hash>``
   made by the same mmdebstrap with all those packages included, from the host's mirror and
   its security archive when it uses one (the browsers' fixes are there; about 1 GB more,
   made once and cached like the plain base, so a change of natkit rebuilds only the thin
   layer above it);
   another base gets them from apt in the build (``STACK_PACKAGES`` build argument, which
   needs that base's network, so only for a build by hand or a base that has them already);
5. **build**: the Dockerfile in a context of only the wheelhouse and those programs
   (``docker build`` through the API, legacy builder, network ``none``); the Dockerfile
   installs ``natkit`` from ``wheels/`` with ``--no-index``.

The tag is ``natkit-lab:<version>-<hash>``: the hash covers what goes into the image (the
package's files, pyproject.toml, setup.py, README.md, the Dockerfile, the compiled peers, the
base and its id, the stack packages), so a second run finds the tag and builds nothing; any change to natkit
builds a new image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natkit import __version__
from natkit.errors import PrerequisiteError
from natkit.lab.engines.docker import DockerAPI, DockerError

__all__ = [
    "DEBIAN_BASE",
    "DOCKERFILE",
    "PYTHON_BASE",
    "STACK_PACKAGES",
    "ImageInfo",
    "build_image",
    "ensure_debian_base",
    "ensure_image",
    "host_programs",
    "image_tag",
    "source_root",
    "stack_packages",
]

DOCKERFILE = "configs/docker/Dockerfile"
PYTHON_BASE = "python:3.11-slim-bookworm"
DEBIAN_BASE = "debian"  # natkit's own base, made with mmdebstrap (see ensure_debian_base)
SUITE = "bookworm"  # Debian 12: Python 3.11, like the host that builds the wheelhouse
BASE_PACKAGES = ("python3", "python3-venv", "nftables", "iproute2", "coturn", "libstdc++6", "netbase", "tayga")
# The built-in stacks that are Debian packages, as .ci/bootstrap installs them on a host
# (natkit.lab.stacks.libnice.PACKAGES for libnice). Without recommends: fonts, codecs' GUIs,
# desktop integration are not needed by a headless peer.
STACK_PACKAGES: dict[str, tuple[str, ...]] = {
    "chromium": ("chromium",),
    "firefox": ("firefox-esr",),
    "libnice": (
        "python3-gi", "gir1.2-gstreamer-1.0", "gir1.2-gst-plugins-base-1.0", "gir1.2-gst-plugins-bad-1.0",
        "gir1.2-nice-0.1", "gstreamer1.0-nice", "gstreamer1.0-plugins-base", "gstreamer1.0-plugins-good",
        "gstreamer1.0-plugins-bad",
    ),
}
IMAGE_REPO = "natkit-lab"
BASE_REPO = "natkit-base"
BUILD_TIMEOUT_S = 900.0
LAB_CMD = ["python", "-m", "natkit.lab.engines.container"]  # the Dockerfile's CMD
KEEP_IMAGES = 3  # lab images kept (the newest): every change to natkit makes another
_SKIP = re.compile(r"(^|/)(__pycache__|build|dist|[^/]*\.egg-info)(/|$)|\.(pyc|pyo|so)$")

Notify = Callable[[str], None]


@dataclass(frozen=True)
class ImageInfo:
    """The image the lab runs: its tag, its base, and whether this call built it."""

    tag: str
    base: str
    built: bool
    seconds: float
    programs: tuple[str, ...] = ()  # the compiled peers it carries (host_programs)
    stacks: tuple[str, ...] = ()  # the stacks of STACK_PACKAGES it carries

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "base": self.base, "built": self.built, "build_s": round(self.seconds, 1),
                "programs": list(self.programs), "stacks": list(self.stacks)}


def stack_packages(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the stacks of :data:`STACK_PACKAGES` the image carries, their packages) for a run of
    the stacks ``names``: none, or all of them as soon as one is named. One flavour with them
    all, not one per set: each flavour is a base of its own (about 1 GB, minutes to make), and
    a cache of one serves every run."""
    if not any(n in STACK_PACKAGES for n in names):
        return (), ()
    return tuple(sorted(STACK_PACKAGES)), tuple(sorted({p for pkgs in STACK_PACKAGES.values() for p in pkgs}))


def source_root() -> Path:
    """The natkit source tree this natkit runs from (pyproject.toml beside the package)."""
    root = Path(__file__).resolve().parents[3]
    if not ((root / "pyproject.toml").is_file() and (root / "natkit").is_dir() and (root / DOCKERFILE).is_file()):
        raise PrerequisiteError(
            f"the Compose lab builds its image from natkit's source tree, and {root} is none; "
            "run natkit from a clone (pip install -e .)"
        )
    return root


def _files(root: Path) -> Iterator[Path]:
    """What goes into natkit's wheel, relative to ``root``, in a stable order."""
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (root / name).is_file():
            yield Path(name)
    for path in sorted((root / "natkit").rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not _SKIP.search(rel.as_posix()):
            yield rel


def host_programs() -> list[Path]:
    """The compiled peer programs installed on this host, current with their sources (each
    with its ``.source-sha256`` stamp beside it); the image carries these."""
    from natkit.lab.stacks.build import find_program

    found = []
    with contextlib.suppress(PrerequisiteError):
        found.append(find_program())
    return found


def image_tag(root: Path, base: str, base_id: str, programs: Sequence[Path] = (), packages: Sequence[str] = ()) -> str:
    """``natkit-lab:<version>-<hash of the image's inputs>``."""
    h = hashlib.sha256()
    for rel in [*_files(root), Path(DOCKERFILE)]:
        h.update(rel.as_posix().encode() + b"\0")
        h.update((root / rel).read_bytes() + b"\0")  # follows the package's links into configs/
    for prog in programs:
        h.update(f"program {prog.name}\0".encode() + prog.read_bytes() + b"\0")
    h.update(f"{base}\0{base_id}\0{sys.version_info[:2]}".encode())
    if packages:  # (the plain image's tag stays what it was)
        h.update(f"\0packages {' '.join(packages)}".encode())
    return f"{IMAGE_REPO}:{__version__}-{h.hexdigest()[:12]}"


# -- the Debian base --------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian archive the host's apt uses (``NATKIT_DEBIAN_MIRROR`` overrides)."""
    if os.environ.get("NATKIT_DEBIAN_MIRROR"):
        return os.environ["NATKIT_DEBIAN_MIRROR"]
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for uri in re.findall(r"(https?://\S+/debian)/?(?:\s|$)", text):
            return str(uri)
    return "http://deb.debian.org/debian"


def debian_security() -> str | None:
    """The Debian security archive the host's apt uses, if any (``NATKIT_DEBIAN_SECURITY``
    overrides; empty: none)."""
    if "NATKIT_DEBIAN_SECURITY" in os.environ:
        return os.environ["NATKIT_DEBIAN_SECURITY"] or None
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for uri in re.findall(r"(https?://\S+/debian-security)/?(?:\s|$)", path.read_text(errors="replace")):
                return str(uri)
    return None


def _mirrors(extra: Sequence[str]) -> list[str]:
    """mmdebstrap's mirror arguments: the archive, and its security archive for a flavour with
    the stacks' packages (a browser of the main suite may be several releases behind)."""
    mirror = debian_mirror()
    security = debian_security() if extra else None
    return [mirror, *([f"deb {security} {SUITE}-security main"] if security else [])]


def _base_tag(mirrors: Sequence[str], extra: Sequence[str] = ()) -> str:
    packages = " ".join([*BASE_PACKAGES, *extra])
    h = hashlib.sha256(f"{SUITE}\0{chr(0).join(mirrors)}\0{packages}\0essential".encode()).hexdigest()[:12]
    return f"{BASE_REPO}:{SUITE}-{h}"


def ensure_debian_base(api: DockerAPI, notify: Notify, extra: Sequence[str] = ()) -> str:
    """natkit's Debian base image (made when missing), with the Debian packages ``extra``
    besides :data:`BASE_PACKAGES` (a flavour of its own); its tag."""
    mirrors = _mirrors(extra)
    mirror = mirrors[0]
    tag = _base_tag(mirrors, extra)
    if api.image(tag) is not None:
        return tag
    if shutil.which("mmdebstrap") is None:
        raise PrerequisiteError(
            "making the lab's Debian base image needs mmdebstrap: apt-get install mmdebstrap "
            f"(or, with a registry, --base {PYTHON_BASE})"
        )
    what = f" with {' '.join(extra)} (a few minutes, once)" if extra else ""
    notify(f"making the Debian base image {tag} with mmdebstrap from {mirror}{what}")
    with tempfile.TemporaryDirectory(prefix="natkit-base-") as tmp:
        out = Path(tmp) / "rootfs.tar"
        argv = [
            "mmdebstrap", "--quiet", "--variant=essential", f"--include={','.join([*BASE_PACKAGES, *extra])}",
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
            SUITE, str(out), *mirrors,
        ]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PrerequisiteError(f"mmdebstrap did not finish within {BUILD_TIMEOUT_S:g} s; check {mirror}") from None
        if res.returncode != 0:
            err = " ".join(res.stderr.split()[-40:])
            raise PrerequisiteError(f"mmdebstrap could not make the base image from {mirror}: {err}")
        with out.open("rb") as body:
            events = api.stream(
                "POST", "/images/create", body=body, timeout=BUILD_TIMEOUT_S,
                headers={"Content-Type": "application/x-tar", "Content-Length": str(out.stat().st_size)},
                query={"fromSrc": "-", "repo": tag.split(":")[0], "tag": tag.split(":")[1],
                       "changes": "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            )
            for ev in events:
                if "error" in ev:
                    raise PrerequisiteError(f"docker import of the base image failed: {ev['error']}")
    return tag


# -- the wheelhouse and the build ---------------------------------------------------------------


def _pip(args: list[str], what: str) -> None:
    try:
        res = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                             timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PrerequisiteError(f"pip did not finish {what} within {BUILD_TIMEOUT_S:g} s") from None
    if res.returncode != 0:
        err = [ln for ln in res.stderr.splitlines() if "ERROR" in ln or "error" in ln][-3:] or res.stderr.splitlines()[-3:]
        raise PrerequisiteError(f"pip could not {what}: {' / '.join(err)[:400]}; the host's pip needs its index for this")


def build_wheelhouse(root: Path, dest: Path, notify: Notify) -> None:
    """natkit's wheel (from a copy of the source tree) and every dependency's, in ``dest``."""
    if sys.version_info[:2] != (3, 11):
        raise PrerequisiteError(
            "the lab image's Python is 3.11 (Debian bookworm): run natkit with Python 3.11 to build its "
            f"wheelhouse (this is {sys.version_info[0]}.{sys.version_info[1]})"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="natkit-src-") as tmp:
        src = Path(tmp)
        for rel in _files(root):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, src / rel)  # the package's links become files
        notify("building natkit's wheel and its dependencies' (pip wheel)")
        _pip(["wheel", "-q", "--no-deps", "--wheel-dir", str(dest), str(src)], "build natkit's wheel")
    wheels = sorted(dest.glob("natkit-*.whl"))
    if not wheels:
        raise PrerequisiteError("pip built no natkit wheel")
    _pip(["wheel", "-q", "--wheel-dir", str(dest), str(wheels[-1])], "collect natkit's dependencies as wheels")


def build_image(api: DockerAPI, root: Path, tag: str, base: str, notify: Notify, programs: Sequence[Path] = (),
                packages: Sequence[str] = ()) -> None:
    """Build ``tag`` from ``base`` with a wheelhouse context and ``programs`` (see the module
    docstring)."""
    with tempfile.TemporaryDirectory(prefix="natkit-image-") as tmp:
        ctx = Path(tmp) / "context"
        build_wheelhouse(root, ctx / "wheels", notify)
        if programs:
            (ctx / "libexec" / "natkit").mkdir(parents=True)
        for prog in programs:
            for src in (prog, prog.with_name(prog.name + ".source-sha256")):
                dst = ctx / "libexec" / "natkit" / src.name
                shutil.copyfile(src, dst)
                dst.chmod(0o755 if src == prog else 0o644)
        shutil.copyfile(root / DOCKERFILE, ctx / "Dockerfile")
        (ctx / ".dockerignore").write_text("**/__pycache__\n")
        archive = Path(tmp) / "context.tar"
        with tarfile.open(archive, "w") as tar:
            for path in sorted(ctx.rglob("*")):
                tar.add(path, arcname=path.relative_to(ctx).as_posix(), recursive=False)
        notify(f"building the image {tag} from {base} (docker build, no network)")
        log: list[str] = []
        with archive.open("rb") as body:
            events = api.stream(
                "POST", "/build", body=body, timeout=BUILD_TIMEOUT_S,
                headers={"Content-Type": "application/x-tar", "Content-Length": str(archive.stat().st_size)},
                query={"t": tag, "dockerfile": "Dockerfile",
                       "buildargs": json.dumps({"BASE": base, "STACK_PACKAGES": " ".join(packages)}),
                       "networkmode": "none", "rm": 1, "forcerm": 1,
                       "labels": json.dumps({"org.natkit.lab": "image", "org.natkit.version": __version__})},
            )
            for ev in events:
                if "stream" in ev:
                    log.append(str(ev["stream"]))
                if "error" in ev:
                    tail = "".join(log)[-600:].strip().replace("\n", " / ")
                    raise PrerequisiteError(f"docker build of the lab image failed: {ev['error']} ({tail})")
    if api.image(tag) is None:
        raise PrerequisiteError(f"docker build of the lab image gave no image {tag}")


def ensure_image(api: DockerAPI, base: str | None = None, notify: Notify | None = None,
                 stacks: Sequence[str] = ()) -> ImageInfo:
    """The lab image for ``base`` (None: :data:`PYTHON_BASE` if present, else ``debian``),
    with the Debian packages of the ``stacks`` that need some (:data:`STACK_PACKAGES`), built
    when its tag is missing."""
    say = notify or (lambda text: None)
    t0 = time.monotonic()
    root = source_root()
    with_stacks, packages = stack_packages(stacks)
    if base is None:
        base = PYTHON_BASE if api.image(PYTHON_BASE) is not None else DEBIAN_BASE
    ref = ensure_debian_base(api, say, packages) if base == DEBIAN_BASE else base
    found = api.image(ref)
    if found is None:
        raise PrerequisiteError(
            f"no base image {ref} on this Docker host: pull it (docker pull {ref}) where a registry is "
            f"reachable, or use --base {DEBIAN_BASE} (natkit makes it with mmdebstrap)"
        )
    programs = host_programs()
    names = tuple(p.name for p in programs)
    # natkit's own base has the packages already: the build installs none
    build_packages = () if base == DEBIAN_BASE else packages
    tag = image_tag(root, ref, str(found.get("Id", "")), programs, build_packages)
    if api.image(tag) is not None:
        return ImageInfo(tag, ref, False, time.monotonic() - t0, names, with_stacks)
    try:
        build_image(api, root, tag, ref, say, programs, build_packages)
    except DockerError as exc:
        raise PrerequisiteError(f"the Docker daemon refused the image build: {exc.message}") from None
    prune_images(api, keep=tag)
    return ImageInfo(tag, ref, True, time.monotonic() - t0, names, with_stacks)


def prune_images(api: DockerAPI, keep: str, count: int = KEEP_IMAGES) -> list[str]:
    """Remove lab images beyond the ``count`` newest (never ``keep``, never one in use); the
    tags removed."""
    images = api.call("GET", "/images/json", query={"filters": json.dumps({"reference": [f"{IMAGE_REPO}:*"]})}) or []
    images = sorted(images, key=lambda i: int(i.get("Created", 0)), reverse=True)
    removed = []
    # lab images without a tag: a build of the same inputs took it (two builds at once), or a
    # build whose client went away stopped before its last step; known by the Dockerfile's CMD or
    # by the install step that made it
    dangling = api.call("GET", "/images/json", query={"filters": json.dumps({"dangling": ["true"]})}) or []
    for img in dangling:
        with contextlib.suppress(DockerError, OSError):
            info = api.image(str(img["Id"])) or {}
            step = " ".join((info.get("ContainerConfig") or {}).get("Cmd") or [])
            if (info.get("Config") or {}).get("Cmd") == LAB_CMD or "/opt/natkit/venv" in step:
                api.call("DELETE", f"/images/{img['Id']}")
                removed.append(str(img["Id"])[:19])
    for img in images[count:]:
        tags = [t for t in img.get("RepoTags") or [] if t.startswith(f"{IMAGE_REPO}:")]
        if keep in tags:
            continue
        for t in tags:
            with contextlib.suppress(DockerError):
                api.call("DELETE", f"/images/{t}")  # refused while a container uses it
                removed.append(t)
    return removed
