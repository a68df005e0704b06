"""Packet evidence from a capture (sans-IO: pcaps written here with scapy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from natkit.lab.evidence import Flows, claimed_route, judge, judge_browser, read_capture
from natkit.stun import Attr, Class, Message, Method, encode_channel_data

pytestmark = pytest.mark.timeout(30)

TURN = ("203.0.113.4", 3478)
DTLS = bytes([23, 0xFE, 0xFD]) + bytes(20)  # an application-data record header + body
A_PUB, B_PUB = ("203.0.113.12", 40000), ("203.0.113.18", 50000)


def _udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> Ether:
    return Ether() / IP(src=src[0], dst=dst[0]) / UDP(sport=src[1], dport=dst[1]) / payload


def _tcp(src: tuple[str, int], dst: tuple[str, int], seq: int, payload: bytes = b"", flags: str = "PA") -> Ether:
    return Ether() / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], seq=seq, flags=flags) / payload


def _relay_peer(relayed: tuple[str, int], mapped: tuple[str, int], transport: str) -> dict:
    return {
        "selected": {
            "local": {"type": "relay", "address": relayed[0], "port": relayed[1], "relay_transport": transport},
            "remote": {"type": "relay", "address": TURN[0], "port": 60001},
        },
        "relays": [{"transport": transport, "relayed": list(relayed), "mapped": list(mapped)}],
    }


def test_direct_udp_dtls_is_counted_per_flow(tmp_path: Path) -> None:
    pcap = tmp_path / "a.pcap"
    stun = Message(Method.BINDING, Class.REQUEST).encode()
    wrpcap(str(pcap), [_udp(A_PUB, B_PUB, DTLS), _udp(B_PUB, A_PUB, DTLS), _udp(A_PUB, B_PUB, stun)])
    flows = read_capture(pcap, TURN)
    assert flows.packets == 3
    assert flows.direct_between(A_PUB, B_PUB) == 2
    caller = {"selected": {"local": {"type": "host", "address": "10.64.2.10", "port": 1}, "remote": {"type": "srflx", "address": B_PUB[0], "port": B_PUB[1]}}}
    callee = {"selected": {"local": {"type": "host", "address": "10.64.8.10", "port": 2}, "remote": {"type": "prflx", "address": A_PUB[0], "port": A_PUB[1]}}}
    ev = judge(flows, caller=caller, callee=callee, caller_lan="10.64.2.0/24", caller_public=A_PUB[0], turn=TURN)
    assert ev["route"] == "direct" and ev["consistent"] and ev["packets"] == 2


def test_relay_over_udp_channel_data_and_send_indication(tmp_path: Path) -> None:
    pcap = tmp_path / "r.pcap"
    send = Message(Method.SEND, Class.INDICATION).add(Attr.XOR_PEER_ADDRESS, ("203.0.113.4", 60001)).add(Attr.DATA, DTLS)
    wrpcap(
        str(pcap),
        [
            _udp(A_PUB, TURN, encode_channel_data(0x4000, DTLS)),
            _udp(TURN, A_PUB, encode_channel_data(0x4000, DTLS)),
            _udp(A_PUB, TURN, send.encode()),
            _udp(A_PUB, TURN, encode_channel_data(0x4000, b"\x00\x01not dtls")),
        ],
    )
    flows = read_capture(pcap, TURN)
    assert flows.relayed[("udp", A_PUB)] == 3
    assert flows.direct_between(A_PUB, TURN) == 0
    caller = _relay_peer(("203.0.113.4", 60000), A_PUB, "udp")
    ev = judge(flows, caller=caller, callee={}, caller_lan="10.64.2.0/24", caller_public=A_PUB[0], turn=TURN)
    assert ev["route"] == "relay" and ev["consistent"]


def test_relay_over_tcp_is_reassembled_in_order(tmp_path: Path) -> None:
    pcap = tmp_path / "t.pcap"
    frame = encode_channel_data(0x4001, DTLS, pad=True)
    two = frame + frame
    isn = 1000
    packets = [
        _tcp(A_PUB, TURN, isn, flags="S"),
        _tcp(A_PUB, TURN, isn + 1, two[:7]),
        _tcp(A_PUB, TURN, isn + 1, two[:7]),  # a retransmission is not counted twice
        _tcp(A_PUB, TURN, isn + 8, two[7:]),
    ]
    wrpcap(str(pcap), packets)
    flows = read_capture(pcap, TURN)
    assert flows.relayed[("tcp", A_PUB)] == 2
    caller = _relay_peer(("203.0.113.4", 60000), A_PUB, "tcp")
    ev = judge(flows, caller=caller, callee={}, caller_lan="10.64.2.0/24", caller_public=A_PUB[0], turn=TURN)
    assert ev["route"] == "relay" and ev["consistent"]


def test_a_selected_relay_pair_without_relayed_packets_is_a_contradiction(tmp_path: Path) -> None:
    pcap = tmp_path / "c.pcap"
    wrpcap(str(pcap), [_udp(A_PUB, B_PUB, DTLS)])
    flows = read_capture(pcap, TURN)
    caller = _relay_peer(("203.0.113.4", 60000), A_PUB, "udp")
    caller["selected"]["remote"] = {"type": "relay", "address": B_PUB[0], "port": B_PUB[1]}
    callee = {"selected": {"remote": {"address": A_PUB[0], "port": A_PUB[1]}}}
    ev = judge(flows, caller=caller, callee=callee, caller_lan="10.64.2.0/24", caller_public=A_PUB[0], turn=TURN)
    assert ev["claimed"] == "relay" and ev["route"] == "direct" and not ev["consistent"]


def test_lan_pair_must_leave_nothing_on_the_internet_segment(tmp_path: Path) -> None:
    caller = {"selected": {"local": {"type": "host", "address": "10.64.12.10", "port": 1}, "remote": {"type": "host", "address": "10.64.12.11", "port": 2}}}
    pcap = tmp_path / "l.pcap"
    wrpcap(str(pcap), [_udp(("203.0.113.22", 4000), TURN, encode_channel_data(0x4000, DTLS))])
    ev = judge(read_capture(pcap, TURN), caller=caller, callee={}, caller_lan="10.64.12.0/24", caller_public="203.0.113.22", turn=TURN)
    assert ev["claimed"] == "lan" and ev["route"] == "none" and ev["consistent"]
    wrpcap(str(pcap), [_udp(("203.0.113.22", 4000), B_PUB, DTLS)])
    ev = judge(read_capture(pcap, TURN), caller=caller, callee={}, caller_lan="10.64.12.0/24", caller_public="203.0.113.22", turn=TURN)
    assert not ev["consistent"]


def test_claimed_route() -> None:
    sel = {"local": {"type": "host", "address": "10.64.12.10"}, "remote": {"type": "srflx", "address": "203.0.113.22"}}
    assert claimed_route(sel, "10.64.12.0/24", "203.0.113.22") == "hairpin"
    assert claimed_route(sel, "10.64.12.0/24", "203.0.113.30") == "direct"
    assert claimed_route(None, "10.64.12.0/24", "x") is None


def test_missing_capture_gives_empty_flows(tmp_path: Path) -> None:
    assert read_capture(tmp_path / "none.pcap", TURN).packets == 0


def test_capture_markers_are_counted_apart_from_dtls(tmp_path: Path) -> None:
    from natkit.lab.evidence import CAPTURE_MARKER

    pcap = tmp_path / "m.pcap"
    marker = CAPTURE_MARKER + b"0123456789abcdef"
    wrpcap(str(pcap), [_udp(("203.0.113.2", 5000), ("203.0.113.22", 9), marker), _udp(A_PUB, B_PUB, DTLS)])
    flows = read_capture(pcap, TURN)
    assert flows.markers == 1 and flows.packets == 2
    assert flows.direct_involving("203.0.113.22") == 0 and flows.direct_between(A_PUB, B_PUB) == 1


# -- browser cases: Chromium's getStats pair, its allocation found in the capture ----------------

RELAYED = ("203.0.113.4", 61000)


def _allocate_ok(relayed: tuple[str, int], mapped: tuple[str, int]) -> bytes:
    msg = Message(Method.ALLOCATE, Class.SUCCESS).add(Attr.XOR_RELAYED_ADDRESS, relayed)
    return msg.add(Attr.XOR_MAPPED_ADDRESS, mapped).add(Attr.LIFETIME, 600).encode()


def _chromium_relay_pair(relayed: tuple[str, int] = RELAYED) -> dict:
    """Chromium's selected pair as its page reports it (getStats: no allocation details)."""
    return {
        "local": {"type": "relay", "address": relayed[0], "port": relayed[1], "protocol": "udp", "relay_protocol": "udp"},
        "remote": {"type": "relay", "address": TURN[0], "port": 60001, "protocol": "udp", "relay_protocol": None},
    }


def test_allocations_are_read_from_the_turn_servers_responses_over_udp_and_tcp(tmp_path: Path) -> None:
    pcap = tmp_path / "a.pcap"
    tcp_client = ("203.0.113.30", 45000)
    resp = _allocate_ok(("203.0.113.4", 62000), tcp_client)
    request = Message(Method.ALLOCATE, Class.REQUEST).add(Attr.REQUESTED_TRANSPORT, 17).encode()
    wrpcap(
        str(pcap),
        [
            _udp(A_PUB, TURN, request),
            _udp(TURN, A_PUB, _allocate_ok(RELAYED, A_PUB)),
            _udp(A_PUB, TURN, _allocate_ok(("203.0.113.4", 1), A_PUB)),  # not from the server
            _tcp(TURN, tcp_client, 7000, flags="SA"),
            _tcp(TURN, tcp_client, 7001, resp[:10]),
            _tcp(TURN, tcp_client, 7011, resp[10:]),
        ],
    )
    flows = read_capture(pcap, TURN)
    assert flows.allocations == {RELAYED: ("udp", A_PUB), ("203.0.113.4", 62000): ("tcp", tcp_client)}


def test_chromium_relay_pair_agrees_with_dtls_inside_its_allocation(tmp_path: Path) -> None:
    pcap = tmp_path / "b.pcap"
    other = ("203.0.113.13", 41000)  # the callee's NAT relays too: not Chromium's evidence
    wrpcap(
        str(pcap),
        [
            _udp(TURN, A_PUB, _allocate_ok(RELAYED, A_PUB)),
            _udp(TURN, other, _allocate_ok(("203.0.113.4", 61001), other)),
            *[_udp(A_PUB, TURN, encode_channel_data(0x4000, DTLS)) for _ in range(3)],
            *[_udp(other, TURN, encode_channel_data(0x4000, DTLS)) for _ in range(5)],
        ],
    )
    flows = read_capture(pcap, TURN)
    kw = dict(callee={}, caller_lan="10.64.2.0/24", caller_public=A_PUB[0], turn=TURN)
    ev = judge_browser(flows, selected=_chromium_relay_pair(), **kw)
    assert ev["route"] == "relay" and ev["consistent"] and ev["packets"] == 3, ev
    assert f"{A_PUB[0]}:{A_PUB[1]}" in ev["detail"]
    # A relay candidate no Allocate response gave out is a contradiction ...
    ev = judge_browser(flows, selected=_chromium_relay_pair(("203.0.113.4", 1234)), **kw)
    assert ev["claimed"] == "relay" and not ev["consistent"] and "no Allocate response" in ev["detail"]
    # ... and so is one allocated to another NAT's client.
    ev = judge_browser(flows, selected=_chromium_relay_pair(("203.0.113.4", 61001)), **kw)
    assert not ev["consistent"] and "outside its NAT" in ev["detail"]


def test_chromium_relay_pair_without_relayed_dtls_is_a_contradiction(tmp_path: Path) -> None:
    pcap = tmp_path / "c.pcap"
    wrpcap(str(pcap), [_udp(TURN, A_PUB, _allocate_ok(RELAYED, A_PUB)), _udp(A_PUB, B_PUB, DTLS)])
    callee = {"selected": {"remote": {"address": A_PUB[0], "port": A_PUB[1]}}}
    sel = _chromium_relay_pair()
    sel["remote"] = {"type": "relay", "address": B_PUB[0], "port": B_PUB[1]}
    ev = judge_browser(read_capture(pcap, TURN), selected=sel, callee=callee, caller_lan="10.64.2.0/24",
                       caller_public=A_PUB[0], turn=TURN)
    assert ev["claimed"] == "relay" and ev["route"] == "direct" and not ev["consistent"]


def test_chromium_direct_pair_is_judged_between_the_public_endpoints(tmp_path: Path) -> None:
    pcap = tmp_path / "d.pcap"
    wrpcap(str(pcap), [_udp(A_PUB, B_PUB, DTLS), _udp(B_PUB, A_PUB, DTLS)])
    flows = read_capture(pcap, TURN)
    sel = {"local": {"type": "prflx", "address": A_PUB[0], "port": A_PUB[1]},
           "remote": {"type": "srflx", "address": B_PUB[0], "port": B_PUB[1]}}
    callee = {"selected": {"local": {"type": "host", "address": "10.64.8.10", "port": 2},
                           "remote": {"type": "prflx", "address": A_PUB[0], "port": A_PUB[1]}}}
    kw = dict(caller_lan="10.64.2.0/24", caller_public=A_PUB[0], turn=TURN)
    ev = judge_browser(flows, selected=sel, callee=callee, **kw)
    assert ev["route"] == "direct" and ev["consistent"] and ev["packets"] == 2
    # the callee saw Chromium at another address: no DTLS there, a contradiction
    callee["selected"]["remote"]["port"] = A_PUB[1] + 1
    ev = judge_browser(flows, selected=sel, callee=callee, **kw)
    assert ev["route"] == "none" and not ev["consistent"]


def test_a_hidden_peer_reflexive_address_is_found_by_its_port(tmp_path: Path) -> None:
    """Chromium's getStats gives a remote prflx candidate's port but no address: the flow from
    the other side's known endpoint to that port names it."""
    pcap = tmp_path / "h.pcap"
    wrpcap(str(pcap), [_udp(A_PUB, B_PUB, DTLS), _udp(B_PUB, A_PUB, DTLS), _udp(A_PUB, ("203.0.113.99", 7), DTLS)])
    flows = read_capture(pcap, TURN)
    caller = {"selected": {"local": {"type": "host", "address": A_PUB[0], "port": A_PUB[1]},
                           "remote": {"type": "prflx", "address": None, "port": B_PUB[1]}}}
    callee = {"selected": {"local": {"type": "host", "address": "10.64.8.10", "port": 2},
                           "remote": {"type": "srflx", "address": A_PUB[0], "port": A_PUB[1]}}}
    kw = dict(caller_lan="10.64.0.0/24", caller_public="203.0.113.10", turn=TURN)
    ev = judge(flows, caller=caller, callee=callee, **kw)
    assert ev["route"] == "direct" and ev["consistent"] and ev["packets"] == 2, ev
    caller["selected"]["remote"]["port"] = 9999  # no flow to that port: nothing to judge by
    ev = judge(flows, caller=caller, callee=callee, **kw)
    assert not ev["consistent"]


def test_a_relay_allocated_inside_turn_over_tls_is_tied_to_the_tls_session_of_the_callers_nat() -> None:
    from collections import Counter

    from natkit.lab.evidence import Flows

    kw = dict(callee={}, caller_lan="10.64.2.0/24", turn=TURN)
    flows = Flows(tls=Counter({A_PUB: 9, B_PUB: 4}))
    ev = judge_browser(flows, selected=_chromium_relay_pair(), caller_public=A_PUB[0], **kw)
    assert ev["route"] == "relay" and ev["consistent"], ev
    assert "cannot be read" in ev["detail"] and f"{A_PUB[0]}:{A_PUB[1]}" in ev["detail"]
    # No TLS session from the caller's NAT: the relay candidate is unexplained.
    ev = judge_browser(flows, selected=_chromium_relay_pair(), caller_public="203.0.113.99", **kw)
    assert not ev["consistent"] and "TURN/TLS session" in ev["detail"]


def test_a_relay_port_handed_out_twice_in_one_capture_is_matched_to_the_callers_nat() -> None:
    from natkit.lab.evidence import Flows

    other = ("203.0.113.21", 38216)
    flows = Flows()
    flows.allocate(RELAYED, "udp", A_PUB)  # this case's allocation ...
    flows.allocate(RELAYED, "udp", other)  # ... and a later case's, on the freed port
    flows.relayed[("udp", A_PUB)] += 3
    ev = judge_browser(flows, selected=_chromium_relay_pair(), callee={}, caller_lan="10.64.2.0/24",
                       caller_public=A_PUB[0], turn=TURN)
    assert ev["route"] == "relay" and ev["consistent"], ev
    assert flows.allocation_of(RELAYED, "203.0.113.99", "10.9.9.0/24") == ("udp", other)  # no match: the latest


def test_a_tls_relay_on_a_port_another_case_had_in_the_clear_is_the_tls_sessions() -> None:
    from collections import Counter

    from natkit.lab.evidence import Flows

    flows = Flows(tls=Counter({A_PUB: 9}))
    flows.allocate(RELAYED, "udp", ("203.0.113.21", 38216))  # an earlier case, over UDP
    pair = _chromium_relay_pair()
    pair["local"]["relay_protocol"] = "tls"
    ev = judge_browser(flows, selected=pair, callee={}, caller_lan="10.64.2.0/24", caller_public=A_PUB[0], turn=TURN)
    assert ev["consistent"] and "cannot be read" in ev["detail"], ev


def _framed(*packets: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in packets)


def test_dtls_over_ice_tcp_is_read_from_rfc4571_frames(tmp_path: Path) -> None:
    """An ICE-TCP pair (RFC 6544): STUN checks and DTLS in RFC 4571 frames of one TCP
    connection; a TCP stream that is no ICE-TCP (the signaling's WebSocket) counts nothing."""
    pcap = tmp_path / "i.pcap"
    stun = Message(Method.BINDING, Class.REQUEST).encode()
    out, back = _framed(stun, DTLS, DTLS), _framed(DTLS)
    ws = ("203.0.113.3", 8443)
    wrpcap(str(pcap), [
        _tcp(A_PUB, B_PUB, 100, flags="S"), _tcp(B_PUB, A_PUB, 500, flags="SA"),
        _tcp(A_PUB, B_PUB, 101, out[:9]), _tcp(A_PUB, B_PUB, 110, out[9:]), _tcp(B_PUB, A_PUB, 501, back),
        _tcp(A_PUB, ws, 7, flags="S"), _tcp(A_PUB, ws, 8, b"GET / HTTP/1.1\r\n" + bytes([0, 0, 23]) * 8),
    ])
    flows = read_capture(pcap, TURN)
    assert flows.direct_between(A_PUB, B_PUB, "tcp") == 3 and flows.direct_between(A_PUB, B_PUB) == 0
    assert flows.direct_between(A_PUB, ws, "tcp") == 0
    tcp = {"protocol": "tcp"}
    caller = {"selected": {"local": {"type": "prflx", "address": A_PUB[0], "port": A_PUB[1], **tcp},
                           "remote": {"type": "host", "address": B_PUB[0], "port": B_PUB[1], **tcp}}}
    callee = {"selected": {"local": {"type": "host", "address": B_PUB[0], "port": B_PUB[1], **tcp},
                           "remote": {"type": "prflx", "address": A_PUB[0], "port": A_PUB[1], **tcp}}}
    ev = judge(flows, caller=caller, callee=callee, caller_lan="10.64.10.0/24", caller_public=A_PUB[0], turn=TURN)
    assert ev["route"] == "direct" and ev["consistent"] and ev["packets"] == 3 and "ICE-TCP" in ev["detail"], ev
    # the same pair claimed over UDP has no DTLS there
    for side in (caller, callee):
        for end in side["selected"].values():
            end["protocol"] = "udp"
    assert not judge(flows, caller=caller, callee=callee, caller_lan="10.64.10.0/24", caller_public=A_PUB[0], turn=TURN)["consistent"]


def test_a_hairpin_pair_whose_remote_address_chromium_hides_is_named_by_the_other_side() -> None:
    """Two Chromiums behind one hairpinning NAT: a check that arrived before the answer's
    candidates made each remote a prflx candidate, whose address getStats hides; the other
    side's local srflx candidate on that port names it, and the pair is a hairpin."""
    from natkit.lab.evidence import Flows, unhide

    pub = "203.0.113.26"
    a = {"local": {"type": "srflx", "address": pub, "port": 54012}, "remote": {"type": "prflx", "address": None, "port": 50583}}
    b = {"local": {"type": "srflx", "address": pub, "port": 50583}, "remote": {"type": "prflx", "address": None, "port": 54012}}
    assert claimed_route(a, "10.64.12.0/24", pub) == "direct"  # alone: nothing says it is ours
    assert claimed_route(a, "10.64.12.0/24", pub, b) == "hairpin"
    ev = judge(Flows(), caller={"selected": a}, callee={"selected": b}, caller_lan="10.64.12.0/24", caller_public=pub, turn=TURN)
    assert ev["claimed"] == "hairpin" and ev["consistent"], ev
    # another port, or a host candidate, names nothing
    assert unhide(a, {**b, "local": {**b["local"], "port": 1}}) is a
    assert unhide(a, {**b, "local": {**b["local"], "type": "host"}}) is a


def test_of_two_allocations_of_one_relay_port_behind_the_callers_nat_the_one_with_dtls_counts() -> None:
    """A long run's TURN server gives a freed relay port to a later case behind the same NAT:
    the allocation that carried DTLS is this case's, not the latest."""
    from natkit.lab.evidence import Flows

    later = (A_PUB[0], A_PUB[1] + 7)
    flows = Flows()
    flows.allocate(RELAYED, "udp", A_PUB)
    flows.allocate(RELAYED, "udp", later)
    flows.relayed[("udp", A_PUB)] += 31
    assert flows.allocation_of(RELAYED, A_PUB[0], "10.64.2.0/24") == ("udp", A_PUB)
    ev = judge_browser(flows, selected=_chromium_relay_pair(), callee={}, caller_lan="10.64.2.0/24",
                       caller_public=A_PUB[0], turn=TURN)
    assert ev["route"] == "relay" and ev["consistent"] and ev["packets"] == 31, ev
    flows.relayed[("udp", A_PUB)] = 0  # neither carried any: the latest, as before
    assert flows.allocation_of(RELAYED, A_PUB[0], "10.64.2.0/24") == ("udp", later)


def test_a_link_local_pair_is_on_the_lan_whatever_the_cases_family() -> None:
    """Two libnice peers of one LAN in an IPv4 case selected their IPv6 link-local host
    candidates: that pair never leaves the link (it was judged direct, with 0 DTLS)."""
    sel = {"local": {"type": "host", "address": "fe80::1092:eff:fe7a:e3a5", "port": 58605},
           "remote": {"type": "host", "address": "fe80::60ca:42ff:feaf:d570", "port": 44065}}
    assert claimed_route(sel, "10.64.12.0/24", "203.0.113.22") == "lan"
    sel["remote"]["address"] = "169.254.7.1"
    assert claimed_route(sel, "10.64.12.0/24", "203.0.113.22") == "lan"
    sel["remote"]["address"] = "2001:db8::1"
    assert claimed_route(sel, "10.64.12.0/24", "203.0.113.22") == "direct"


def test_a_hidden_remote_whose_other_end_is_a_host_on_our_lan_stays_behind_our_nat() -> None:
    """Chromium behind a hairpinning NAT with pion on its LAN (shard 4 of --full): Chromium's
    remote is a prflx candidate without address, pion reports its host base on that port."""
    from natkit.lab.evidence import Flows

    pub, lan = "203.0.113.26", "10.64.16.0/24"
    a = {"local": {"type": "srflx", "address": pub, "port": 33658}, "remote": {"type": "prflx", "address": None, "port": 59019}}
    b = {"local": {"type": "host", "address": "10.64.16.11", "port": 59019}, "remote": {"type": "srflx", "address": pub, "port": 33658}}
    assert claimed_route(a, lan, pub, b) == "hairpin"
    ev = judge(Flows(), caller={"selected": a}, callee={"selected": b}, caller_lan=lan, caller_public=pub, turn=TURN)
    assert ev["claimed"] == "hairpin" and ev["consistent"], ev
    # pion's remote (where Chromium's packets reached it from) left out: the port rule alone
    b.pop("remote")
    a["local"] = {"type": "host", "address": "10.64.16.10", "port": 33658}
    assert claimed_route(a, lan, pub, b) == "lan"
    b["local"]["port"] = 1  # not the port Chromium names: nothing is known
    assert claimed_route(a, lan, pub, b) == "direct"


def test_a_hidden_remote_is_named_by_where_the_other_side_saw_our_packets_come_from() -> None:
    """chromium -> pion, same-lan, srflx (shard 4 of --full): pion, on Chromium's LAN, saw
    Chromium's packets come from the NAT's public address: they were hairpinned, whatever port
    the NAT gave pion's socket (the port rule alone took a NAT that does not keep ports for a
    direct pair, and a Chromium host end for the LAN)."""
    pub, lan = "203.0.113.26", "10.64.16.0/24"
    # the NAT mapped pion's 10.64.16.11:59019 to 40001: Chromium learned 40001 (hidden address)
    a = {"local": {"type": "srflx", "address": pub, "port": 33658}, "remote": {"type": "prflx", "address": None, "port": 40001}}
    b = {"local": {"type": "host", "address": "10.64.16.11", "port": 59019}, "remote": {"type": "srflx", "address": pub, "port": 33658}}
    assert claimed_route(a, lan, pub, b) == "hairpin"
    ev = judge(Flows(), caller={"selected": a}, callee={"selected": b}, caller_lan=lan, caller_public=pub, turn=TURN)
    assert ev["claimed"] == "hairpin" and ev["consistent"], ev
    # Chromium's end a host socket, pion on the same port: still the NAT's address pion saw
    a["local"] = {"type": "host", "address": "10.64.16.10", "port": 33658}
    a["remote"]["port"] = b["local"]["port"]
    assert claimed_route(a, lan, pub, b) == "hairpin"
    # pion saw Chromium's LAN address: the pair stayed on the LAN
    b["remote"] = {"type": "host", "address": "10.64.16.10", "port": 33658}
    assert claimed_route(a, lan, pub, b) == "lan"
    # the other side behind another NAT sees our public address too: that is no hairpin
    b = {"local": {"type": "host", "address": "10.64.4.10", "port": 59019}, "remote": {"type": "srflx", "address": pub, "port": 33658}}
    a["local"] = {"type": "srflx", "address": pub, "port": 33658}
    assert claimed_route(a, lan, pub, b) == "direct"
    # ... nor when the other side is behind our NAT's public address but says nothing of its remote
    b = {"local": {"type": "srflx", "address": pub, "port": 40001}, "remote": {}}
    assert claimed_route(a, lan, pub, b) == "direct"
