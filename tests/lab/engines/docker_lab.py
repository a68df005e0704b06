"""What the Docker tests share: whether a daemon can run the lab here, and the lab image,
built once per session in the background from the moment the tests are collected (so that the
build overlaps the rest of the suite; tests/conftest.py starts it)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

_build: dict[str, Any] = {}


def why_not() -> str | None:
    """None when the Compose lab can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    from natkit.errors import PrerequisiteError
    from natkit.lab.engines.compose_lab import check

    try:
        check(capture=True)
    except PrerequisiteError as exc:
        return str(exc)
    return None


def require_docker() -> None:
    """Skip (fail under CI=true: the bootstrap installs and starts Docker there) without Docker."""
    reason = why_not()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the Compose lab cannot run on this CI machine: {reason}")
    pytest.skip(f"the Compose lab cannot run here: {reason}")


def start_image_build() -> None:
    """Build (or find) the lab image in a thread, once."""
    if _build or why_not() is not None:
        return

    def target() -> None:
        from natkit.lab.engines.docker import DockerAPI
        from natkit.lab.engines.image import ensure_image

        try:
            _build["info"] = ensure_image(DockerAPI())
        except BaseException as exc:  # reported by the test that needs the image
            _build["error"] = exc

    th = threading.Thread(target=target, name="natkit-image-build", daemon=True)
    _build["thread"] = th
    th.start()


def image(cancelled: Callable[[], bool] = lambda: False) -> Any:
    """The lab image (an ImageInfo), waiting for the background build (at most 900 s; less
    when ``cancelled()`` turns true: the session is ending)."""
    start_image_build()
    th = _build.get("thread")
    end = time.monotonic() + 900
    while th is not None and th.is_alive() and time.monotonic() < end:
        if cancelled():
            pytest.skip("the session ended before the lab image was built")
        th.join(1)
    if "error" in _build:
        raise _build["error"]
    if "info" not in _build:
        pytest.fail("the lab image's build did not finish within 900 s")
    return _build["info"]
