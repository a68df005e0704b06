"""Which stacks and cases a run gets from its options (``--stacks``, ``--peer``, ``--full``,
``--only``, ``--with``): the one function behind ``natkit lab run`` that both engines' runs share.

* no ``--stacks`` and no ``--peer``: every built-in stack that can run here (the ones that
  cannot are left out and named, with what to install, in the plan's ``skipped``);
* ``--peer NAME=COMMAND`` without ``--stacks``: the reference stack (aiortc) and the peers;
* ``--stacks``: exactly those (a ``--peer`` must be among them); one that cannot run stops the
  run with what to install.

Then :func:`natkit.lab.matrix.select` (the default selection or ``--full``), the ``--only``
filter, and the ``--with`` filter: only the cases in which one of the named stacks is caller
or callee (``--full --peer mine=... --with mine``: every case of the peer, none of the
reference stack with itself, which is a sixth of ``--full`` over two stacks and says nothing
of the peer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab import stacks
from natkit.lab.cases import select_cases
from natkit.lab.matrix import BUILTIN, REFERENCE, Selection, parse_stacks, select
from natkit.lab.stack_expect import after_ice
from natkit.lab.stacks.capabilities import Capabilities
from natkit.lab.stacks.command import CommandPeer
from natkit.lab.topology import Topology

__all__ = ["choose", "peer_capabilities", "register_peers"]


def peer_capabilities(specs: Sequence[str], names: Sequence[str]) -> dict[str, Capabilities]:
    """``--peer-caps NAME=LIST`` values by peer name (each must name a ``--peer``, once)."""
    out: dict[str, Capabilities] = {}
    for spec in specs:
        name, sep, words = spec.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"{spec!r}: expected NAME=LIST, e.g. mine=relay-udp,relay-tcp,ipv6,idle", param="peer-caps")
        if name not in names:
            raise ConfigError(f"{name}: no --peer of that name", param="peer-caps")
        if name in out:
            raise ConfigError(f"{name}: given twice", param="peer-caps")
        out[name] = Capabilities.declared(name, words)
    return out


def register_peers(specs: Sequence[str], caps: Sequence[str] = ()) -> list[CommandPeer]:
    """``--peer NAME=COMMAND`` values as registered stacks (checked: the program exists),
    with what ``--peer-caps`` declares of them (else nothing is known of them)."""
    peers: list[CommandPeer] = []
    for spec in specs:
        peer = CommandPeer.from_spec(spec, reserved=BUILTIN)
        if any(p.name == peer.name for p in peers):
            raise ConfigError(f"{peer.name}: given twice; give each peer its own name", param="peer")
        peers.append(peer)
    declared = peer_capabilities(caps, [p.name for p in peers])
    for peer in peers:
        peer.capabilities = declared.get(peer.name, peer.capabilities)
        peer.check()
        stacks.register(peer)
    return peers


Unavailable = Callable[[str], "str | None"]  # why a stack cannot run on the engine, or None


def _why_not(name: str, unavailable: Unavailable | None) -> str | None:
    if unavailable is not None:  # the engine runs the stacks elsewhere (its image): its word
        return unavailable(name)
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
    peer_caps: Sequence[str] = (),
    with_stacks: Sequence[str] = (),
) -> Selection:
    """The run's :class:`~natkit.lab.matrix.Selection` (see the module docstring).
    ``stack_names``: ``--stacks`` values; ``peers``: ``--peer`` values (registered here);
    ``unavailable``: the engine's own reason a stack cannot run there (the Compose engine's
    image: :func:`natkit.lab.engines.compose_lab.stack_unavailable`), instead of this host's
    (the stacks run in the image: a host without Chromium runs it under Compose);
    ``with_stacks``: ``--with`` values (stacks of the run; a case stays when one takes part)."""
    added = [p.name for p in register_peers(peers, peer_caps)]
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
    taking_part = _taking_part(with_stacks, chosen)
    selection = select(topo, chosen, full=full, skipped=skipped, dtls_ok=_dtls_ok)
    cases = [c for c in selection.cases if c.path != "longevity" or all(_idles(n) for n in c.stacks)]
    if only:
        cases = select_cases(topo, only, within=tuple(cases))
    if taking_part:
        cases = [c for c in cases if taking_part & set(c.stacks)]
        if not cases:
            raise ConfigError(f"no case of the plan has {','.join(sorted(taking_part))} taking part", param="with_stacks")
    if len(cases) == len(selection.cases):
        return selection
    return Selection(selection.kind, selection.stacks, selection.reference, tuple(cases), selection.skipped)


def _taking_part(items: Sequence[str], chosen: Sequence[str]) -> set[str]:
    """``--with`` values (comma-separated, repeatable) as names, each one of the run's stacks."""
    names = {n for item in items for n in (t.strip() for t in item.split(",")) if n}
    if items and not names:
        raise ConfigError("name at least one stack of the run, e.g. --with mine", param="with_stacks")
    for name in sorted(names):
        if name not in chosen:
            raise ConfigError(f"{name} is not among the run's stacks ({','.join(chosen)})", param="with_stacks")
    return names


def _idles(name: str) -> bool:
    """Whether a stack's longevity cases test anything: it idles on NATKIT_IDLE_S (a peer
    declared without ``idle`` would echo at once and pass without idling)."""
    return stacks.capabilities_of(name).idle is not False


def _dtls_ok(caller: str, callee: str) -> bool:
    """Whether the two stacks' DTLS can finish (their capabilities say; unknown stacks can)."""
    caps = stacks.capabilities_of(caller), stacks.capabilities_of(callee)
    return after_ice((caller, callee), *caps) is None
