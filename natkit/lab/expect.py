"""What each lab case should do, derived from the NATs' behaviours (sans-IO).

No table of outcomes lives here. :func:`expect` builds a small model of the case and plays ICE
over it:

* **Networks and boxes.** Every peer sits on a network; a *box* (a router) joins its inside
  network to its outside one. A NAT box maps (RFC 4787 §4.1: endpoint-independent, address-
  dependent, address-and-port-dependent) and filters (§5: the same three) per mapping, exactly
  as :class:`natkit.lab.nats.NatBehaviour` describes the router; a box without NAT (``open``,
  an IPv6 firewall) routes its inside addresses and may still filter (RFC 6092's stateful
  default). Boxes nest: a home NAT behind a carrier NAT (``cgnat``), or behind another home
  NAT (``double-nat``), each with its own mappings. A box may drop UDP, or pass only outbound
  TCP to some ports (``egress-443``). A packet to a box's own public address from inside is
  hairpinned (looped back unfiltered by that box, and dropped without hairpinning); private
  addresses are reachable only from their own network.
* **Families.** A case runs over one address family: IPv4 (the behaviour itself), IPv6 (its
  ``ipv6`` behaviour: routed or prefix-translated, firewalled), or ``nat64``: an IPv6-only peer
  against a peer without IPv6, where only a relay reached through NAT64 can join them.
* **Candidates** per path: *host* gives the peer's own address; *srflx* the mapping the STUN
  server saw (none when UDP is blocked); *relay* an allocation on the TURN server, reached over
  UDP or, through a UDP-blocking firewall, over TCP; *relay-tls* the same over TLS on port 443
  only (``turns:``). A relay allocation is itself a public endpoint that filters by address
  (TURN permissions are per IP, RFC 8656 §9). *longevity* is srflx, then an idle period longer
  than the NATs' UDP mapping lifetime with only the stacks' keepalives on the pair: the
  mappings live if either side sends more often than the lifetime (packets either way refresh
  them), and expired ones come back where the NATs give a new mapping the same port.
* **ICE** (RFC 8445): both agents send checks to every remote candidate, round after round; an
  agent that receives a check answers it to the check's source and, if that source is new,
  learns it as a peer-reflexive candidate and sends a triggered check to it (§7.3.1.3-4). A check
  succeeds when its response gets back. The case connects when the controlling agent (the
  caller) has a succeeded pair, which it then nominates over the same path.
* **ICE-TCP** (RFC 6544, the host path, when the sides' stacks are known): where UDP gets no
  pair through, a stack that dials ("active") connects to one that listens on a signaled
  passive TCP host candidate if the connection's first packet gets out of the dialer's boxes
  (a UDP-blocking firewall lets TCP out; an egress filter only to its own ports) and into the
  listener's (only a box without NAT and without a filter lets an unsolicited one in). Where
  UDP works the stacks prefer it (a UDP host pair has the higher priority).

The result also says which way the packets go (``lan``, ``hairpin``, ``direct`` between public
addresses, ``relay``), which the packet evidence is checked against, and why a case fails: the
cause (mapping, filtering, address family, a blocked transport, a mapping that expired) and
what would fix it ("needs TURN", "needs TURN/TLS on 443", "needs IPv6 on both", "needs
keepalive < 20 s").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natkit.lab.nats import Filtering, Mapping, NatBehaviour, PortAllocation
from natkit.lab.nats import expected_probe as _kind_probe

__all__ = ["FAMILIES", "PATHS", "Expectation", "Side", "expect", "expected_probe"]

PATHS = ("host", "srflx", "relay", "relay-tls", "longevity")
FAMILIES = ("ipv4", "ipv6", "nat64")
Endpoint = tuple[str, str]  # (ip token, port token): symbolic, only equality matters
INTERNET = "internet"
STUN: Endpoint = ("stun-server", "3478")
TURN_IP = "turn-server"
TURN_PORT, TURN_TLS_PORT = 3478, 443
ROUNDS = 4  # enough for any exchange of checks, triggered checks and their responses
# RFC 8445 §11: keepalives on the selected pair at least every Tr, default 15 s, for a stack
# whose interval is not known.
DEFAULT_KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class Expectation:
    connected: bool
    route: str | None  # "lan" | "hairpin" | "direct" | "relay" when connected
    reason: str
    decided_by: str = "nats"  # "nats" | "stacks": what made the outcome what it is

    @property
    def outcome(self) -> str:
        return "connected" if self.connected else "failed"


@dataclass(frozen=True)
class Side:
    """What the ICE model needs of one peer's stack in one case (natkit.lab.stack_expect makes
    it from the stack's capabilities); without sides the model is the NATs' alone."""

    name: str
    redundant_srflx: bool = True  # signals a srflx candidate equal to its host address
    gives_up_without_candidates: bool = False  # fails at once when the other signals none
    turn: tuple[str, ...] | None = None  # TURN transports it allocates over (None: any)
    keepalive_s: float | None = None  # seconds between its packets on an idle selected pair
    # ICE-TCP (RFC 6544) on the host path: "active" dials a remote passive TCP host candidate,
    # "passive" listens on one it signals. None: not known, and the model plays UDP only.
    tcp: tuple[str, ...] | None = None


@dataclass
class _Box:
    """A router (or a TURN allocation): how it maps and filters, and whom each mapping has
    sent to. ``id`` is its address on the ``outside`` network; ``inside`` is its LAN."""

    id: str
    label: str
    mapping: Mapping | None
    filtering: Filtering | None
    outside: str = INTERNET
    inside: str = ""
    block_udp: bool = False
    egress_tcp: tuple[int, ...] | None = None
    hairpin: bool = False
    sent: dict[Endpoint, set[Endpoint]] = field(default_factory=dict)
    owner: dict[Endpoint, Endpoint] = field(default_factory=dict)  # public mapping -> inside

    @classmethod
    def of(cls, box_id: str, b: NatBehaviour, outside: str = INTERNET) -> _Box:
        return cls(box_id, b.name, b.mapping, b.filtering, outside, f"lan:{box_id}", b.block_udp,
                   b.egress_tcp_ports, b.hairpinning)

    def passes_tcp(self, port: int) -> bool:
        return self.egress_tcp is None or port in self.egress_tcp


@dataclass(eq=False)
class _Socket:
    peer: str
    net: str
    local: Endpoint


@dataclass(frozen=True)
class _Drop:
    """Why one packet did not arrive: ``kind`` is blocked | egress | hairpin | unmapped |
    filtered | private; ``box`` the label of the box that dropped it; for ``filtered``,
    ``port_only`` says that the box had sent to the source's address (only the port differed)
    and ``source`` is the label of the box the packet came through last."""

    kind: str
    box: str
    filtering: Filtering | None = None
    port_only: bool = False
    source: str | None = None
    source_mapping: Mapping | None = None


class _Net:
    """Delivers packets through the boxes; remembers why packets were dropped."""

    def __init__(self, tcp: bool = False) -> None:
        # tcp: the packets are a TCP connection's first (a SYN): UDP blocking does not touch
        # them, an egress filter passes them only to its ports, and a filtering box lets no
        # unsolicited connection in (the lab's NATs and RFC 6092 firewalls filter TCP by
        # conntrack; the EIF/ADF machinery is for UDP).
        self.tcp = tcp
        self.sockets: list[_Socket] = []
        self.boxes: list[_Box] = []
        self.drops: list[_Drop] = []
        self.hairpins: set[str] = set()
        self.notes: list[str] = []  # what the stacks did that the NATs alone do not explain

    def add_box(self, box: _Box) -> _Box:
        self.boxes.append(box)
        return box

    def add_socket(self, sock: _Socket) -> _Socket:
        self.sockets.append(sock)
        return sock

    def upstream(self, net: str) -> _Box | None:
        return next((b for b in self.boxes if b.inside == net), None)

    def box_by_id(self, ip: str) -> _Box | None:
        return next((b for b in self.boxes if b.id == ip), None)

    def _visible(self, net: str, dst: Endpoint) -> tuple[str, object] | None:
        """What ``dst`` is on ``net``: a socket there, a box's outside address there, or a
        socket behind a box without NAT whose outside is ``net`` (a routed LAN)."""
        for s in self.sockets:
            if s.net == net and s.local == dst:
                return "socket", s
        for b in self.boxes:
            if b.outside == net and b.id == dst[0] and b.mapping is not None:
                return "box", b
        for b in self.boxes:
            if b.outside == net and b.mapping is None:
                for s in self.sockets:
                    if s.net == b.inside and s.local == dst:
                        return "routed", (b, s)
        return None

    def outbound(self, box: _Box, src: Endpoint, dst: Endpoint) -> Endpoint | None:
        """The source of a packet from ``src`` (inside ``box``) to ``dst`` once it has left
        ``box`` (None: dropped there)."""
        if self.tcp:
            if box.egress_tcp is not None and not (dst[1].isdigit() and int(dst[1]) in box.egress_tcp):
                self.drops.append(_Drop("egress", box.label))
                return None
        elif box.block_udp:
            self.drops.append(_Drop("egress" if box.egress_tcp is not None else "blocked", box.label))
            return None
        if box.mapping is None:
            out = src
        else:
            if box.mapping == Mapping.ENDPOINT_INDEPENDENT:
                port = f"{src[0]}:{src[1]}"
            elif box.mapping == Mapping.ADDRESS_DEPENDENT:
                port = f"{src[0]}:{src[1]}>{dst[0]}"
            else:
                port = f"{src[0]}:{src[1]}>{dst[0]}:{dst[1]}"
            out = (box.id, port)
            box.owner[out] = src
        box.sent.setdefault(out, set()).add(dst)
        return out

    def admits(self, box: _Box, src: Endpoint, dst: Endpoint, via: _Box | None) -> bool:
        """Whether ``box``'s filter lets ``src`` reach mapping (or routed address) ``dst``."""
        if self.tcp:
            if box.filtering is not None:
                self.drops.append(_Drop("filtered", box.label, box.filtering))
                return False
            return True
        if box.block_udp:
            self.drops.append(_Drop("egress" if box.egress_tcp is not None else "blocked", box.label))
            return False
        sent = box.sent.get(dst, set())
        ok = True
        if box.filtering == Filtering.ADDRESS_DEPENDENT:
            ok = any(e[0] == src[0] for e in sent)
        elif box.filtering == Filtering.ADDRESS_AND_PORT_DEPENDENT:
            ok = src in sent
        if not ok:
            port_only = any(e[0] == src[0] for e in sent)
            self.drops.append(_Drop("filtered", box.label, box.filtering, port_only,
                                    via.label if via else None, via.mapping if via else None))
        return ok

    def deliver(self, sock: _Socket, dst: Endpoint) -> tuple[_Socket, Endpoint] | None:
        """Send one UDP packet from ``sock``; the receiving socket and the source it sees."""
        return self._send(sock.local, sock.net, dst, None, 0)

    def _send(self, src: Endpoint, net: str, dst: Endpoint, via: _Box | None, depth: int) -> tuple[_Socket, Endpoint] | None:
        if depth > 8:
            return None
        found = self._visible(net, dst)
        if found is not None:
            what, obj = found
            if what == "socket":
                assert isinstance(obj, _Socket)
                return obj, src
            if what == "box":
                assert isinstance(obj, _Box)
                return self._inbound(obj, src, dst, via, depth)
            box: _Box
            target: _Socket
            box, target = obj  # type: ignore[misc]  # ("routed": a box and a socket behind it)
            if not self.admits(box, src, dst, via):
                return None
            return target, src
        up = self.upstream(net)
        if up is None:
            self.drops.append(_Drop("private", ""))
            return None
        if dst[0] == up.id and up.mapping is not None:
            # To the router's own public address from inside: hairpinning.
            out = self.outbound(up, src, dst)
            if out is None:
                return None
            if not up.hairpin:
                self.drops.append(_Drop("hairpin", up.label))
                return None
            inner = up.owner.get(dst)
            if inner is None:
                self.drops.append(_Drop("unmapped", up.label))
                return None
            self.hairpins.add(up.id)
            return self._send(out, up.inside, inner, up, depth + 1)
        out = self.outbound(up, src, dst)
        if out is None:
            return None
        return self._send(out, up.outside, dst, up, depth + 1)

    def _inbound(self, box: _Box, src: Endpoint, dst: Endpoint, via: _Box | None, depth: int) -> tuple[_Socket, Endpoint] | None:
        inner = box.owner.get(dst)
        if inner is None:
            self.drops.append(_Drop("unmapped", box.label))
            return None
        if not self.admits(box, src, dst, via):
            return None
        return self._send(src, box.inside, inner, via, depth + 1)


@dataclass
class _Agent:
    sock: _Socket
    remotes: list[Endpoint]
    valid: list[Endpoint] = field(default_factory=list)


@dataclass
class _Peer:
    """One side: its socket, the boxes from it up to the internet, its behaviour."""

    sock: _Socket
    chain: list[_Box]
    behaviour: NatBehaviour

    def blocked_udp(self) -> _Box | None:
        return next((b for b in self.chain if b.block_udp), None)

    def tcp_blocker(self, port: int) -> _Box | None:
        return next((b for b in self.chain if not b.passes_tcp(port)), None)


def _family_behaviour(b: NatBehaviour, family: str) -> NatBehaviour | None:
    if family == "ipv6":
        return b.ipv6
    if family == "nat64" and b.nat64:
        return b  # the NAT64's IPv4 side maps and filters as the behaviour says
    return b if b.ipv4 else None


def _build(net: _Net, peer: str, b: NatBehaviour, outer: _Box | None, tag: str) -> _Peer:
    """The boxes of one peer (sharing ``outer`` for two subscribers of one carrier NAT)."""
    chain: list[_Box] = []
    if b.inner is not None:
        top = outer or net.add_box(_Box.of(f"nat-{tag}", b))
        home = net.add_box(_Box.of(f"nat-{tag}-home-{peer}", b.inner, outside=top.inside))
        home.label = f"{b.name}'s inner NAT"
        chain = [home, top]
    else:
        chain = [outer or net.add_box(_Box.of(f"nat-{tag}", b))]
    first = chain[0]
    ip = f"{first.id}-public-{peer}" if first.mapping is None else f"{first.id}-lan-{peer}"
    sock = net.add_socket(_Socket(peer, first.inside, (ip, "5000")))
    return _Peer(sock, chain, b)


def _fix(path: str) -> str:
    return "needs TURN" if path in ("host", "srflx", "longevity") else "needs another relay transport"


def _gather(
    net: _Net, p: _Peer, path: str, transports: tuple[str, ...], side: Side | None = None,
) -> tuple[_Socket, list[Endpoint], str | None]:
    """(socket ICE checks go from, signaled candidates, why there are none)."""
    sock = p.sock
    if path == "host":
        return sock, [sock.local], None
    if path in ("srflx", "longevity"):
        blocked = p.blocked_udp()
        if blocked is not None:
            return sock, [], _no_udp(blocked, "STUN gives no srflx candidate")
        got = net.deliver(sock, STUN)
        if got is None:
            return sock, [], "STUN does not answer"
        if got[1] == sock.local and side is not None and not side.redundant_srflx:
            net.notes.append(
                f"{side.name} behind {p.chain[0].label} signals no srflx candidate (it equals its host "
                "address, which it drops as redundant, RFC 8445 §5.1.3)"
            )
            return sock, [], None
        return sock, [got[1]], None
    if side is not None and side.turn is not None:
        allowed = tuple(t for t in transports if t in side.turn)
        wanted = ("tls",) if path == "relay-tls" else ("udp", "tcp", "tls")
        if not any(t in wanted for t in allowed) and any(t in wanted for t in transports):
            offered = ", ".join(t for t in transports if t in wanted)
            return sock, [], f"{side.name} allocates over none of the TURN transports offered ({offered})"
        transports = allowed
    if path == "relay-tls":
        if "tls" not in transports:
            return sock, [], "the lab's TURN server offers no TURN over TLS (turn.tls_port); needs TURN/TLS on 443"
        blocker = p.tcp_blocker(TURN_TLS_PORT)
        if blocker is not None:
            return sock, [], f"{blocker.label} passes no TCP to port {TURN_TLS_PORT}: no TURN/TLS allocation"
    else:
        # every TURN URL the path gives (the lab's relay path: UDP and TCP on the TURN port; a
        # TLS one, on 443, where a caller offers it there too)
        usable = [t for t in transports if t in ("udp", "tcp", "tls")]
        if p.blocked_udp() is not None:
            usable = [t for t in usable if t != "udp"]
        blocker = p.tcp_blocker(TURN_PORT)
        if blocker is not None:
            usable = [t for t in usable if t != "tcp"]
        tls_blocker = p.tcp_blocker(TURN_TLS_PORT)
        if tls_blocker is not None:
            usable = [t for t in usable if t != "tls"]
        if not usable:
            box = p.blocked_udp() or blocker or tls_blocker
            if box is not None and box.egress_tcp is not None:
                ports = "/".join(str(x) for x in box.egress_tcp)
                return sock, [], (f"{box.label} lets out only TCP to ports {ports}: no TURN allocation over UDP "
                                  f"or TCP {TURN_PORT}; needs TURN/TLS on 443")
            if box is not None:
                return sock, [], f"{box.label} drops UDP and TURN over TCP is not offered; needs TURN over TCP"
            return sock, [], "no TURN transport offered"
    alloc = net.add_box(_Box(f"turn-alloc-{sock.peer}", "the TURN relay", None, Filtering.ADDRESS_DEPENDENT,
                             INTERNET, f"alloc:{sock.peer}"))
    relay = net.add_socket(_Socket(f"relay-{sock.peer}", alloc.inside, (TURN_IP, f"relay-{sock.peer}")))
    return relay, [relay.local], None


def _no_udp(box: _Box, what: str) -> str:
    if box.egress_tcp is not None:
        ports = "/".join(str(x) for x in box.egress_tcp)
        return f"{box.label} lets out only TCP to ports {ports}: {what}; needs TURN/TLS on 443"
    return f"{box.label} drops UDP: {what}; needs TURN over TCP"


def expect(
    caller: NatBehaviour,
    callee: NatBehaviour,
    path: str,
    *,
    same_lan: bool = False,
    turn_transports: tuple[str, ...] = ("udp", "tcp"),
    family: str = "ipv4",
    keepalive_s: float | None = None,
    sides: tuple[Side, Side] | None = None,
) -> Expectation:
    """The expected outcome of a case: ``caller`` (controlling) behind one NAT, ``callee``
    behind another (or behind the same one when ``same_lan``; ``callee`` is then ignored),
    over address ``family``; ``turn_transports`` are what the TURN server offers (``tls``:
    TURN/TLS on 443); ``keepalive_s`` is the interval at which the more frequent of the two
    stacks sends on the selected pair (the ``longevity`` path; None: the sides' own, else RFC
    8445's default of 15 s); ``sides``: what the caller's and the callee's stacks do (default: the NATs alone)."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    beh = [_family_behaviour(caller, family), _family_behaviour(callee if not same_lan else caller, family)]
    if family == "nat64":
        six = caller if caller.nat64 else callee
        other = callee if six is caller else caller
        if path != "relay" and path != "relay-tls":
            return Expectation(False, None, f"{six.name} is IPv6-only and {other.name} has no IPv6: no candidate "
                                            "pair of one family (ICE pairs within a family); needs IPv6 on both, or TURN")
    for b, side in zip(beh, (caller, callee), strict=True):
        if b is None:
            have = "IPv6" if family == "ipv6" else "IPv4"
            return Expectation(False, None, f"{side.name} has no {have}; needs IPv6 on both")
    assert beh[0] is not None and beh[1] is not None
    net = _Net()
    net.add_socket(_Socket("stun", INTERNET, STUN))
    pa = _build(net, "a", beh[0], None, "a")
    pb = _build(net, "b", beh[1], pa.chain[-1] if same_lan else None, "a" if same_lan else "b")

    gathered = [_gather(net, p, path, turn_transports, sides[i] if sides else None) for i, p in enumerate((pa, pb))]
    for _, cands, why in gathered:
        if not cands and why:
            return Expectation(False, None, why, "stacks" if why.startswith(tuple(s.name for s in sides or ())) else "nats")
    if sides is not None:
        for i, (_, cands, _) in enumerate(gathered):
            waiting = sides[1 - i]
            if not cands and waiting.gives_up_without_candidates:
                return Expectation(False, None, "; ".join([
                    *net.notes, f"{waiting.name} gives up at once when the other side signals no candidate "
                    "(it does not wait for peer-reflexive ones)",
                ]), "stacks")
    agents = [_Agent(g[0], list(gathered[1 - i][1])) for i, g in enumerate(gathered)]

    for _ in range(ROUNDS):
        for here, there in ((agents[0], agents[1]), (agents[1], agents[0])):
            for remote in list(here.remotes):
                got = net.deliver(here.sock, remote)
                if got is None:
                    continue
                receiver, source = got
                if receiver is not there.sock:
                    continue
                if source not in there.remotes:  # peer-reflexive: learn it, check it back
                    there.remotes.append(source)
                answer = net.deliver(there.sock, source)
                if answer is not None and answer[0] is here.sock and remote not in here.valid:
                    here.valid.append(remote)

    if not agents[0].valid:
        udp = _failure(net, path, [b for b in beh if b is not None])  # (both, asserted above)
        if path == "host" and sides is not None:
            over_tcp, note = _ice_tcp(beh, same_lan, sides)
            if over_tcp is not None:
                return Expectation(True, "direct", f"{over_tcp}; over UDP alone it fails: {udp.split('; needs')[0]}", "stacks")
            if note is not None:
                return Expectation(False, None, "; ".join([*net.notes, f"{udp} ({note})"]), "stacks")
        return Expectation(False, None, "; ".join([*net.notes, udp]), "stacks" if net.notes else "nats")
    remote = agents[0].valid[0]
    if path == "longevity":
        return _longevity(pa, pb, sides, keepalive_s)
    if path in ("relay", "relay-tls"):
        how = "over TLS on port 443" if path == "relay-tls" else "over UDP or TCP"
        via = " (the IPv6-only side through NAT64)" if family == "nat64" else ""
        return Expectation(True, "relay", f"both peers allocate on the TURN relay {how}{via}, which relays between them")
    lan_ips = {pa.sock.local[0], pb.sock.local[0]}
    if same_lan and remote[0] in lan_ips and pa.sock.net == pb.sock.net:
        return Expectation(True, "lan", "both peers are on one LAN")
    if net.hairpins:
        box = net.box_by_id(sorted(net.hairpins)[0])
        label = box.label if box else "the NAT"
        return Expectation(True, "hairpin", f"{label} hairpins packets to its own public address")
    return Expectation(True, "direct", _how(pa, pb, path))


def _ice_tcp(beh: list[NatBehaviour | None], same_lan: bool, sides: tuple[Side, Side]) -> tuple[str | None, str | None]:
    """ICE-TCP on the host path (RFC 6544): (why the case connects over a TCP host pair, or
    None; else why it does not though a connection would get through, or None).

    A TCP pair needs one side to dial ("active") and the other to listen on a passive host
    candidate it signaled. The connection's first packet must get out of the dialer's
    boxes (a UDP-blocking firewall passes TCP; an egress filter only to its ports, never to a
    listener's ephemeral port) and into the listener's: only a box without NAT and without a
    filter (``open``) lets an unsolicited connection in. Once up, its packets pass both ways
    (conntrack), and the dialer's side is learned as a peer-reflexive TCP candidate."""
    assert beh[0] is not None and beh[1] is not None
    reasons: list[str] = []
    notes: list[str] = []
    for dialer, listener in ((0, 1), (1, 0)):
        net = _Net(tcp=True)
        pa = _build(net, "a", beh[0], None, "a")
        pb = _build(net, "b", beh[1], pa.chain[-1] if same_lan else None, "a" if same_lan else "b")
        d, lis = (pa, pb)[dialer], (pa, pb)[listener]
        target = (lis.sock.local[0], "tcp-passive")
        listening = net.add_socket(_Socket(f"{lis.sock.peer}-tcp", lis.sock.net, target))
        got = net.deliver(d.sock, target)
        if got is None or got[0] is not listening:
            continue
        ds, ls = sides[dialer], sides[listener]
        if ds.tcp is None or ls.tcp is None:
            continue  # not known: no claim either way
        where = (f"{d.chain[0].label} lets TCP out and {lis.chain[0].label} (no NAT, no filter) lets the "
                 "connection in")
        if "active" in ds.tcp and "passive" in ls.tcp:
            reasons.append(f"connects over ICE-TCP (RFC 6544): {ds.name} dials {ls.name}'s passive TCP host "
                           f"candidate; {where}")
            continue
        if "passive" not in ds.tcp + ls.tcp:
            continue  # neither listens: no TCP pair could form with either order, the UDP answer stands
        lacks = [*([f"{ds.name} does not dial TCP candidates"] if "active" not in ds.tcp else []),
                 *([f"{ls.name} signals no passive TCP candidate"] if "passive" not in ls.tcp else [])]
        notes.append(f"ICE-TCP would get through from {ds.name} to {ls.name} ({where}), but {' and '.join(lacks)}")
    if reasons:
        return reasons[0], None
    return None, "; ".join(dict.fromkeys(notes)) or None


def _failure(net: _Net, path: str, beh: list[NatBehaviour]) -> str:
    """The cause of a failed direct path, and its fix, from the drops the model recorded."""
    drops = net.drops
    mapping = [d for d in drops if d.kind == "filtered" and d.source_mapping not in (None, Mapping.ENDPOINT_INDEPENDENT)]
    if mapping:
        movers = sorted({d.source for d in mapping if d.source})
        filters = sorted({d.box for d in mapping})
        f = mapping[0].filtering
        by = "address and port" if f == Filtering.ADDRESS_AND_PORT_DEPENDENT else "address"
        who = " and ".join(movers)
        return (f"{who} {'map' if len(movers) > 1 else 'maps'} per destination (a new public port toward each "
                f"peer, not the one its srflx candidate shows), and {' and '.join(filters)} "
                f"{'filter' if len(filters) > 1 else 'filters'} by {by}, so the checks from that port are dropped: "
                f"mapping, not filtering alone; {_fix(path)}")
    for kind, text in (("blocked", "drops UDP"), ("egress", "passes only outbound TCP to its allowed ports")):
        hit = next((d for d in drops if d.kind == kind), None)
        if hit is not None:
            return f"{hit.box} {text}; {'needs TURN/TLS on 443' if kind == 'egress' else 'needs TURN over TCP'}"
    hair = next((d for d in drops if d.kind == "hairpin"), None)
    if hair is not None:
        return f"{hair.box} does not hairpin (packets to its own public address are dropped); {_fix(path)}"
    if path == "host" and any(d.kind == "private" for d in drops):
        return "host candidates are private addresses, not reachable from another network; needs srflx (STUN) or TURN"
    filtered = [d for d in drops if d.kind == "filtered"]
    if filtered:
        boxes = sorted({d.box for d in filtered})
        return f"{' and '.join(boxes)} {'filter' if len(boxes) > 1 else 'filters'} the checks (no mapping sent to their source); {_fix(path)}"
    if any(d.kind == "private" for d in drops):
        return "private addresses are not reachable from another network; " + _fix(path)
    unmapped = next((d for d in drops if d.kind == "unmapped"), None)
    if unmapped is not None:
        return f"{unmapped.box} has no mapping for the port the checks go to; {_fix(path)}"
    return "no check got an answer; " + _fix(path)


def _longevity(pa: _Peer, pb: _Peer, sides: tuple[Side, Side] | None, keepalive_s: float | None) -> Expectation:
    """A connected srflx pair idles past the NATs' UDP mapping lifetime.

    Every consent check or keepalive crosses both NATs (and a check's answer crosses them
    back), and a conntrack entry is refreshed by packets either way: the mappings live as long
    as the **more frequent** sender sends more often than the shortest lifetime. If neither
    does, the mappings expire mid-call; NATs that give a new mapping the same public port
    (port preservation, or a port hashed from the flow) re-open the very endpoints the pair
    uses as soon as both sides send again (keepalives, SCTP retransmissions), so the call
    recovers; with a fresh port per mapping the pair is gone (an ICE restart would be needed).
    """
    behaviours = [b for p in (pa, pb) for b in [p.behaviour, *([p.behaviour.inner] if p.behaviour.inner else [])]]
    lifetime = min(b.udp_timeout for b in behaviours)
    named = [s for s in sides or () if s.keepalive_s is not None]
    who = "the stacks"
    if keepalive_s is None and named:
        fastest = min(named, key=lambda s: s.keepalive_s or 0.0)
        keepalive_s, who = fastest.keepalive_s, fastest.name
    interval = keepalive_s if keepalive_s is not None else DEFAULT_KEEPALIVE_S
    if interval < lifetime:
        return Expectation(True, "direct", f"{who} sends on the pair every {interval:g} s, which keeps the {lifetime} s "
                                           f"mappings open through the idle period; {_how(pa, pb, 'srflx')}")
    slow = f"{' and '.join(dict.fromkeys(s.name for s in sides))} send" if sides else "the stacks send"
    expired = f"the NATs drop an idle UDP mapping after {lifetime} s and {slow} on the pair only every {interval:g} s"
    nats = [b for b in behaviours if b.nat]
    fresh = [b.name for b in nats if b.ports not in (PortAllocation.PRESERVE, PortAllocation.HASH)]
    decided = "stacks" if named else "nats"
    if not fresh:
        return Expectation(True, "direct", f"{expired}, so the mappings expire mid-call, but every NAT on the way gives a "
                                           "new mapping the same public port: the next packets of both sides re-open the "
                                           "pair's endpoints and the call recovers (keepalive < "
                                           f"{lifetime} s would avoid the gap)", decided)
    return Expectation(False, None, f"{expired}, and {' and '.join(dict.fromkeys(fresh))} gives a new mapping a new port: "
                                    f"the pair's endpoints are gone; needs keepalive < {lifetime} s", decided)


def _how(a: _Peer, b: _Peer, path: str) -> str:
    def kind(p: _Peer) -> str:
        parts = []
        for box in p.chain:
            if box.mapping is None:
                parts.append(f"{box.label} has no NAT" + (f", filters {box.filtering.value}" if box.filtering else ""))
            else:
                parts.append(f"{box.label} maps {box.mapping.value}, filters {box.filtering.value if box.filtering else 'nothing'}")
        return " behind ".join(parts)

    if path == "host":
        return f"a host address without NAT is reachable ({kind(a)}; {kind(b)})"
    return f"checks open both mappings ({kind(a)}; {kind(b)})"


def expected_probe(behaviour: NatBehaviour) -> dict[str, object]:
    """What ``natkit probe`` from behind ``behaviour`` must report (its JSON vocabulary); the
    NAT's kind (:mod:`natkit.lab.nats`) decides."""
    return _kind_probe(behaviour)
