"""Which cases a run of several stacks holds (sans-IO): the default selection, --full, and
the stacks' nodes."""

from __future__ import annotations

import pytest

from natkit.errors import ConfigError
from natkit.lab.matrix import BUILTIN, default_cases, full_cases, parse_stacks, plan_id, select
from natkit.lab.topology import load

pytestmark = pytest.mark.timeout(30)


def test_the_default_holds_the_nats_matrix_every_stack_against_aiortc_and_every_pair() -> None:
    topo = load()
    sel = select(topo, BUILTIN)
    cases = list(sel.cases)
    assert sel.kind == "default" and sel.reference == "aiortc" and len(cases) == len(set(cases))
    ref = [c for c in cases if c.stacks == ("aiortc", "aiortc")]
    assert ref == topo.cases()  # the matrix every run had
    for x in BUILTIN[1:]:
        for role in (0, 1):
            mine = [c for c in cases if c.stacks[role] == x and "aiortc" in c.stacks]
            # behind every matrix NAT over srflx, behind two (UDP and TCP to TURN) over relay
            # (the browsers not behind the two-NAT kinds by default: a start per node)
            skip = {"egress-443"} | ({"cgnat", "double-nat"} if x in ("chromium", "firefox") else set())
            assert {c.nats[role] for c in mine if c.path == "srflx"} == {n.name for n in topo.matrix_nats} - skip, (x, role)
            assert {c.nats[role] for c in mine if c.path == "relay"} == {"port-restricted", "udp-blocked"}, (x, role)
        for y in BUILTIN[1:]:
            pair = [c for c in cases if c.stacks == (x, y)]
            assert {(c.nats, c.path) for c in pair} == {(("full-cone", "symmetric"), "srflx")}, (x, y)
    # pion, libnice: srflx behind 7 NATs x 2 roles, relay 2 x 2, 3 more; the browsers behind 6
    assert len(cases) == len(topo.cases()) + 2 * 21 + 2 * 19 + 16


def test_every_other_stack_runs_in_one_node_per_nat() -> None:
    """A browser starts once per node: the default keeps a stack to one node per matrix NAT."""
    topo = load()
    cases = default_cases(topo, BUILTIN)
    plan = topo.plan(cases)
    nodes: dict[str, set[str]] = {}
    for c in cases:
        for (_, peer), name in zip(plan.peers_of(c), c.stacks, strict=True):
            nodes.setdefault(name, set()).add(peer.id)
    for name in BUILTIN[1:]:
        # all but egress-443; a browser not behind cgnat either
        assert len(nodes[name]) == len(topo.matrix_nats) - (2 if name in ("chromium", "firefox") else 1), (name, nodes[name])


def test_full_is_the_whole_cross_product() -> None:
    topo = load()
    stacks = ("aiortc", "pion")
    cases = full_cases(topo, stacks)
    same = len(topo.cases())  # a stack with itself: unordered NAT pairs
    lan = sum(n.same_lan for n in topo.nats)
    idle = len(topo.cases(("longevity",)))  # a longevity case's NAT pairs with itself
    # two stacks: ordered pairs and the same-LAN NATs, every path; the longevity cases
    ordered = len(topo.paths) * (len(topo.matrix_nats) ** 2 + lan) + idle
    assert len(cases) == len(set(cases)) == 2 * same + 2 * ordered
    assert select(topo, stacks, full=True).kind == "full"
    assert len(full_cases(topo, BUILTIN)) == 5 * same + 20 * ordered


def test_the_plan_id_follows_the_cases() -> None:
    topo = load()
    a, b = select(topo, BUILTIN), select(topo, BUILTIN)
    assert a.id == b.id and a.index == b.index and a.index[a.cases[5].id] == 5
    assert select(topo, ("aiortc", "pion")).id != a.id
    assert plan_id(a.cases[:3]) != plan_id(a.cases[:4])


def test_parse_stacks() -> None:
    assert parse_stacks(["aiortc,pion", "pion", " libnice "], BUILTIN) == ("aiortc", "pion", "libnice")
    with pytest.raises(ConfigError, match="nope: not a stack") as err:
        parse_stacks(["aiortc,nope"], BUILTIN)
    assert err.value.param == "stacks"
    with pytest.raises(ConfigError, match="at least one"):
        parse_stacks([","], BUILTIN)


def test_without_the_reference_the_first_stack_is_the_reference() -> None:
    sel = select(load(), ("pion", "libnice"))
    assert sel.reference == "pion" and all("pion" in c.stacks for c in sel.cases if c.stacks != ("libnice", "libnice"))


def test_a_stack_that_cannot_call_the_reference_relays_as_caller_with_a_stand_in() -> None:
    """libnice's RSA certificate is refused by aiortc's DTLS client: its relay cases as caller
    are run again against a stack that takes it (itself first), in nodes it has anyway."""
    from natkit.lab.choose import _dtls_ok

    topo = load()
    plain = default_cases(topo, BUILTIN)
    cases = default_cases(topo, BUILTIN, dtls_ok=_dtls_ok)
    extra = [c for c in cases if c not in plain]
    assert {(c.nats, c.path, c.stacks) for c in extra} == {
        (("port-restricted", "full-cone"), "relay", ("libnice", "libnice")),
        (("udp-blocked", "full-cone"), "relay", ("libnice", "libnice")),
    }
    assert select(topo, BUILTIN, dtls_ok=lambda a, b: b != "aiortc" or a != "pion").cases[-2].stacks == ("pion", "pion")
