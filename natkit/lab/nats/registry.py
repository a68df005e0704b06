"""The registry of NAT kinds by name (filled by :mod:`natkit.lab.nats` from its modules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from natkit.errors import ConfigError

if TYPE_CHECKING:
    from natkit.lab.nats.kind import NatKind

__all__ = ["get", "kinds", "lookup", "names", "register", "unregister"]

_KINDS: dict[str, NatKind] = {}


def register(kind: NatKind) -> NatKind:
    """Add ``kind`` (ValueError if its name is taken by another kind)."""
    old = _KINDS.get(kind.name)
    if old is not None and old is not kind:
        raise ValueError(f"a NAT kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (for tests that register their own)."""
    _KINDS.pop(name, None)


def get(name: str) -> NatKind:
    """The kind named ``name``; a ConfigError lists the known names."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown NAT type {name!r}; choose one of: {', '.join(_KINDS)}", param="type") from None


def lookup(name: str) -> NatKind | None:
    return _KINDS.get(name)


def kinds() -> tuple[NatKind, ...]:
    return tuple(_KINDS.values())


def names() -> tuple[str, ...]:
    return tuple(_KINDS)
