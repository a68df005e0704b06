"""The decision logic on recorded exchanges (sans-IO): every NAT type and every trap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natkit.nat.classify import (
    AD,
    APD,
    EI,
    NAT_TYPES,
    NO_RFC5780,
    NONE,
    UNKNOWN,
    Exchange,
    Observations,
    Reply,
    ServerAnswer,
    classify,
    direct_path,
    ice_advice,
    usable_other,
)

A1, P1 = "203.0.113.10", 3478
A2, P2 = "198.51.100.10", 3479
PRIMARY, ALT, ALT_IP, ALT_PORT = (A1, P1), (A2, P2), (A2, P1), (A1, P2)
LOCAL = ("10.0.0.2", 40000)
PUB = "203.0.113.1"


def binding(mapped: tuple[str, int], other: tuple[str, int] | None = ALT, **kw: object) -> Exchange:
    return Exchange(
        "binding",
        PRIMARY,
        PRIMARY,
        0,
        Reply(PRIMARY, mapped, other=other, origin=PRIMARY, rtt=0.001, **kw),
    )  # type: ignore[arg-type]


def mapping_tests(
    m2: tuple[str, int] | None, m3: tuple[str, int] | None, m4: tuple[str, int] | None
) -> tuple[Exchange, ...]:
    out = []
    for name, dest, m in (
        ("mapping-2", ALT_IP, m2),
        ("mapping-3", ALT, m3),
        ("mapping-4", ALT_PORT, m4),
    ):
        out.append(
            Exchange(name, dest, dest, 0, Reply(dest, m, origin=dest, rtt=0.001) if m else None)
        )
    return tuple(out)


def filtering(
    f2: tuple[str, int] | str | None, f3: tuple[str, int] | str | None
) -> tuple[Exchange, ...]:
    """f2/f3: the address the answer came from, None for no answer."""
    out = []
    for name, change, expect, src in (
        ("filtering-2", 6, ALT, f2),
        ("filtering-3", 2, ALT_PORT, f3),
    ):
        reply = None
        if src is not None:
            reply = Reply(src, (PUB, 50000), origin=src, rtt=0.001)
        out.append(Exchange(name, PRIMARY, expect, change, reply, 3))
    return tuple(out)


def observe(
    m1: tuple[str, int],
    maps: tuple[Exchange, ...],
    filts: tuple[Exchange, ...],
    hairpin: bool | None = False,
    local: tuple[str, int] = LOCAL,
    test1: Exchange | None = None,
) -> Observations:
    server = ServerAnswer("stun:203.0.113.10", PRIMARY, test1 or binding(m1))
    return Observations(4, local, (server,), 0, maps, filts, hairpin)


M = (PUB, 40000)


@pytest.mark.parametrize(
    ("maps", "filts", "mapping", "filt", "nat_type"),
    [
        (mapping_tests(M, M, M), filtering(ALT, ALT_PORT), EI, EI, "full-cone"),
        (mapping_tests(M, M, M), filtering(None, ALT_PORT), EI, AD, "restricted-cone"),
        (mapping_tests(M, M, M), filtering(None, None), EI, APD, "port-restricted-cone"),
        (mapping_tests((PUB, 40001), (PUB, 40001), M), filtering(None, None), AD, APD, "symmetric"),
        (
            mapping_tests((PUB, 40001), (PUB, 40002), (PUB, 40003)),
            filtering(None, None),
            APD,
            APD,
            "symmetric",
        ),
        # Same mapping toward the other IP but a new one toward the other port: port-dependent.
        (mapping_tests(M, M, (PUB, 40009)), filtering(None, None), APD, APD, "symmetric"),
    ],
)
def test_nat_types(
    maps: tuple[Exchange, ...], filts: tuple[Exchange, ...], mapping: str, filt: str, nat_type: str
) -> None:
    v = classify(observe(M, maps, filts))
    assert (v.mapping, v.filtering, v.nat_type) == (mapping, filt, nat_type)
    assert v.public == M
    assert v.reachable and not v.alg and not v.udp_blocked


def test_no_nat_open_and_firewall() -> None:
    me = ("192.0.2.2", 40000)
    maps = mapping_tests(me, me, me)
    v = classify(observe(me, maps, filtering(ALT, ALT_PORT), local=me))
    assert (v.mapping, v.filtering, v.nat_type) == (NONE, EI, "open")
    v = classify(observe(me, maps, filtering(None, None), local=me))
    assert (v.mapping, v.filtering, v.nat_type) == (NONE, APD, "symmetric-firewall")


def test_same_ip_other_port_is_a_nat_not_open() -> None:
    me = ("192.0.2.2", 40000)
    rewritten = ("192.0.2.2", 41000)
    maps = mapping_tests(rewritten, rewritten, rewritten)
    v = classify(observe(rewritten, maps, filtering(ALT, ALT_PORT), local=me))
    assert v.mapping == EI and v.nat_type == "full-cone"
    assert any("port was changed" in n for n in v.notes)


def test_server_ignoring_change_request_is_never_full_cone() -> None:
    """The pystun trap: every answer comes from the primary address."""
    v = classify(observe(M, mapping_tests(M, M, M), filtering(PRIMARY, PRIMARY)))
    assert v.filtering == UNKNOWN
    assert v.nat_type == "unknown"
    assert v.reason == NO_RFC5780
    # Only the change-port test ignored: still not address-dependent filtering.
    v = classify(observe(M, mapping_tests(M, M, M), filtering(None, PRIMARY)))
    assert (v.filtering, v.nat_type) == (UNKNOWN, "unknown")


def test_change_request_answered_with_an_error() -> None:
    f = tuple(
        Exchange(e.name, e.dest, e.expect, e.change, Reply(PRIMARY, None, error=420))
        for e in filtering(None, None)
    )
    v = classify(observe(M, mapping_tests(M, M, M), f))
    assert v.filtering == UNKNOWN and v.reason == NO_RFC5780


def test_answer_from_an_unexpected_address() -> None:
    # Change IP+port answered from the alternate IP but the primary port: not a pass.
    v = classify(observe(M, mapping_tests(M, M, M), filtering((A2, P1), None)))
    assert v.filtering == UNKNOWN and v.nat_type == "unknown"
    assert any("expected" in n for n in v.notes)


def test_response_origin_disagreeing_with_sender_is_noted_sender_decides() -> None:
    f2 = Exchange("filtering-2", PRIMARY, ALT, 6, Reply(ALT, (PUB, 5), origin=("10.9.9.9", 1)))
    f3 = filtering(None, ALT_PORT)[1]
    v = classify(observe(M, mapping_tests(M, M, M), (f2, f3)))
    assert v.filtering == EI
    assert any("RESPONSE-ORIGIN" in n for n in v.notes)


def test_server_without_other_address() -> None:
    obs = Observations(4, LOCAL, (ServerAnswer("s", PRIMARY, binding(M, other=None)),), None)
    v = classify(obs)
    assert v.public == M
    assert (v.mapping, v.filtering, v.nat_type) == (UNKNOWN, UNKNOWN, "unknown")
    assert v.reason is not None and NO_RFC5780 in v.reason
    assert usable_other(obs.servers[0]) is None


@pytest.mark.parametrize("other", [(A1, P2), (A2, P1), ("2001:db8::1", 3479)])
def test_other_address_that_cannot_serve_rfc5780(other: tuple[str, int]) -> None:
    assert usable_other(ServerAnswer("s", PRIMARY, binding(M, other=other))) is None


def test_loss_of_every_mapping_answer_is_unknown_not_symmetric() -> None:
    v = classify(observe(M, mapping_tests(None, None, None), filtering(None, None)))
    assert v.mapping == UNKNOWN
    # And silence from filtering tests is not filtering when the alternate never answered.
    assert v.filtering == UNKNOWN
    assert v.nat_type == "unknown"


def test_mapping_3_lost_is_unknown() -> None:
    v = classify(observe(M, mapping_tests((PUB, 40001), None, M), filtering(None, None)))
    assert v.mapping == UNKNOWN
    assert v.filtering == APD  # the alternate answered mapping-2, so silence is filtering


def test_filtering_3_lost_while_2_passed_is_still_endpoint_independent() -> None:
    v = classify(observe(M, mapping_tests(M, M, M), filtering(ALT, None)))
    assert v.filtering == EI and v.nat_type == "full-cone"
    assert any("loss" in n for n in v.notes)


def test_alg_rewriting_mapped_address() -> None:
    t1 = binding(M, plain_mapped=LOCAL)
    v = classify(observe(M, mapping_tests(M, M, M), filtering(None, None), test1=t1))
    assert v.alg is True
    assert v.public == M  # XOR-MAPPED-ADDRESS is the one an ALG does not find
    assert v.nat_type == "port-restricted-cone"
    v = classify(
        observe(M, mapping_tests(M, M, M), filtering(None, None), test1=binding(M, plain_mapped=M))
    )
    assert v.alg is False


def test_udp_blocked_and_unreachable() -> None:
    silent = Exchange("binding", PRIMARY, PRIMARY, 0, None, 4)
    tcp = Reply(PRIMARY, (PUB, 61000), rtt=0.001)
    v = classify(Observations(4, LOCAL, (ServerAnswer("s", PRIMARY, silent, tcp, "tcp"),)))
    assert v.nat_type == "udp-blocked" and v.udp_blocked and v.reachable
    assert v.public == (PUB, 61000)
    v = classify(Observations(4, LOCAL, (ServerAnswer("s", PRIMARY, silent, None, "tcp"),)))
    assert v.nat_type == "unknown" and not v.reachable and v.public is None


def test_servers_disagreeing_is_endpoint_dependent_without_rfc5780() -> None:
    b = ("192.0.2.50", 3478)
    s1 = ServerAnswer("a", PRIMARY, binding(M, other=None))
    s2 = ServerAnswer("b", b, Exchange("binding", b, b, 0, Reply(b, (PUB, 40777))))
    v = classify(Observations(4, LOCAL, (s1, s2)))
    assert v.mappings_agree is False
    assert v.nat_type == "symmetric" and v.mapping == UNKNOWN
    s2 = ServerAnswer("b", b, Exchange("binding", b, b, 0, Reply(b, M)))
    v = classify(Observations(4, LOCAL, (s1, s2)))
    assert v.mappings_agree is True and v.nat_type == "unknown"


def test_hairpinning_is_reported() -> None:
    v = classify(observe(M, mapping_tests(M, M, M), filtering(None, None), hairpin=True))
    assert v.hairpinning is True


def test_direct_path_table() -> None:
    assert direct_path("symmetric", "symmetric") is False
    assert direct_path("symmetric", "port-restricted-cone") is False
    assert direct_path("port-restricted-cone", "symmetric") is False
    assert direct_path("symmetric", "restricted-cone") is True
    assert direct_path("full-cone", "symmetric") is True
    assert direct_path("udp-blocked", "open") is False
    assert direct_path("unknown", "open") is None
    advice = ice_advice("symmetric")
    assert advice["turn_needed_with"] == ["port-restricted-cone", "symmetric"]
    assert ice_advice("open")["turn_needed_with"] == []


# -- property: no verdict without the evidence for it -------------------------------------------

_SOURCES = st.sampled_from([PRIMARY, ALT, ALT_IP, ALT_PORT, ("192.0.2.99", 9), None])
_MAPPED = st.sampled_from([M, (PUB, 40001), (PUB, 40002), LOCAL])


@st.composite
def _exchange(
    draw: st.DrawFn, name: str, dest: tuple[str, int], expect: tuple[str, int], change: int
) -> Exchange:
    src = draw(_SOURCES)
    if src is None:
        return Exchange(name, dest, expect, change, None, 4)
    error = draw(st.sampled_from([None, None, None, 420]))
    return Exchange(
        name,
        dest,
        expect,
        change,
        Reply(
            src,
            None if error else draw(_MAPPED),
            error=error,
            origin=draw(st.sampled_from([None, src, PRIMARY])),
        ),
    )


@st.composite
def _observations(draw: st.DrawFn) -> Observations:
    maps = (
        draw(_exchange("mapping-2", ALT_IP, ALT_IP, 0)),
        draw(_exchange("mapping-3", ALT, ALT, 0)),
        draw(_exchange("mapping-4", ALT_PORT, ALT_PORT, 0)),
    )
    filts = (
        draw(_exchange("filtering-2", PRIMARY, ALT, 6)),
        draw(_exchange("filtering-3", PRIMARY, ALT_PORT, 2)),
    )
    m1 = draw(_MAPPED)
    return observe(m1, maps, filts, hairpin=draw(st.sampled_from([None, True, False])))


@settings(max_examples=400, deadline=None)
@given(_observations())
def test_every_verdict_rests_on_evidence(obs: Observations) -> None:
    v = classify(obs)
    assert v.nat_type in NAT_TYPES
    assert v.mapping in (NONE, EI, AD, APD, UNKNOWN) and v.filtering in (EI, AD, APD, UNKNOWN)
    f2, f3 = obs.filtering_tests
    if v.filtering == EI:  # only a response that really came from the other IP and port
        assert f2.reply is not None and f2.reply.source == ALT and f2.reply.error is None
    if v.filtering == AD:
        assert f3.reply is not None and f3.reply.source == ALT_PORT and f3.reply.error is None
        assert f2.reply is None
    if v.filtering == APD:  # silence counts only when the alternate endpoints were shown alive
        assert f2.reply is None and f3.reply is None
        assert any(e.reply is not None and e.reply.mapped for e in obs.mapping_tests)
    if v.mapping == EI:
        m2 = obs.mapping_tests[0].reply
        assert m2 is not None and m2.mapped == v.public and m2.source == ALT_IP
    if v.nat_type == "full-cone":
        assert (v.mapping, v.filtering) == (EI, EI)
    if any(e.reply is not None and e.reply.source == PRIMARY for e in obs.filtering_tests):
        # A server that ignored CHANGE-REQUEST never yields a cone verdict from silence.
        assert v.filtering in (EI, UNKNOWN)
