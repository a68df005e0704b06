"""Which cases a run holds: the topology's matrix, a ``--only`` subset, the browser cases."""

from __future__ import annotations

from collections.abc import Sequence

from natkit.errors import ConfigError
from natkit.lab.topology import PATHS, Case, Topology

__all__ = ["browser_cases", "select_cases"]


def select_cases(topo: Topology, only: Sequence[str] = (), within: Sequence[Case] | None = None) -> list[Case]:
    """The cases of ``topo`` (or of ``within``, e.g. a run's stack matrix) that ``only`` keeps.

    Each item is a comma-separated list of tokens: a path (``host``, ``srflx``, ``relay``), a
    NAT name (keeps cases whose NATs are all named), or a pair ``A:B`` (that pair only). Paths
    combine with the rest by AND; NAT names and pairs by OR.
    """
    tokens = [t.strip() for item in only for t in item.split(",") if t.strip()]
    names = {n.name for n in topo.nats}
    paths: set[str] = set()
    nats: set[str] = set()
    pairs: set[frozenset[str]] = set()
    for t in tokens:
        if t in PATHS:
            paths.add(t)
        elif ":" in t:
            a, _, b = t.partition(":")
            for x in (a, b):
                if x not in names:
                    raise ConfigError(f"{t}: no NAT named {x!r}; known: {', '.join(sorted(names))}", param="only")
            pairs.add(frozenset((a, b)))
        elif t in names:
            nats.add(t)
        else:
            raise ConfigError(
                f"{t}: not a path ({', '.join(PATHS)}), a NAT name or a pair A:B; "
                f"NATs: {', '.join(n.name for n in topo.nats)}",
                param="only",
            )
    out = []
    for c in topo.cases() if within is None else within:
        if paths and c.path not in paths:
            continue
        if (nats or pairs) and not (set(c.nats) <= nats or frozenset(c.nats) in pairs):
            continue
        out.append(c)
    if not out:
        raise ConfigError(f"{' '.join(only)}: selects no case", param="only")
    return out


def browser_cases(
    topology: Topology, paths: Sequence[str] = ("srflx", "relay"), callee: str | None = None,
    within: Sequence[Case] | None = None,
) -> list[Case]:
    """The browser cases of ``topology``: Chromium behind every matrix NAT (the caller), against
    the aiortc peer behind ``callee`` (default: the first full-cone NAT, else the first NAT),
    over each of ``paths``. With ``within`` (a run's cases), only NATs and paths those use."""
    rows = list(topology.matrix_nats)
    if not rows:
        return []
    if callee is None:
        callee = next((n.name for n in rows if n.type == "full-cone"), rows[0].name)
    elif callee not in {n.name for n in rows}:
        raise ConfigError(f"{callee!r}: not a NAT of {topology.source}", param="browser_callee")
    for p in paths:
        if p not in PATHS:
            raise ConfigError(f"unknown path {p!r}; expected one of: {', '.join(PATHS)}", param="paths")
    out = [Case((n.name, callee), p, stacks=("chromium", "aiortc")) for p in paths for n in rows]
    if within is not None:
        names = {n for c in within for n in c.nats}
        used = {c.path for c in within}
        out = [c for c in out if set(c.nats) <= names and c.path in used]
    return out
