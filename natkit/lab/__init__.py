"""The NAT lab: topology, the netns engine (namespaces + nftables), peers, signaling, reports.

``natkit.lab.run(...)`` runs a topology's matrix; ``natkit.lab.load(path)`` reads a topology.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"run": ("natkit.lab.runner", "run"), "load": ("natkit.lab.topology", "load")}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'natkit.lab' has no attribute {name!r}") from None
    import importlib

    return getattr(importlib.import_module(module_name), attr)
