"""What each lab case should do, derived from the NATs' behaviours (sans-IO).

No table of outcomes lives here. :func:`expect` builds a small model of the case and plays ICE
over it:

* **NATs** map (RFC 4787 §4.1: endpoint-independent, address-dependent, address-and-port-
  dependent) and filter (§5: the same three) per mapping, exactly as
  :class:`natkit.lab.nats.NatBehaviour` describes the router; a firewall may drop UDP; hairpinned
  packets are looped back unfiltered (and dropped without hairpinning); private addresses are
  reachable only from their own LAN. A router without NAT (``open``) forwards everything.
* **Candidates** per path: *host* gives the peer's own address; *srflx* the mapping the STUN
  server saw (none when UDP is blocked); *relay* an allocation on the TURN server, reached over
  UDP or, through a UDP-blocking firewall, over TCP (RFC 6062 is not needed: the client talks
  TCP to the server, the server relays UDP). A relay allocation is itself modelled as a public
  endpoint that filters by address (TURN permissions are per IP, RFC 8656 §9).
* **ICE** (RFC 8445): both agents send checks to every remote candidate, round after round; an
  agent that receives a check answers it to the check's source and, if that source is new,
  learns it as a peer-reflexive candidate and sends a triggered check to it (§7.3.1.3-4). A check
  succeeds when its response gets back. The case connects when the controlling agent (the
  caller) has a succeeded pair, which it then nominates over the same path.

The result also says which way the packets go (``lan``, ``hairpin``, ``direct`` between public
addresses, ``relay``), which the packet evidence is checked against, and why a case fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natkit.lab.nats import Filtering, Mapping, NatBehaviour
from natkit.lab.nats import expected_probe as _kind_probe

__all__ = ["Expectation", "Side", "expect", "expected_probe"]

Endpoint = tuple[str, str]  # (ip token, port token): symbolic, only equality matters
STUN: Endpoint = ("stun-server", "3478")
TURN_IP = "turn-server"
ROUNDS = 4  # enough for any exchange of checks, triggered checks and their responses


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


@dataclass
class _Box:
    """A router (or the TURN server's relay): how it maps and filters, and whom each mapping
    has sent to."""

    id: str
    mapping: Mapping | None
    filtering: Filtering | None
    block_udp: bool = False
    hairpin: bool = False
    label: str = ""
    sent: dict[Endpoint, set[Endpoint]] = field(default_factory=dict)
    owner: dict[Endpoint, _Socket] = field(default_factory=dict)  # public mapping -> socket

    @classmethod
    def of(cls, box_id: str, b: NatBehaviour) -> _Box:
        return cls(box_id, b.mapping, b.filtering, b.block_udp, b.hairpinning, b.name)


@dataclass(eq=False)
class _Socket:
    peer: str
    box: _Box
    local: Endpoint
    public: bool  # the local address is reachable from outside (no NAT in front)


class _Net:
    """Delivers packets through the boxes; remembers why packets were dropped."""

    def __init__(self) -> None:
        self.sockets: list[_Socket] = []
        self.drops: list[str] = []
        self.notes: list[str] = []  # what the stacks did that the NATs alone do not explain
        self.hairpinned = False

    def outbound(self, sock: _Socket, dst: Endpoint) -> Endpoint | None:
        """The public source of a packet from ``sock`` to ``dst`` after its box (None: dropped)."""
        box = sock.box
        if box.block_udp:
            self.drops.append(f"UDP is blocked by {box.label}")
            return None
        if box.mapping is None:
            src = sock.local
        else:
            if box.mapping == Mapping.ENDPOINT_INDEPENDENT:
                port = sock.peer
            elif box.mapping == Mapping.ADDRESS_DEPENDENT:
                port = f"{sock.peer}>{dst[0]}"
            else:
                port = f"{sock.peer}>{dst[0]}:{dst[1]}"
            src = (box.id, port)
            box.owner[src] = sock
        box.sent.setdefault(src, set()).add(dst)
        return src

    def deliver(self, sock: _Socket, dst: Endpoint) -> tuple[_Socket, Endpoint] | None:
        """Send one UDP packet; the receiving socket and the source it sees, or None."""
        box = sock.box
        for other in self.sockets:  # on the same LAN: no router in between
            if other.box is box and other.local == dst and box.id != TURN_IP:
                return other, sock.local
        if dst[0] == box.id and box.mapping is not None:
            # To the router's own public address from inside: hairpinning.
            src = self.outbound(sock, dst)
            if src is None:
                return None
            owner = box.owner.get(dst)
            if not box.hairpin or owner is None:
                self.drops.append(f"{box.label} does not hairpin")
                return None
            self.hairpinned = True
            return owner, src
        src = self.outbound(sock, dst)
        if src is None:
            return None
        return self.inbound(src, dst)

    def inbound(self, src: Endpoint, dst: Endpoint) -> tuple[_Socket, Endpoint] | None:
        for other in self.sockets:
            if other.public and other.local == dst:
                target, box = other, other.box
                break
        else:
            target = None
            for other in self.sockets:
                if other.box.id == dst[0] and other.box.mapping is not None:
                    target, box = other.box.owner.get(dst), other.box
                    break
            if target is None:
                self.drops.append("private addresses are not reachable from another network")
                return None
        if target is None:  # a public address of a NAT, but no mapping there
            self.drops.append(f"{box.label} has no mapping for that port")
            return None
        if box.block_udp:
            self.drops.append(f"UDP is blocked by {box.label}")
            return None
        sent = box.sent.get(dst, set())
        if box.filtering == Filtering.ADDRESS_DEPENDENT and not any(e[0] == src[0] for e in sent):
            self.drops.append(f"{box.label} filters by address (only IPs it sent to may answer)")
            return None
        if box.filtering == Filtering.ADDRESS_AND_PORT_DEPENDENT and src not in sent:
            self.drops.append(
                f"{box.label} filters by address and port (only the exact endpoint it sent to may answer)"
            )
            return None
        return target, src


@dataclass
class _Agent:
    sock: _Socket
    remotes: list[Endpoint]
    valid: list[Endpoint] = field(default_factory=list)


def _gather(
    net: _Net, sock: _Socket, path: str, turn: _Box, transports: tuple[str, ...], side: Side | None = None,
) -> tuple[_Socket, list[Endpoint], str | None]:
    """(socket ICE checks go from, signaled candidates, why there are none)."""
    if path == "host":
        return sock, [sock.local], None
    if path == "srflx":
        mapped = net.outbound(sock, STUN)
        if mapped is None:
            return sock, [], f"{sock.box.label} drops UDP, so STUN gives no srflx candidate"
        if mapped == sock.local and side is not None and not side.redundant_srflx:
            net.notes.append(
                f"{side.name} behind {sock.box.label} signals no srflx candidate (it equals its host "
                "address, which it drops as redundant, RFC 8445 §5.1.3)"
            )
            return sock, [], None
        return sock, [mapped], None
    # relay: UDP to the server unless UDP is blocked, else TCP (stream traffic passes).
    if side is not None and side.turn is not None:
        allowed = [t for t in transports if t in side.turn]
        if not allowed:
            return sock, [], f"{side.name} allocates over none of the TURN transports offered ({', '.join(transports)})"
        transports = tuple(allowed)
    usable = [t for t in transports if t == "tcp" or not sock.box.block_udp]
    if not usable:
        return sock, [], f"{sock.box.label} drops UDP and TURN over TCP is not offered"
    relay = _Socket(f"relay-{sock.peer}", turn, (TURN_IP, f"relay-{sock.peer}"), public=True)
    net.sockets.append(relay)
    return relay, [relay.local], None


def expect(
    caller: NatBehaviour,
    callee: NatBehaviour,
    path: str,
    *,
    same_lan: bool = False,
    turn_transports: tuple[str, ...] = ("udp", "tcp"),
    sides: tuple[Side, Side] | None = None,
) -> Expectation:
    """The expected outcome of a case: ``caller`` (controlling) behind one NAT, ``callee``
    behind another (or behind the same one when ``same_lan``; ``callee`` is then ignored).
    ``sides``: what the caller's and the callee's stacks do (default: the NATs alone)."""
    if path not in ("host", "srflx", "relay"):
        raise ValueError(f"unknown path {path!r}")
    net = _Net()
    box_a = _Box.of("nat-a", caller)
    box_b = box_a if same_lan else _Box.of("nat-b", callee)
    turn = _Box(TURN_IP, None, Filtering.ADDRESS_DEPENDENT, label="the TURN relay")
    socks = []
    for peer, box in (("a", box_a), ("b", box_b)):
        public = box.mapping is None  # no NAT: the host address is the public one
        ip = f"{box.id}-public-{peer}" if public else f"{box.id}-lan-{peer}"
        socks.append(_Socket(peer, box, (ip, "5000"), public))
    net.sockets.extend(socks)

    gathered = [_gather(net, s, path, turn, turn_transports, sides[i] if sides else None) for i, s in enumerate(socks)]
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
        for me, other in ((agents[0], agents[1]), (agents[1], agents[0])):
            for remote in list(me.remotes):
                got = net.deliver(me.sock, remote)
                if got is None:
                    continue
                receiver, source = got
                if receiver is not other.sock:
                    continue
                if source not in other.remotes:  # peer-reflexive: learn it, check it back
                    other.remotes.append(source)
                answer = net.deliver(other.sock, source)
                if answer is not None and answer[0] is me.sock and remote not in me.valid:
                    me.valid.append(remote)

    if not agents[0].valid:
        reasons = sorted(set(net.drops)) or ["no check got an answer"]
        return Expectation(False, None, "; ".join([*net.notes, *reasons]), "stacks" if net.notes else "nats")
    remote = agents[0].valid[0]
    if path == "relay":
        return Expectation(True, "relay", "both peers allocate on the TURN relay, which relays between them")
    if same_lan and remote[0] in {s.local[0] for s in socks}:
        return Expectation(True, "lan", "both peers are on one LAN")
    if net.hairpinned and remote[0] == box_a.id == box_b.id:
        return Expectation(True, "hairpin", f"{box_a.label} hairpins packets to its own public address")
    how = _how(box_a, box_b, path)
    return Expectation(True, "direct", how)


def _how(a: _Box, b: _Box, path: str) -> str:
    def kind(box: _Box) -> str:
        if box.mapping is None:
            return f"{box.label} has no NAT"
        return f"{box.label} maps {box.mapping.value}, filters {box.filtering.value if box.filtering else 'nothing'}"

    if path == "host":
        return f"a host address without NAT is reachable ({kind(a)}; {kind(b)})"
    return f"checks open both mappings ({kind(a)}; {kind(b)})"


def expected_probe(behaviour: NatBehaviour) -> dict[str, str]:
    """What ``natkit probe`` from behind ``behaviour`` must report (its JSON vocabulary); the
    NAT's kind (:mod:`natkit.lab.nats`) decides."""
    return _kind_probe(behaviour)
