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


# The stacks that come in the image's flavour with Debian packages (image.STACK_PACKAGES).
PACKAGED_STACKS = ("chromium", "firefox", "libnice")
# The test that needs that flavour (tests/lab/engines/test_compose_lab.py).
STACKS_TEST = "test_every_stack_runs_in_the_containers"


def start_image_build(*, stacks: bool = True) -> None:
    """Build (or find) the lab images in a thread, once: the plain one first (the main Compose
    run's), then, with ``stacks`` (a test that needs it was collected), the flavour with the
    browsers and libnice (its Debian base takes minutes from nothing, overlapping the rest of
    the suite; cached afterwards)."""
    if _build or why_not() is not None:
        return
    flavours: list[tuple[str, tuple[str, ...]]] = [("info", ())]
    if stacks:
        flavours.append(("stacks", PACKAGED_STACKS))

    def target() -> None:
        from natkit.lab.engines.docker import DockerAPI
        from natkit.lab.engines.image import ensure_image

        for key, names in flavours:
            try:
                _build[key] = ensure_image(DockerAPI(), stacks=names)
            except BaseException as exc:  # reported by the test that needs the image
                _build[f"{key}-error"] = exc
            _build[f"{key}-done"] = True

    th = threading.Thread(target=target, name="natkit-image-build", daemon=True)
    _build["thread"] = th
    th.start()


def image(cancelled: Callable[[], bool] = lambda: False, *, stacks: bool = False) -> Any:
    """The lab image (an ImageInfo), waiting for the background build (at most 900 s; less
    when ``cancelled()`` turns true: the session is ending); ``stacks``: its flavour with the
    browsers and libnice."""
    key = "stacks" if stacks else "info"
    start_image_build()
    th = _build.get("thread")
    end = time.monotonic() + 900
    while th is not None and th.is_alive() and f"{key}-done" not in _build and time.monotonic() < end:
        if cancelled():
            pytest.skip("the session ended before the lab image was built")
        th.join(1)
    if stacks and "stacks-done" not in _build and (th is None or not th.is_alive()):
        # the background build did not include the flavour (its test was not collected first)
        from natkit.lab.engines.docker import DockerAPI
        from natkit.lab.engines.image import ensure_image

        try:
            _build["stacks"] = ensure_image(DockerAPI(), stacks=PACKAGED_STACKS)
        except BaseException as exc:
            _build["stacks-error"] = exc
        _build["stacks-done"] = True
    if f"{key}-error" in _build:
        raise _build[f"{key}-error"]
    if key not in _build:
        pytest.fail("the lab image's build did not finish within 900 s")
    return _build[key]
