"""Which cases a run with several ICE stacks holds: stack × stack × NAT × NAT × path.

The whole cross product (:func:`full_cases`, ``natkit lab run --full``) is thousands of cases.
The default (:func:`default_cases`) answers the common question in about a minute on two cores:

1. **the NATs**: the reference stack (aiortc) with itself on every NAT pair, every path (the
   matrix every run had before there were other stacks);
2. **each stack against the reference**, as caller and as callee, the reference behind the
   *partner* NAT (the first port-restricted NAT: both sides must punch; when the stack itself
   is the callee behind the partner, the reference calls from the first full-cone NAT): over
   srflx behind every classic NAT kind of the topology (:func:`stack_nats`), over relay
   behind the partner and behind the UDP-blocking firewall (TURN over UDP, TURN over TCP);
   over srflx also behind the first full-cone NAT with the reference behind the first
   symmetric one (only a stack that learns peer-reflexive candidates connects); over host,
   as caller behind the first open NAT, the reference behind another;
3. **every pair of the other stacks** (each order, a stack with itself too) on the decisive
   NAT pair for two stacks: srflx from behind the full-cone NAT to behind the symmetric one
   (hole punching that works only with peer-reflexive learning, then DTLS between them);
4. **a stand-in partner** for a stack that cannot call the reference at all (its DTLS
   certificate is one the reference's DTLS client refuses: ``dtls_ok`` says so): its relay
   cases as caller again, against itself where it can, else the first other stack that takes
   its certificate, that stack behind the full-cone NAT. Without them such a stack would
   never be seen to relay as caller.

A topology without one of those NAT kinds uses its first matrix NAT instead. Each stack other
than the reference thus runs in one node per NAT it is put behind, whatever its role: a browser starts
once per NAT (its start is most of what a browser costs). Everything here is sans-IO: names
and the topology in, :class:`~natkit.lab.topology.Case` lists out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from natkit.errors import ConfigError
from natkit.lab.topology import Case, Topology

__all__ = [
    "BUILTIN",
    "REFERENCE",
    "Selection",
    "default_cases",
    "full_cases",
    "parse_stacks",
    "plan_id",
    "select",
    "stack_nats",
]

REFERENCE = "aiortc"
BUILTIN = ("aiortc", "chromium", "firefox", "libnice", "pion")
# RFC 4787's classic NAT kinds and the UDP-blocking firewall: where stacks differ.
CLASSIC_KINDS = ("open", "full-cone", "restricted-cone", "port-restricted", "symmetric", "udp-blocked")
# A carrier NAT's subscriber and a home NAT behind another one: two NATs in a row, which every
# stack must punch through. The browsers meet them only with --full: a browser starts once per
# node, and those starts are most of the default run's time. (The office that lets out only
# TCP to 80/443 is for TURN over TLS, which the other stacks' adapters do not set up with the
# lab CA yet: aiortc's matrix.)
TWO_NAT_KINDS = ("cgnat", "double-nat")
STACK_KINDS = (*CLASSIC_KINDS, *TWO_NAT_KINDS)
BROWSERS = ("chromium", "firefox")
KINDS = ("default", "full")


@dataclass(frozen=True)
class Selection:
    """The cases of a run and how they were chosen.

    ``kind``: ``default`` or ``full``; ``stacks`` the stacks taking part, ``reference`` the one
    every other stack is run against; ``skipped`` the built-in stacks left out of a run that
    did not name its stacks, each with why (not installed); ``cases`` in a fixed order (a
    shard's ``index`` is the position here).
    """

    kind: str
    stacks: tuple[str, ...]
    reference: str
    cases: tuple[Case, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.index.update({c.id: i for i, c in enumerate(self.cases)})

    @property
    def id(self) -> str:
        return plan_id(self.cases)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stacks": list(self.stacks),
            "reference": self.reference,
            "cases": len(self.cases),
            "id": self.id,
            "skipped": [{"stack": s, "reason": why} for s, why in self.skipped],
        }


def plan_id(cases: Sequence[Case]) -> str:
    """A short digest of the case list: shards of one plan carry the same id."""
    text = json.dumps([c.id for c in cases], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_stacks(items: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """``--stacks`` values (comma-separated, repeatable) as names, checked against ``known``."""
    out: list[str] = []
    for item in items:
        for name in (t.strip() for t in item.split(",")):
            if not name:
                continue
            if name not in known:
                raise ConfigError(f"{name}: not a stack; choose from: {', '.join(known)}", param="stacks")
            if name not in out:
                out.append(name)
    if not out and items:
        raise ConfigError("name at least one stack, e.g. aiortc,pion", param="stacks")
    return tuple(out)


def _first(topo: Topology, kind: str) -> str:
    rows = topo.matrix_nats
    return next((n.name for n in rows if n.type == kind), rows[0].name)


def _with(stacks: tuple[str, str], cases: Sequence[Case]) -> list[Case]:
    return [dataclasses.replace(c, stacks=stacks) for c in cases]  # family and all


def _ordered(topo: Topology, path: str, stacks: tuple[str, str]) -> list[Case]:
    """Every ordered NAT pair and every same-LAN NAT over ``path`` (two different stacks: who
    is behind which NAT matters)."""
    rows = topo.matrix_nats
    out = [Case((a.name, b.name), path, stacks=stacks, family=f) for a in rows for b in rows for f in topo.pair_families(a, b)]
    out += [Case((n.name, n.name), path, True, stacks, f) for n in topo.nats if n.same_lan for f in topo.pair_families(n, n)]
    return out


def full_cases(topo: Topology, stacks: Sequence[str], paths: Sequence[str] | None = None) -> list[Case]:
    """The whole cross product: every ordered pair of ``stacks`` × every NAT pair (ordered
    for two different stacks, unordered for a stack with itself) × every path of the topology
    (and its longevity cases) × every address family the pair shares."""
    paths = [*topo.paths, "longevity"] if paths is None else paths
    out: list[Case] = []
    for a in stacks:
        for b in stacks:
            for path in paths:
                if a == b:
                    out += _with((a, b), topo.cases((path,)))
                elif path == "longevity":  # only where the topology idles a call (it is long)
                    idle = topo.cases((path,))
                    both = [*idle, *(dataclasses.replace(c, nats=c.nats[::-1]) for c in idle)]
                    out += _with((a, b), list(dict.fromkeys(both)))
                else:
                    out += _ordered(topo, path, (a, b))
    return out


def stack_nats(topo: Topology, browser: bool = False) -> list[str]:
    """The NATs a stack other than the reference is put behind by default: the first NAT of
    each kind of :data:`STACK_KINDS` (a ``browser``: of :data:`CLASSIC_KINDS`) the topology
    has, else every matrix NAT. Other kinds (IPv6, NAT64, a sequential or non-preserving NAT,
    ...) are the NATs' question, which the reference stack's matrix answers; ``--full`` puts
    every stack behind them too."""
    rows = topo.matrix_nats
    kinds = CLASSIC_KINDS if browser else STACK_KINDS
    picked = [next(n.name for n in rows if n.type == kind) for kind in kinds if any(n.type == kind for n in rows)]
    return picked or [n.name for n in rows]


def _against_reference(topo: Topology, x: str, ref: str) -> list[Case]:
    rows = stack_nats(topo, x in BROWSERS)
    partner = _first(topo, "port-restricted")
    cone, sym, open_ = _first(topo, "full-cone"), _first(topo, "symmetric"), _first(topo, "open")
    blocked = _first(topo, "udp-blocked")
    out: list[Case] = []
    # Over relay the NAT in front matters less (TURN gets out of any NAT): a stack's TURN
    # client over UDP, and over TCP behind the firewall that drops UDP.
    relay_rows = [n for n in rows if n in (partner, blocked)] or rows[:1]
    for path, behind in (("srflx", rows), ("relay", relay_rows)):
        for n in behind:
            out.append(Case((n, partner), path, stacks=(x, ref)))
            # A callee behind the caller's own NAT kind sits on that kind's second router:
            # another node. The reference calls from the full-cone NAT instead.
            caller = partner if n != partner or cone == partner else cone
            out.append(Case((caller, n), path, stacks=(ref, x)))
    out.append(Case((cone, sym), "srflx", stacks=(x, ref)))
    out.append(Case((sym, cone), "srflx", stacks=(ref, x)))
    out.append(Case((open_, open_), "host", stacks=(x, ref)))
    return out


DtlsOk = Callable[[str, str], bool]  # (caller stack, callee stack): can they finish DTLS?


def _stand_in_relay(topo: Topology, x: str, others: Sequence[str], dtls_ok: DtlsOk) -> list[Case]:
    partners = [x, *(s for s in others if s != x)]
    callee = next((s for s in partners if dtls_ok(x, s)), None)
    if callee is None:
        return []
    cone, partner, blocked = _first(topo, "full-cone"), _first(topo, "port-restricted"), _first(topo, "udp-blocked")
    rows = [n for n in stack_nats(topo) if n in (partner, blocked) and n != cone]
    return [Case((n, cone), "relay", stacks=(x, callee)) for n in rows]


def default_cases(
    topo: Topology, stacks: Sequence[str], reference: str = REFERENCE, dtls_ok: DtlsOk | None = None
) -> list[Case]:
    """The default selection over ``stacks`` (see the module docstring); ``reference`` must
    be one of them."""
    others = [s for s in stacks if s != reference]
    out = _with((reference, reference), topo.cases()) if reference in stacks else []
    for x in others:
        out += _against_reference(topo, x, reference)
    cone, sym = _first(topo, "full-cone"), _first(topo, "symmetric")
    for a in others:
        for b in others:
            out.append(Case((cone, sym), "srflx", stacks=(a, b)))
    if dtls_ok is not None and reference in stacks:
        for x in others:
            if not dtls_ok(x, reference):
                out += _stand_in_relay(topo, x, others, dtls_ok)
    return list(dict.fromkeys(out))  # a topology short of NAT kinds may repeat a case


def select(
    topo: Topology,
    stacks: Sequence[str] = (),
    *,
    full: bool = False,
    skipped: Sequence[tuple[str, str]] = (),
    reference: str = REFERENCE,
    dtls_ok: DtlsOk | None = None,
) -> Selection:
    """The :class:`Selection` over ``stacks`` (default: the reference alone): the default
    cases, or with ``full`` the cross product. ``skipped``: stacks left out, and why;
    ``dtls_ok``: which stack pairs can finish DTLS (see :func:`default_cases`)."""
    names = tuple(stacks) or (reference,)
    ref = reference if reference in names else names[0]
    cases = full_cases(topo, names) if full else default_cases(topo, names, ref, dtls_ok)
    return Selection("full" if full else "default", names, ref, tuple(cases), tuple(skipped))
