"""The expectation model against libwebrtc's published ICE matrix (docs/kmatrix.md).

libwebrtc's ``p2p_transport_channel_unittest.cc`` (``P2PTransportChannelMatrixTest::kMatrix``)
gives, for each pair of its network configurations, the candidate types the connection ends
on (rows: the originator, columns: the receiver), or nothing where the test is not implemented.
Its NATs are libwebrtc's NATServer types; here they are built from natkit's behaviours. A cell
whose result has no relay candidate means a direct path; a cell with a relay means only TURN
joined the two. The model must agree on every configuration both have, or the disagreement
needs a written reason in :data:`REASONS`.
"""

from __future__ import annotations

import pytest

from natkit.lab.expect import Side, expect
from natkit.lab.nats import Filtering, Mapping, NatBehaviour

EIM, APDM = Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT
EIF, ADF, APDF = Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT

# libwebrtc's NATServer types (rtc::NATType) as natkit behaviours.
_OPEN_CONE = NatBehaviour("NAT_OPEN_CONE", EIM, EIF)
CONFIGS: dict[str, NatBehaviour] = {
    "OPEN": NatBehaviour("OPEN", None, None),
    "NAT_FULL_CONE": _OPEN_CONE,
    "NAT_ADDR_RESTRICTED": NatBehaviour("NAT_ADDR_RESTRICTED", EIM, ADF),
    "NAT_PORT_RESTRICTED": NatBehaviour("NAT_PORT_RESTRICTED", EIM, APDF),
    "NAT_SYMMETRIC": NatBehaviour("NAT_SYMMETRIC", APDM, APDF),
    # Two cascaded NATs: the inner one is always an open cone; the outer an open cone or symmetric.
    "NAT_DOUBLE_CONE": NatBehaviour("NAT_DOUBLE_CONE", EIM, EIF, inner=_OPEN_CONE),
    "NAT_SYMMETRIC_THEN_CONE": NatBehaviour("NAT_SYMMETRIC_THEN_CONE", APDM, APDF, inner=_OPEN_CONE),
    # A public address behind a firewall that drops UDP (libwebrtc's BLOCK_UDP).
    "BLOCK_UDP": NatBehaviour("BLOCK_UDP", None, None, block_udp=True),
}
ORDER = list(CONFIGS)

# kMatrix's cells for the configurations above, as libwebrtc writes them: local/remote candidate
# types (L host, S stun/srflx, P prflx, R relay; U udp, T tcp); None = not implemented there.
KMATRIX: dict[str, list[str | None]] = {
    #                          OPEN    CONE    ADDR    PORT    SYMM    2CON    SCON    !UDP
    "OPEN":                  ["LULU", "LUSU", "LUSU", "LUSU", "LUPU", "LUSU", "LUPU", "LTPT"],
    "NAT_FULL_CONE":         ["SULU", "SUSU", "SUSU", "SUSU", "SUPU", "SUSU", "SUPU", None],
    "NAT_ADDR_RESTRICTED":   ["SULU", "SUSU", "SUSU", "SUSU", "SUPU", "SUSU", "SUPU", None],
    "NAT_PORT_RESTRICTED":   ["SULU", "SUSU", "SUSU", "SUSU", "RUPU", "SUSU", "RUPU", None],
    "NAT_SYMMETRIC":         ["PULU", "PUSU", "PUSU", "PURU", "PURU", "PUSU", "PURU", None],
    "NAT_DOUBLE_CONE":       ["SULU", "SUSU", "SUSU", "SUSU", "SUPU", "SUSU", "SUPU", None],
    "NAT_SYMMETRIC_THEN_CONE": ["PULU", "PUSU", "PUSU", "PURU", "PURU", "PUSU", "PURU", None],
    "BLOCK_UDP":             ["LTPT", None, None, None, None, None, None, "LTPT"],
}

# libwebrtc's agents in that test: ICE-TCP both ways (its test port allocator listens, so a
# passive TCP host candidate is there to dial: LTPT, host/TCP to prflx/TCP).
LIBWEBRTC = Side("libwebrtc", tcp=("active", "passive"))

# Where the model disagrees with kMatrix, and why. A disagreement missing here fails the test.
# (OPEN x BLOCK_UDP and BLOCK_UDP x BLOCK_UDP were here until the model played ICE-TCP.)
REASONS: dict[frozenset[str], str] = {}


def _cell(a: str, b: str) -> str | None:
    return KMATRIX[a][ORDER.index(b)]


def _direct(a: str, b: str) -> bool:
    """Whether natkit's model connects the pair without a relay (host or srflx path)."""
    return any(expect(CONFIGS[a], CONFIGS[b], p, sides=(LIBWEBRTC, LIBWEBRTC)).connected for p in ("host", "srflx"))


PAIRS = [(a, b) for a in ORDER for b in ORDER if _cell(a, b) is not None]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_model_agrees_with_kmatrix_or_says_why(a: str, b: str) -> None:
    cell = _cell(a, b)
    assert cell is not None
    libwebrtc_direct = "R" not in cell
    ours = _direct(a, b)
    if ours == libwebrtc_direct:
        return
    reason = REASONS.get(frozenset([a, b]))
    assert reason, f"{a} x {b}: kMatrix says {cell} ({'direct' if libwebrtc_direct else 'relay'}), the model says " \
                   f"{'direct' if ours else 'needs a relay'}, and no reason is written down"


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_relay_joins_every_pair_libwebrtc_joins(a: str, b: str) -> None:
    assert expect(CONFIGS[a], CONFIGS[b], "relay").connected


def test_every_written_reason_is_still_a_disagreement() -> None:
    for pair in REASONS:
        a, b = (sorted(pair) * 2)[:2]
        cell = _cell(a, b) or _cell(b, a)
        assert cell is not None and _direct(a, b) != ("R" not in cell), f"{sorted(pair)}: the reason is stale"
