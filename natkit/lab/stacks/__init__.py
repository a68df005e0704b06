"""The lab's ICE stacks: one adapter per implementation, all behind one
:class:`~natkit.lab.stacks.base.Peer` protocol (``start(role, config) -> PeerResult``).

A case names the caller's and the callee's stack (``Case.stacks``); the agent in each peer's
namespace looks the name up here and runs the adapter. Adding a stack is adding a module with a
class that satisfies :class:`Peer` and its entry in :data:`STACKS`.
"""

from __future__ import annotations

import importlib

from natkit.errors import ConfigError
from natkit.lab.stacks.base import ROLES, Peer, PeerConfig, PeerResult

__all__ = ["ROLES", "STACKS", "Peer", "PeerConfig", "PeerResult", "get", "names"]

# stack name -> "module:class"; imported on first use (Chromium's and aiortc's modules are not
# light, and a run imports only what its cases use).
STACKS: dict[str, str] = {
    "aiortc": "natkit.lab.stacks.aiortc:AiortcPeer",
    "chromium": "natkit.lab.stacks.chromium:ChromiumPeer",
}

_cache: dict[str, Peer] = {}


def get(name: str) -> Peer:
    """The adapter of stack ``name`` (one instance per process); ConfigError if unknown."""
    peer = _cache.get(name)
    if peer is None:
        try:
            module, cls = STACKS[name].split(":")
        except (KeyError, AttributeError):
            raise ConfigError(f"unknown ICE stack {name!r}; choose one of: {', '.join(STACKS)}", param="stacks") from None
        peer = _cache[name] = getattr(importlib.import_module(module), cls)()
    return peer


def names() -> tuple[str, ...]:
    return tuple(STACKS)
