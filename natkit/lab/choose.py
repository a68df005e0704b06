"""Which stacks and cases a run gets from its options (``--stacks``, ``--peer``, ``--full``,
``--only``): the one function behind ``natkit lab run`` that both engines' runs share.

* no ``--stacks`` and no ``--peer``: every built-in stack that can run here (the ones that
  cannot are left out and named, with what to install, in the plan's ``skipped``);
* ``--peer NAME=COMMAND`` without ``--stacks``: the reference stack (aiortc) and the peers;
* ``--stacks``: exactly those (a ``--peer`` must be among them); one that cannot run stops the
  run with what to install.

Then :func:`natkit.lab.matrix.select` (the default selection or ``--full``) and the ``--only``
filter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab import stacks
from natkit.lab.cases import select_cases
from natkit.lab.matrix import BUILTIN, REFERENCE, Selection, parse_stacks, select
from natkit.lab.stack_expect import after_ice
from natkit.lab.stacks.command import CommandPeer
from natkit.lab.topology import Topology

__all__ = ["choose", "register_peers"]


def register_peers(specs: Sequence[str]) -> list[CommandPeer]:
    """``--peer NAME=COMMAND`` values as registered stacks (checked: the program exists)."""
    peers: list[CommandPeer] = []
    for spec in specs:
        peer = CommandPeer.from_spec(spec, reserved=BUILTIN)
        if any(p.name == peer.name for p in peers):
            raise ConfigError(f"{peer.name}: given twice; give each peer its own name", param="peer")
        peer.check()
        stacks.register(peer)
        peers.append(peer)
    return peers


Unavailable = Callable[[str], "str | None"]  # why a stack cannot run on the engine, or None


def _why_not(name: str, unavailable: Unavailable | None) -> str | None:
    if unavailable is not None:
        why = unavailable(name)
        if why is not None:
            return why
    try:
        stacks.get(name).check()
    except PrerequisiteError as exc:
        return str(exc)
    return None


def _available(names: Sequence[str], unavailable: Unavailable | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    ok: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        why = _why_not(name, unavailable)
        if why is not None:
            skipped.append((name, why))
            continue
        ok.append(name)
    return ok, skipped


def choose(
    topo: Topology,
    *,
    stack_names: Sequence[str] = (),
    peers: Sequence[str] = (),
    full: bool = False,
    only: Sequence[str] = (),
    unavailable: Unavailable | None = None,
) -> Selection:
    """The run's :class:`~natkit.lab.matrix.Selection` (see the module docstring).
    ``stack_names``: ``--stacks`` values; ``peers``: ``--peer`` values (registered here);
    ``unavailable``: the engine's own reason a stack cannot run there (the Compose engine's
    image: :func:`natkit.lab.engines.compose_lab.stack_unavailable`), besides this host's."""
    added = [p.name for p in register_peers(peers)]
    known = [*BUILTIN, *added]
    named = parse_stacks(stack_names, known)
    skipped: list[tuple[str, str]] = []
    if named:
        missing = [p for p in added if p not in named]
        if missing:
            raise ConfigError(
                f"peer {missing[0]} is not among the stacks {','.join(named)}; add it there", param="stacks"
            )
        chosen = list(named)
        for name in chosen:
            why = unavailable(name) if unavailable is not None else None
            if why is not None:
                raise PrerequisiteError(f"the {name} stack: {why}")
    elif added:
        chosen = [REFERENCE, *added]
    else:
        chosen, skipped = _available(BUILTIN, unavailable)
        if REFERENCE not in chosen:
            raise PrerequisiteError(f"the reference stack cannot run: {dict(skipped)[REFERENCE]}")
    selection = select(topo, chosen, full=full, skipped=skipped, dtls_ok=_dtls_ok)
    if not only:
        return selection
    cases = select_cases(topo, only, within=selection.cases)
    return Selection(selection.kind, selection.stacks, selection.reference, tuple(cases), selection.skipped)


def _dtls_ok(caller: str, callee: str) -> bool:
    """Whether the two stacks' DTLS can finish (their capabilities say; unknown stacks can)."""
    caps = stacks.capabilities_of(caller), stacks.capabilities_of(callee)
    return after_ice((caller, callee), *caps) is None
