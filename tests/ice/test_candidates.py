"""natkit/ice/candidates.py: grammar, lossless round trip, validation, input formats."""

from __future__ import annotations

import json

import pytest
from aioice import Candidate as AioCandidate
from hypothesis import given
from hypothesis import strategies as st

from natkit.errors import UsageError
from natkit.ice.candidates import Candidate, CandidateSyntaxError
from natkit.ice.pasted import parse_candidates

# As Chrome, Firefox and aiortc write them.
CHROME = [
    "candidate:3913869498 1 udp 2113937151 5c4e9bd5-1a7b-4a45-9a4e-3b4f8c0d52a5.local 56320 "
    "typ host generation 0 ufrag sK/p network-cost 999",
    "candidate:842163049 1 udp 1677729535 203.0.113.5 46154 typ srflx raddr 0.0.0.0 rport 0 "
    "generation 0 ufrag sK/p network-cost 999",
    "candidate:1536913806 1 tcp 1518280447 192.168.1.10 9 typ host tcptype active "
    "generation 0 network-id 1 network-cost 10",
    "candidate:2442434543 1 udp 41885439 198.51.100.9 61234 typ relay raddr 203.0.113.5 "
    "rport 46154 generation 0 ufrag sK/p network-id 1 network-cost 10",
]
FIREFOX = [
    "candidate:0 1 UDP 2122252543 9f4b0d5e-2c3f-4a8e-b1d6-7e8f9a0b1c2d.local 59867 typ host",
    "candidate:2 1 TCP 2105524479 9f4b0d5e-2c3f-4a8e-b1d6-7e8f9a0b1c2d.local 9 typ host "
    "tcptype active",
    "candidate:1 1 UDP 1686052863 203.0.113.5 59867 typ srflx raddr 0.0.0.0 rport 0",
    "candidate:3 1 UDP 92217343 198.51.100.9 51432 typ relay raddr 198.51.100.9 rport 51432",
]


@pytest.mark.parametrize("line", CHROME + FIREFOX)
def test_real_browser_lines_round_trip_and_validate(line: str) -> None:
    cand = Candidate.parse(line)
    assert cand.to_line() == line
    assert cand.to_line("a=candidate:") == "a=" + line
    errors, _ = cand.validate()
    assert errors == []


def test_fields_of_a_chrome_srflx() -> None:
    c = Candidate.parse(CHROME[1])
    assert (c.foundation, c.component, c.transport, c.priority) == ("842163049", 1, "udp",
                                                                   1677729535)
    assert (c.address, c.port, c.type) == ("203.0.113.5", 46154, "srflx")
    assert (c.related_address, c.related_port) == ("0.0.0.0", 0)
    assert c.extensions == {"generation": "0", "ufrag": "sK/p", "network-cost": "999"}
    d = c.as_dict()
    assert d["priority_parts"] == {"type_preference": 100, "local_preference": 30,
                                   "component": 1}
    assert d["scope"] == "documentation" and d["ip_version"] == 4


def test_mdns_tcp_active_and_relay_protocol() -> None:
    host = Candidate.parse(CHROME[0])
    assert host.scope == "mdns" and host.ip_version is None
    tcp = Candidate.parse(CHROME[2])
    assert tcp.tcptype == "active" and tcp.port == 9
    assert tcp.extensions == {"generation": "0", "network-id": "1", "network-cost": "10"}
    relay = Candidate.parse(CHROME[3])
    assert relay.relay_transport == "udp"  # libwebrtc type preference 2


def test_unknown_extensions_kept_in_order() -> None:
    line = "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host zeta 1 generation 0 alpha x"
    c = Candidate.parse(line)
    assert list(c.extensions) == ["zeta", "generation", "alpha"]
    assert c.to_line() == line


def test_prefixes_accepted() -> None:
    bare = "1 1 udp 2130706431 10.0.0.1 5000 typ host"
    for text in (bare, "candidate:" + bare, "a=candidate:" + bare, "  a=candidate:" + bare):
        assert Candidate.parse(text).to_line() == "candidate:" + bare


def test_changed_related_address_is_written_in_place() -> None:
    c = Candidate.parse("candidate:1 1 udp 1686052607 1.2.3.4 5 typ srflx raddr 0.0.0.0 "
                        "rport 0 generation 0")
    c.related_address, c.related_port = "10.0.0.2", 6000
    assert c.to_line().endswith("typ srflx raddr 10.0.0.2 rport 6000 generation 0")


@pytest.mark.parametrize(("line", "message"), [
    ("candidate:1 1 udp", "at least 8 fields"),
    ("candidate:1 x udp 1 10.0.0.1 5 typ host", "component 'x' is not a number"),
    ("candidate:1 1 udp 1 10.0.0.1 5 type host", "expected 'typ'"),
    ("candidate:1 1 udp 1 10.0.0.1 5 typ host generation", "has no value"),
    ("candidate:1 1 udp 12345678901 10.0.0.1 5 typ host", "more than 10 digits"),
    ("candidate:1 1 udp 1 10.0.0.1 99x typ host", "port '99x'"),
])
def test_malformed_lines(line: str, message: str) -> None:
    with pytest.raises(CandidateSyntaxError, match=message):
        Candidate.parse(line)


@pytest.mark.parametrize(("line", "message"), [
    ("candidate:1 1 udp 4294967295 10.0.0.1 5 typ host", "priority 4294967295 out of range"),
    ("candidate:1 1 udp 0 10.0.0.1 5 typ host", "priority 0 out of range"),
    ("candidate:1 1 udp 1686052607 1.2.3.4 5 typ srflx", "raddr missing"),
    ("candidate:1 1 udp 1686052607 1.2.3.4 5 typ relay raddr 1.2.3.4", "rport missing"),
    ("candidate:1 300 udp 2130706431 10.0.0.1 5 typ host", "component 300 out of range"),
    ("candidate:1 1 tcp 2130706431 10.0.0.1 5 typ host", "tcptype missing"),
    ("candidate:1 1 tcp 2130706431 10.0.0.1 5 typ host tcptype both", "tcptype 'both'"),
    ("candidate:1 1 udp 2130706431 10.0.0.1 5 typ host tcptype active", "tcptype on a udp"),
    ("candidate:1 1 udp 2130706431 10.0.0.1 5 typ bogus", "type 'bogus'"),
    ("candidate:1 1 udp 2130706431 10.0.0.1 99999 typ host", "port 99999 out of range"),
    ("candidate:a-b 1 udp 2130706431 10.0.0.1 5 typ host", "foundation 'a-b'"),
    ("candidate:1 1 udp 2130706431 10.0.0.1 0 typ host", "port 0 on a UDP"),
    ("candidate:1 1 udp 2130706431 224.0.0.1 5 typ host", "multicast"),
    ("candidate:1 1 udp 2130706431 not_a_host! 5 typ host", "neither an IP"),
])
def test_validation_messages(line: str, message: str) -> None:
    errors, _ = Candidate.parse(line).validate()
    assert any(message in e for e in errors), errors


def test_priority_component_mismatch_is_a_warning() -> None:
    # priority encodes component 1 (low byte 255) but the candidate says component 2
    errors, warnings = Candidate.parse(
        "candidate:1 2 udp 2130706431 10.0.0.1 5 typ host").validate()
    assert errors == [] and any("encodes component 1" in w for w in warnings)


def test_against_aioice() -> None:
    """aioice writes and reads candidates independently: both must agree with us."""
    produced = AioCandidate(
        foundation="ca3a6d1d1d3e4f8e0c7b5a6f2d3e4a1b", component=1, transport="udp",
        priority=1694498815, host="203.0.113.9", port=40000, type="srflx",
        related_address="10.0.0.5", related_port=5000, generation=0,
    ).to_sdp()
    ours = Candidate.parse(produced)
    assert ours.to_line("") == produced
    back = AioCandidate.from_sdp(ours.to_line(""))
    assert (back.host, back.port, back.type, back.related_address, back.related_port) == (
        "203.0.113.9", 40000, "srflx", "10.0.0.5", 5000)
    assert ours.validate() == ([], [])


tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8).filter(
    lambda t: t not in ("raddr", "rport", "tcptype"))


@given(
    foundation=st.text(alphabet="ABCxyz019+/", min_size=1, max_size=32),
    component=st.integers(1, 256),
    priority=st.integers(1, 2**31 - 1),
    port=st.integers(0, 65535),
    ext=st.lists(st.tuples(tokens, st.text(alphabet="abc0123/+", min_size=1, max_size=6)),
                 max_size=5),
    kind=st.sampled_from(["host", "srflx", "prflx", "relay"]),
)
def test_round_trip_property(foundation: str, component: int, priority: int, port: int,
                             ext: list[tuple[str, str]], kind: str) -> None:
    related = " raddr 10.1.2.3 rport 7" if kind != "host" else ""
    tail = "".join(f" {k} {v}" for k, v in ext)
    line = f"candidate:{foundation} {component} UDP {priority} 192.0.2.1 {port} typ {kind}" \
        f"{related}{tail}"
    assert Candidate.parse(line).to_line() == line


def test_lines_input_with_comments_and_end_marker() -> None:
    text = "# from a trickle log\n" + "\n".join(CHROME) + "\na=end-of-candidates\nbogus line\n"
    parsed = parse_candidates(text)
    assert parsed.format == "lines" and len(parsed.candidates) == 4
    assert parsed.end_of_candidates
    assert [m.source_line for m in parsed.malformed] == [7]


def test_json_rtcicecandidateinit_list_and_end_of_candidates() -> None:
    items = [{"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "sK/p"}
             for c in CHROME[:2]]
    items.append({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0})
    parsed = parse_candidates(json.dumps(items))
    assert parsed.format == "json" and len(parsed.candidates) == 2
    assert parsed.candidates[0].mid == "0" and parsed.candidates[0].mline_index == 0
    assert parsed.candidates[0].ufrag == "sK/p"
    assert parsed.end_of_candidates
    single = parse_candidates(json.dumps({"candidate": FIREFOX[0], "sdpMid": "1"}))
    assert single.candidates[0].mid == "1"
    wrapped = parse_candidates(json.dumps({"candidates": FIREFOX}))
    assert len(wrapped.candidates) == 4


def test_json_errors_are_usage_errors_with_position() -> None:
    with pytest.raises(UsageError, match=r"<input>:2:1: invalid JSON"):
        parse_candidates('[{"candidate": "x"},\n]')
    with pytest.raises(UsageError, match=r"\[0\]\.sdpMLineIndex"):
        parse_candidates('[{"candidate": "", "sdpMLineIndex": "zero"}]')
    with pytest.raises(UsageError, match=r"\[1\]: expected an RTCIceCandidateInit"):
        parse_candidates('[{"candidate": ""}, 5]')
    with pytest.raises(UsageError, match=r"^<input>: \$: expected an RTCIceCandidateInit"):
        parse_candidates('{"sdpMid": "0"}')
