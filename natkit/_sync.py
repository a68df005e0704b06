"""The ``_sync`` twins of natkit's async entry points."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(name: str, coroutine: Callable[..., Coroutine[Any, Any, T]], *args: Any,
             **kwargs: Any) -> T:
    """``asyncio.run(coroutine(*args, **kwargs))`` for callers without a running event loop;
    inside one, a RuntimeError that says to ``await natkit.<name>(...)`` instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine(*args, **kwargs))
    raise RuntimeError(f"natkit.{name}_sync() called inside a running event loop: "
                       f"use 'await natkit.{name}(...)' there")
