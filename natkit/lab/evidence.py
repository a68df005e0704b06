"""Packet evidence: which way each lab case's traffic really went on the internet segment.

The runner captures every frame on the internet bridge (``dumpcap``, one file per run); this
module reads the capture (:mod:`natkit.lab.pcap`) and counts DTLS records (the WebRTC data channel after ICE)
per flow:

* **direct**: DTLS in plain UDP between two endpoints;
* **direct over ICE-TCP** (RFC 6544): DTLS in the RFC 4571 frames (a 16-bit length before
  each STUN or DTLS packet) of a TCP connection between two endpoints;
* **relayed**: DTLS carried inside TURN (ChannelData, Send or Data indications) between a
  client and the TURN server, over UDP or TCP (TCP streams are reassembled in order and framed
  with :class:`natkit.stun.StreamFramer`).

:func:`judge` then compares a case's evidence with the pair the ICE agents selected: a relay
pair must show DTLS inside TURN on the caller's allocation; a direct pair DTLS between the two
public endpoints the agents saw; a LAN or hairpin pair no DTLS on the internet segment from that
NAT at all. A mismatch is reported as a contradiction.

:func:`judge_browser` does the same for a case whose caller is Chromium: its getStats report
has no TURN allocations, so the relay candidate it selected is tied to its client's address by
the capture itself (the Allocate success response that gave out that relayed address).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natkit.stun import (
    Attr,
    Class,
    Method,
    PacketKind,
    StreamFramer,
    StunParseError,
    classify_packet,
    decode,
    decode_channel_data,
)

__all__ = ["CAPTURE_MARKER", "Flows", "claimed_route", "judge", "judge_browser", "judge_peers", "read_capture", "unhide"]

Endpoint = tuple[str, int]

# The runner's capture markers (UDP datagrams that start with this) tell it when the capture
# file holds everything sent before them; their first byte is no STUN, DTLS or ChannelData.
CAPTURE_MARKER = b"natkit-lab capture marker "


def _is_dtls(payload: bytes) -> bool:
    return bool(payload) and classify_packet(payload[0]) == PacketKind.DTLS


def _turn_inner(frame: bytes) -> bytes | None:
    """The application data a TURN frame carries (ChannelData, Send/Data indication), or None."""
    if not frame:
        return None
    kind = classify_packet(frame[0])
    try:
        if kind == PacketKind.CHANNEL_DATA:
            return decode_channel_data(frame)[1]
        if kind == PacketKind.STUN:
            msg = decode(frame)
            if msg.cls == Class.INDICATION and msg.method in (Method.SEND, Method.DATA):
                data = msg.get(Attr.DATA)
                return data if isinstance(data, bytes) else None
    except (StunParseError, AttributeError, ValueError):
        return None
    return None


def _allocated(frame: bytes) -> Endpoint | None:
    """The relayed address an Allocate success response gives out (XOR-RELAYED-ADDRESS), or None."""
    if not frame or classify_packet(frame[0]) != PacketKind.STUN:
        return None
    try:
        msg = decode(frame)
    except (StunParseError, AttributeError, ValueError):
        return None
    if msg.cls != Class.SUCCESS or msg.method != Method.ALLOCATE:
        return None
    relayed = msg.get(Attr.XOR_RELAYED_ADDRESS)
    return (str(relayed[0]), int(relayed[1])) if relayed else None


@dataclass
class _Stream:
    framer: StreamFramer = field(default_factory=StreamFramer)
    next_seq: int | None = None
    broken: bool = False
    tls: bytearray | None = None  # TURN over TLS: the bytes of a record not yet complete
    framed: bytearray | None = None  # ICE-TCP: the bytes of an RFC 4571 frame not yet complete


def _rfc4571(st: _Stream, data: bytes) -> int:
    """DTLS packets completed by ``data`` on an ICE-TCP stream (RFC 4571: a 16-bit length, then
    the packet). A stream whose frames are not STUN or DTLS (the signaling's WebSocket, say) is
    given up at its first frame: an ICE-TCP connection starts with a STUN check."""
    buf = st.framed if st.framed is not None else bytearray()
    buf += data
    n = 0
    while len(buf) >= 3:
        kind = classify_packet(buf[2])
        if kind not in (PacketKind.STUN, PacketKind.DTLS):
            st.broken, st.framed = True, None
            return n
        size = 2 + int.from_bytes(buf[:2], "big")
        if len(buf) < size:
            break
        n += kind == PacketKind.DTLS
        del buf[:size]
    st.framed = buf
    return n


def _tls_records(st: _Stream, data: bytes) -> int:
    """Application-data records (content type 23) completed by ``data`` on a TLS stream."""
    buf = st.tls if st.tls is not None else bytearray()
    buf += data
    n = 0
    while len(buf) >= 5:
        if buf[0] not in (20, 21, 22, 23, 24):
            st.broken = True
            return n
        size = 5 + int.from_bytes(buf[3:5], "big")
        if len(buf) < size:
            break
        n += buf[0] == 23
        del buf[:size]
    st.tls = buf
    return n


@dataclass
class Flows:
    """DTLS records seen on the segment, per flow."""

    direct: Counter[tuple[Endpoint, Endpoint]] = field(default_factory=Counter)
    # ICE-TCP: DTLS packets per (source, destination) of a TCP connection outside TURN
    direct_tcp: Counter[tuple[Endpoint, Endpoint]] = field(default_factory=Counter)
    relayed: Counter[tuple[str, Endpoint]] = field(default_factory=Counter)  # (transport, client)
    # TURN over TLS: application-data records per client (what is inside cannot be read)
    tls: Counter[Endpoint] = field(default_factory=Counter)
    # relayed address -> (transport, client): from the TURN server's Allocate success responses
    allocations: dict[Endpoint, tuple[str, Endpoint]] = field(default_factory=dict)
    # Every allocation of each relayed address, in capture order: a run's TURN server hands a
    # freed relay port out again (thousands of allocations in --full), so one address may
    # have served several clients.
    allocated: dict[Endpoint, list[tuple[str, Endpoint]]] = field(default_factory=dict)

    def allocate(self, relayed: Endpoint, transport: str, client: Endpoint) -> None:
        self.allocations[relayed] = (transport, client)
        self.allocated.setdefault(relayed, []).append((transport, client))

    def allocation_of(self, relayed: Endpoint, public: str, lan: str) -> tuple[str, Endpoint] | None:
        """The allocation of ``relayed`` to a client inside one NAT (public address or LAN),
        else its latest one, else None. Of several inside that NAT (a long run's TURN server
        gave the freed port to another case behind the same NAT), the one whose client carried
        the most DTLS inside TURN, the latest of equals: the latest alone may be a later case's
        allocation that never carried this case's data."""
        seen = self.allocated.get(relayed) or ([self.allocations[relayed]] if relayed in self.allocations else [])
        mine = [a for a in seen if a[1][0] == public or _in_net(a[1][0], lan)]
        if len(mine) > 1:
            best = max(self.relayed[a] for a in mine)
            mine = [a for a in mine if self.relayed[a] == best]
        either = mine or seen
        return either[-1] if either else None
    packets: int = 0
    markers: int = 0  # the runner's capture markers seen

    def direct_between(self, a: Endpoint, b: Endpoint, protocol: str = "udp") -> int:
        flows = self.direct_tcp if protocol == "tcp" else self.direct
        return flows[(a, b)] + flows[(b, a)]

    def peer_of(self, known: Endpoint, port: int, protocol: str = "udp") -> Endpoint | None:
        """The endpoint with ``port`` that exchanged the most DTLS with ``known`` (for a stack
        whose stats give a peer-reflexive candidate's port but not its address)."""
        counts: Counter[Endpoint] = Counter()
        for (s, d), n in (self.direct_tcp if protocol == "tcp" else self.direct).items():
            if s == known and d[1] == port:
                counts[d] += n
            elif d == known and s[1] == port:
                counts[s] += n
        return counts.most_common(1)[0][0] if counts else None

    def direct_involving(self, ip: str, exclude: Iterable[str] = ()) -> int:
        skip = set(exclude)
        return sum(
            n for (s, d), n in self.direct.items() if ip in (s[0], d[0]) and not {s[0], d[0]} & skip
        )


def read_capture(path: str | Path, turn: Endpoint, turn_tls: Endpoint | None = None,
                 also: tuple[Endpoint, ...] = ()) -> Flows:
    """Count DTLS records per flow in the pcap/pcapng at ``path``; ``turn`` is the TURN
    server's client-facing address, ``turn_tls`` its TURN-over-TLS one (there only TLS records
    are counted: DTLS inside cannot be seen); ``also`` are more addresses of the same server
    (its IPv6 ones). :mod:`natkit.lab.pcap` reads the frames."""
    turns = {turn, *also}
    tlss = {turn_tls} | {(a[0], turn_tls[1]) for a in also} if turn_tls else set()
    from natkit.lab.pcap import read_segments

    flows = Flows()
    streams: dict[tuple[Endpoint, Endpoint], _Stream] = {}
    for seg in read_segments(path):
        flows.packets += 1
        if seg is None:
            continue
        src, dst, data = seg.src, seg.dst, seg.payload
        if seg.proto == "udp":
            if data.startswith(CAPTURE_MARKER):
                flows.markers += 1
                continue
            if src in turns or dst in turns:
                client = dst if src in turns else src
                if src in turns and (relayed := _allocated(data)) is not None:
                    flows.allocate(relayed, "udp", client)
                inner = _turn_inner(data)
                if inner is not None and _is_dtls(inner):
                    flows.relayed[("udp", client)] += 1
            elif _is_dtls(data):
                flows.direct[(src, dst)] += 1
            continue
        tls = src in tlss or dst in tlss
        ice_tcp = src not in turns and dst not in turns and not tls
        st = streams.setdefault((src, dst), _Stream())
        if seg.flags & 0x02:  # SYN: the stream starts after it
            st.next_seq = (seg.seq + 1) & 0xFFFFFFFF
            continue
        if not data or st.broken or st.next_seq is None:
            continue
        if seg.seq != st.next_seq:  # a retransmission or a gap: only in-order bytes count
            if (seg.seq - st.next_seq) & 0xFFFFFFFF < 1 << 31:
                st.broken = True  # bytes missing from the capture
            continue
        st.next_seq = (seg.seq + len(data)) & 0xFFFFFFFF
        if tls:
            flows.tls[dst if src in tlss else src] += _tls_records(st, data)
            continue
        if ice_tcp:
            if n := _rfc4571(st, data):
                flows.direct_tcp[(src, dst)] += n
            continue
        try:
            frames = st.framer.feed(data)
        except StunParseError:
            st.broken = True
            continue
        client = dst if src in turns else src
        for frame in frames:
            if src in turns and (relayed := _allocated(frame)) is not None:
                flows.allocate(relayed, "tcp", client)
            inner = _turn_inner(frame)
            if inner is not None and _is_dtls(inner):
                flows.relayed[("tcp", client)] += 1
    return flows


def _ep(c: dict[str, Any] | None) -> Endpoint | None:
    if not c or c.get("address") is None:
        return None
    return (str(c["address"]), int(c["port"]))


def _port(c: dict[str, Any] | None) -> int | None:
    port = (c or {}).get("port")
    return port if isinstance(port, int) and not isinstance(port, bool) else None


def unhide(selected: dict[str, Any] | None, other: dict[str, Any] | None) -> dict[str, Any] | None:
    """``selected`` with the address of a remote candidate its stats hide (Chromium gives a
    remote peer-reflexive candidate's port only) taken from the other side's selected local
    candidate, when that one is a public mapping (srflx or prflx) on the same port: a check
    that reached this side before the other's candidates did (an answer late under load, or
    a hairpinned check) makes the remote prflx though it is the other side's srflx candidate."""
    remote = (selected or {}).get("remote") or {}
    theirs = (other or {}).get("local") or {}
    if (not selected or remote.get("address") is not None or remote.get("port") is None
            or theirs.get("type") not in ("srflx", "prflx") or theirs.get("address") is None
            or theirs.get("port") != remote.get("port")
            or (theirs.get("protocol") or "udp") != (remote.get("protocol") or "udp")):
        return selected
    return {**selected, "remote": {**remote, "address": theirs["address"]}}


def claimed_route(selected: dict[str, Any] | None, own_lan: str, own_public: str,
                  other: dict[str, Any] | None = None) -> str | None:
    """The route a selected pair implies: relay, lan (remote on the peer's own LAN), hairpin
    (remote at the peer's own NAT's public address) or direct; ``other`` (the other side's
    selected pair) names a remote address the stats hide (:func:`unhide`)."""
    if not selected:
        return None
    selected = unhide(selected, other) or selected
    local, remote = selected.get("local") or {}, selected.get("remote") or {}
    if local.get("type") == "relay" or remote.get("type") == "relay":
        return "relay"
    addr = remote.get("address")
    if addr is None and (behind := _hidden_behind_our_nat(local, remote, other, own_lan, own_public)):
        return behind
    try:
        # A link-local remote (fe80::/10, 169.254/16) is on the peer's own link, whatever the
        # case's family: libnice gathers the LAN's IPv6 link-local host candidates in an IPv4
        # case, and two peers of one LAN may select that pair.
        if addr is not None and (ipaddress.ip_address(addr) in ipaddress.ip_network(own_lan)
                                 or ipaddress.ip_address(addr).is_link_local):
            return "lan"
    except ValueError:
        pass
    if addr == own_public:
        return "hairpin"
    return "direct"


def _link_local(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_link_local
    except ValueError:
        return False


def _hidden_behind_our_nat(local: dict[str, Any], remote: dict[str, Any], other: dict[str, Any] | None,
                           own_lan: str, own_public: str) -> str | None:
    """The route of a pair whose remote address our stats hide (Chromium's remote prflx) when
    the other side is behind our own NAT (its local address on our LAN or at our NAT's public
    address): what the other side says of the same packets. Its selected remote is where our
    packets reached it from: our NAT's public address means they went out through the NAT and
    were sent back in (hairpin), an address of our LAN that they stayed on it (lan). Without
    that, a host socket of the other side on our LAN on the hidden remote's port (pion reports
    its host base, the NAT kept the port) stays behind our NAT, through its public address when
    our end is that. None when nothing says the other side is behind our NAT."""
    theirs, seen = (other or {}).get("local") or {}, (other or {}).get("remote") or {}
    their_addr, seen_addr = str(theirs.get("address")), seen.get("address")
    if not (their_addr == own_public or _in_net(their_addr, own_lan)):
        return None
    if seen_addr == own_public:
        return "hairpin"
    if seen_addr is not None and (_in_net(str(seen_addr), own_lan) or _link_local(str(seen_addr))):
        return "lan"
    if theirs.get("port") == remote.get("port") and _in_net(their_addr, own_lan):
        return "hairpin" if local.get("address") == own_public else "lan"
    return None


def judge(
    flows: Flows,
    *,
    caller: dict[str, Any],
    callee: dict[str, Any],
    caller_lan: str,
    caller_public: str,
    turn: Endpoint,
) -> dict[str, Any]:
    """Evidence for one connected case: {route, claimed, packets, consistent, detail}.

    ``caller``/``callee`` are the peers' results (selected pair, relays); ``route`` is what the
    packets show: relay, direct, or none (nothing on the internet segment).
    """
    sel_a, sel_b = caller.get("selected"), callee.get("selected")
    sel_a, sel_b = unhide(sel_a, sel_b), unhide(sel_b, sel_a)
    claimed = claimed_route(sel_a, caller_lan, caller_public, sel_b)
    if claimed is None:
        return {"route": None, "claimed": None, "packets": 0, "consistent": False, "detail": "the caller reported no selected pair"}
    if claimed == "relay":
        local = _ep((sel_a or {}).get("local"))
        allocation = next((r for r in caller.get("relays") or [] if tuple(r["relayed"]) == local), None)
        if allocation is None or not allocation.get("mapped"):
            return {"route": None, "claimed": claimed, "packets": 0, "consistent": False, "detail": "no TURN allocation recorded for the selected relay candidate"}
        mapped = (str(allocation["mapped"][0]), int(allocation["mapped"][1]))
        if allocation["transport"] == "tls":
            ips = {mapped[0], caller_public}
            n = sum(k for c, k in flows.tls.items() if c[0] in ips or _in_net(c[0], caller_lan))
            detail = (f"{n} TLS application-data records between {caller_public} and the TURN/TLS listener "
                      "(the DTLS inside TLS cannot be seen)")
            return {"route": "relay" if n else "none", "claimed": claimed, "packets": n, "consistent": n > 0,
                    "detail": detail}
        n = flows.relayed[(allocation["transport"], mapped)]
        d = flows.direct_between(_ep((sel_b or {}).get("remote")) or mapped, _ep((sel_a or {}).get("remote")) or mapped)
        route = "relay" if n else ("direct" if d else "none")
        detail = f"{n} DTLS records inside TURN over {allocation['transport']} between {mapped[0]}:{mapped[1]} and {turn[0]}:{turn[1]}"
        return {"route": route, "claimed": claimed, "packets": n, "consistent": route == "relay", "detail": detail}
    if claimed == "direct":
        b_pub = _ep((sel_a or {}).get("remote"))
        a_pub = _ep((sel_b or {}).get("remote"))
        # A side whose stats hide the other's peer-reflexive address (Chromium) still gives
        # its port: the capture's flow from the known end to that port names the address.
        # ICE-TCP (RFC 6544): the DTLS goes in RFC 4571 frames of the pair's TCP connection.
        proto = "tcp" if ((sel_a or {}).get("local") or {}).get("protocol") == "tcp" else "udp"
        if a_pub is None and b_pub is not None and (port := _port((sel_b or {}).get("remote"))) is not None:
            a_pub = flows.peer_of(b_pub, port, proto)
        elif b_pub is None and a_pub is not None and (port := _port((sel_a or {}).get("remote"))) is not None:
            b_pub = flows.peer_of(a_pub, port, proto)
        if a_pub is None or b_pub is None:
            who = "the callee reported no selected pair" if not sel_b else "neither side's stats give the other's address"
            return {"route": None, "claimed": claimed, "packets": 0, "consistent": False, "detail": who}
        n = flows.direct_between(a_pub, b_pub, proto)
        over = " over ICE-TCP (RFC 4571 frames)" if proto == "tcp" else ""
        detail = f"{n} DTLS packets{over} between {a_pub[0]}:{a_pub[1]} and {b_pub[0]}:{b_pub[1]}"
        return {"route": "direct" if n else "none", "claimed": claimed, "packets": n, "consistent": n > 0, "detail": detail}
    # lan or hairpin: nothing of this NAT's may cross the internet segment except TURN traffic.
    n = flows.direct_involving(caller_public, exclude=[turn[0]])
    detail = f"{n} DTLS packets from or to {caller_public} on the internet segment"
    return {"route": "none" if n == 0 else "direct", "claimed": claimed, "packets": n, "consistent": n == 0, "detail": detail}


def judge_browser(
    flows: Flows,
    *,
    selected: dict[str, Any] | None,
    callee: dict[str, Any],
    caller_lan: str,
    caller_public: str,
    turn: Endpoint,
) -> dict[str, Any]:
    """Evidence for one connected case whose caller is Chromium, judged as :func:`judge` does.

    ``selected`` is the pair Chromium's getStats selected, ``callee`` the lab peer's result.
    For a relay pair, the allocation behind Chromium's relay candidate comes from the capture
    (which client the TURN server gave that relayed address to); a client outside the caller's
    NAT (neither its public address nor its LAN) contradicts getStats.
    """
    relays: list[dict[str, Any]] = []
    if claimed_route(selected, caller_lan, caller_public) == "relay":
        local = _ep((selected or {}).get("local"))
        seen = flows.allocation_of(local, caller_public, caller_lan) if local else None
        over_tls = (selected or {}).get("local", {}).get("relay_protocol") == "tls"
        if local is not None and (seen is None or over_tls):
            # TURN over TLS: the Allocate response is encrypted (a clear one for that port came
            # from another case's allocation); what the capture shows is a TLS session from
            # inside the caller's NAT to the TURN server.
            hidden = _tls_client(flows, caller_public, caller_lan)
            seen = ("tls", hidden) if hidden is not None else seen
        if local is None or seen is None:
            where = f"{local[0]}:{local[1]}" if local else "(no address)"
            return {
                "route": None, "claimed": "relay", "packets": 0, "consistent": False,
                "detail": f"no Allocate response (nor a TURN/TLS session from the caller's NAT) in the capture "
                          f"gave out the caller's relay candidate {where}",
            }
        transport, client = seen
        if client[0] != caller_public and not _in_net(client[0], caller_lan):
            return {
                "route": None, "claimed": "relay", "packets": 0, "consistent": False,
                "detail": f"the caller's relay candidate {local[0]}:{local[1]} was allocated to {client[0]}:{client[1]}, "
                          f"outside its NAT ({caller_public}, {caller_lan})",
            }
        relays.append({"transport": transport, "relayed": list(local), "mapped": list(client)})
    ev = judge(
        flows, caller={"selected": selected, "relays": relays}, callee=callee,
        caller_lan=caller_lan, caller_public=caller_public, turn=turn,
    )
    if relays:
        relayed, client = relays[0]["relayed"], relays[0]["mapped"]
        if relays[0]["transport"] == "tls":  # an Allocate inside TLS is never readable
            ev["detail"] += (f" ({flows.tls[(client[0], client[1])]} TLS records between {client[0]}:{client[1]} and the "
                             f"TURN server; the allocation of {relayed[0]}:{relayed[1]} inside them cannot be read)")
        else:
            ev["detail"] += f" (the capture's Allocate response gave {relayed[0]}:{relayed[1]} to {client[0]}:{client[1]})"
    return ev


def _tls_client(flows: Flows, public: str, lan: str) -> Endpoint | None:
    """The TURN/TLS client inside one NAT (its public address or its LAN) with the most TLS
    records, or None."""
    mine = [(n, c) for c, n in flows.tls.items() if n and (c[0] == public or _in_net(c[0], lan))]
    return max(mine)[1] if mine else None


def judge_peers(
    flows: Flows,
    *,
    caller: dict[str, Any],
    callee: dict[str, Any],
    caller_lan: str,
    caller_public: str,
    turn: Endpoint,
) -> dict[str, Any]:
    """Evidence for one connected case from both peers' results (PeerResult as JSON): judged
    as :func:`judge` when the caller reported its TURN allocations, else as
    :func:`judge_browser` (the allocation behind its relay candidate found in the capture)."""
    if caller.get("relays") is None:
        return judge_browser(
            flows, selected=caller.get("selected"), callee=callee,
            caller_lan=caller_lan, caller_public=caller_public, turn=turn,
        )
    return judge(flows, caller=caller, callee=callee, caller_lan=caller_lan, caller_public=caller_public, turn=turn)


def _in_net(addr: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(net)
    except ValueError:
        return False
