"""natkit/ice/diagnose.py: what a set of candidates is missing."""

from __future__ import annotations

from natkit.ice.candidates import Candidate
from natkit.ice.diagnose import diagnose
from natkit.ice.pasted import parse_candidates


def codes(lines: list[str], **kw: object) -> set[str]:
    return {f.code for f in diagnose([Candidate.parse(x) for x in lines], **kw)}  # type: ignore[arg-type]


HOST = "candidate:1 1 udp 2130706431 192.168.1.5 5000 typ host"
MDNS = "candidate:1 1 udp 2130706431 0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff.local 5000 typ host"
SRFLX = "candidate:2 1 udp 1694498815 8.8.4.4 40000 typ srflx raddr 192.168.1.5 rport 5000"
RELAY_UDP = "candidate:3 1 udp 41885439 8.8.8.8 50000 typ relay raddr 8.8.4.4 rport 40000"
RELAY_TCP = "candidate:4 1 udp 25108223 8.8.8.8 50002 typ relay raddr 8.8.4.4 rport 40001"
RELAY_PRIVATE = "candidate:5 1 udp 41885439 10.0.0.9 50000 typ relay raddr 8.8.4.4 rport 4"


def test_complete_set_has_no_problems() -> None:
    assert codes([HOST, SRFLX, RELAY_UDP]) == set()


def test_missing_srflx_and_relay() -> None:
    assert codes([HOST]) >= {"no-srflx", "no-relay", "no-routable"}


def test_only_mdns_hosts() -> None:
    found = codes([MDNS])
    assert "mdns-only" in found and "no-routable" not in found


def test_relay_only_over_tcp() -> None:
    assert "relay-tcp-only" in codes([HOST, SRFLX, RELAY_TCP])
    assert "relay-tcp-only" not in codes([HOST, SRFLX, RELAY_TCP, RELAY_UDP])


def test_private_relay_address() -> None:
    assert "private-relay" in codes([HOST, SRFLX, RELAY_PRIVATE])
    relay = Candidate.parse(RELAY_PRIVATE)
    relay.url = "turn:10.0.0.1"
    found = {f.code for f in diagnose([relay], private_servers={"turn:10.0.0.1"})}
    assert "private-relay" not in found


def test_public_host_without_srflx_is_only_info() -> None:
    findings = diagnose([Candidate.parse("candidate:1 1 udp 2130706431 8.8.8.8 5 typ host")])
    assert [f.severity for f in findings if f.code == "no-srflx"] == ["info"]


def test_sdp_level_findings() -> None:
    sdp = "v=0\nm=audio 9 RTP/AVP 0\na=mid:0\n" + "a=" + HOST + " ufrag old1\n"
    sdp += "a=candidate:nonsense\n"
    parsed = parse_candidates(sdp)
    found = {f.code for f in diagnose(parsed.candidates, parsed=parsed)}
    assert {"no-ice-ufrag", "no-ice-pwd", "malformed-lines"} <= found
    sdp2 = "v=0\nm=audio 9 RTP/AVP 0\na=ice-ufrag:new1\na=ice-pwd:xxxxxxxxxxxxxxxxxxxxxxxx\n" \
        "a=" + HOST + " ufrag old1\n"
    parsed2 = parse_candidates(sdp2)
    assert "ufrag-mismatch" in {f.code for f in diagnose(parsed2.candidates, parsed=parsed2)}


def test_errors_sort_first() -> None:
    findings = diagnose([Candidate.parse(x) for x in (MDNS, RELAY_PRIVATE)])
    severities = [f.severity for f in findings]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    assert severities[0] == "error"
