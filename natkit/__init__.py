"""natkit: STUN/TURN and NAT-traversal toolkit.

The public entry points are imported lazily so that ``import natkit`` stays cheap and the
sans-IO core can be used without asyncio or the optional dependencies.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "StunServer": ("natkit.server.stun", "StunServer"),
    "TurnServer": ("natkit.server.turn", "TurnServer"),
    "probe": ("natkit.nat.probe", "probe_sync"),
    "probe_async": ("natkit.nat.probe", "probe"),
    "check": ("natkit.ice.check", "check_sync"),
    "check_async": ("natkit.ice.check", "check"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'natkit' has no attribute {name!r}") from None
    import importlib

    return getattr(importlib.import_module(module_name), attr)
