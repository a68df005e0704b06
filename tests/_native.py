"""The compiled extensions in tests: required where natkit was installed to build them."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from natkit.server import _native


def need(name: str) -> ModuleType:
    """The extension module ``name``; a failure in CI (bootstrap builds it), else a skip with
    the reason (not built, or NATKIT_NO_CEXT set)."""
    module, why = _native.load(name)
    if module is None:
        if os.environ.get("CI") == "true" and not _native.disabled_by_env():
            pytest.fail(f"{name} must be built in CI: {why}")
        pytest.skip(f"{name}: {why}")
    return module


def have(name: str) -> bool:
    return _native.load(name)[0] is not None
