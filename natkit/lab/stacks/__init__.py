"""The lab's ICE stacks: one adapter per implementation, all behind one
:class:`~natkit.lab.stacks.base.Peer` protocol (``start(role, config) -> PeerResult``).

A case names the caller's and the callee's stack (``Case.stacks``); the agent in each peer's
namespace looks the name up here and runs the adapter. Adding a stack is adding a module with a
class that satisfies :class:`Peer` and its entry in :data:`STACKS`. A user's own peer program
(``--peer NAME=COMMAND``, :class:`~natkit.lab.stacks.command.CommandPeer`) joins with
:func:`register`, before the agents fork.
"""

from __future__ import annotations

import importlib

from natkit.errors import ConfigError
from natkit.lab.stacks.base import ROLES, Peer, PeerConfig, PeerResult
from natkit.lab.stacks.capabilities import Capabilities

__all__ = [
    "ROLES", "STACKS", "Peer", "PeerConfig", "PeerResult", "capabilities_of", "close_all", "get", "names", "register",
]

# stack name -> "module:class"; imported on first use (Chromium's and aiortc's modules are not
# light, and a run imports only what its cases use).
STACKS: dict[str, str] = {
    "aiortc": "natkit.lab.stacks.aiortc:AiortcPeer",
    "chromium": "natkit.lab.stacks.chromium:ChromiumPeer",
    "firefox": "natkit.lab.stacks.firefox:FirefoxPeer",
    "libnice": "natkit.lab.stacks.libnice:LibnicePeer",
    "pion": "natkit.lab.stacks.pion:PionPeer",
}

_cache: dict[str, Peer] = {}


def get(name: str) -> Peer:
    """The adapter of stack ``name`` (one instance per process); ConfigError if unknown."""
    peer = _cache.get(name)
    if peer is None:
        try:
            module, cls = STACKS[name].split(":")
            if module == "registered":  # registered in another process than this one
                raise KeyError(name)
        except (KeyError, AttributeError):
            raise ConfigError(f"unknown ICE stack {name!r}; choose one of: {', '.join(STACKS)}", param="stacks") from None
        peer = _cache[name] = getattr(importlib.import_module(module), cls)()
    return peer


def names() -> tuple[str, ...]:
    return tuple(STACKS)


def capabilities_of(name: str) -> Capabilities:
    """What stack ``name`` supports (unknown for a stack that does not say)."""
    caps = getattr(get(name), "capabilities", None)
    return caps if isinstance(caps, Capabilities) else Capabilities.unknown(name)


async def close_all(timeout: float = 3.0) -> None:
    """Close the adapters of this process that hold something open (a browser kept across
    cases has ``close()``), each within ``timeout`` seconds; the agent does this as it stops."""
    import asyncio
    import contextlib

    closers = [close() for p in _cache.values() if callable(close := getattr(p, "close", None))]
    if closers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closers, return_exceptions=True), timeout)


def register(peer: Peer) -> None:
    """Make ``peer`` (e.g. a CommandPeer from ``--peer``) the stack named ``peer.name`` in this
    process and in agents forked after this call; ConfigError if a built-in has that name."""
    if STACKS.get(peer.name, "").startswith("natkit."):
        raise ConfigError(f"{peer.name!r} is a built-in stack; choose another name", param="peer")
    STACKS[peer.name] = f"registered:{type(peer).__name__}"
    _cache[peer.name] = peer
