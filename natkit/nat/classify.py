"""Sans-IO NAT classification: recorded exchanges in, a verdict out.

Nothing here touches a socket or a clock. :mod:`natkit.nat.discovery` runs the RFC 5780 tests
and records what happened as :class:`Exchange` values; :func:`classify` turns them into a
:class:`Verdict`. Keeping the decisions here lets them be tested on recorded (or invented)
exchanges: a server that ignores CHANGE-REQUEST, a server without OTHER-ADDRESS, loss, an ALG.

The guards that the classic tools lack:

* every response's actual sender is compared with the sender the test asked for; a response
  from the primary address to a CHANGE-REQUEST means the server ignored it, which makes the
  filtering *unknown*, never endpoint-independent;
* a filtering test only counts as "blocked" if the server's alternate endpoints were shown to
  answer at all (the mapping tests reach them), so a dead alternate address is not filtering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Address = tuple[str, int]

# Values of Verdict.mapping / Verdict.filtering (stable: they are JSON output).
NONE = "none"
EI = "endpoint-independent"
AD = "address-dependent"
APD = "address-and-port-dependent"
UNKNOWN = "unknown"

# Values of Verdict.nat_type.
OPEN = "open"
FULL_CONE = "full-cone"
RESTRICTED_CONE = "restricted-cone"
PORT_RESTRICTED_CONE = "port-restricted-cone"
SYMMETRIC = "symmetric"
SYMMETRIC_FIREWALL = "symmetric-firewall"
UDP_BLOCKED = "udp-blocked"
NAT_TYPES = (
    OPEN,
    FULL_CONE,
    RESTRICTED_CONE,
    PORT_RESTRICTED_CONE,
    SYMMETRIC,
    SYMMETRIC_FIREWALL,
    UDP_BLOCKED,
    UNKNOWN,
)

NO_RFC5780 = "server does not support RFC 5780"


@dataclass(frozen=True)
class Reply:
    """What came back for one request: the actual sender and the attributes that matter."""

    source: Address
    mapped: Address | None = None  # XOR-MAPPED-ADDRESS
    plain_mapped: Address | None = None  # MAPPED-ADDRESS (what an ALG rewrites)
    other: Address | None = None  # OTHER-ADDRESS
    origin: Address | None = None  # RESPONSE-ORIGIN
    error: int | None = None  # ERROR-CODE of an error response
    rtt: float | None = None  # seconds, last transmission to response


@dataclass(frozen=True)
class Exchange:
    """One test: a request sent to ``dest`` (with CHANGE-REQUEST flags ``change``) whose
    response must come from ``expect``; ``reply`` is None when nothing came back in time."""

    name: str
    dest: Address
    expect: Address
    change: int = 0
    reply: Reply | None = None
    attempts: int = 1
    local: Address | None = None
    elapsed: float | None = None


@dataclass(frozen=True)
class ServerAnswer:
    """Test I toward one server from the primary socket (and the TCP/TLS control)."""

    label: str  # as the user wrote it, e.g. "stun:stun.example.org"
    address: Address  # resolved primary address
    udp: Exchange | None = None  # None when the server is not asked over UDP (stuns:)
    stream: Reply | None = None  # Binding over TCP/TLS, if one was made
    stream_transport: str | None = None  # "tcp" | "tls"


@dataclass(frozen=True)
class Observations:
    """Everything one probe of one address family recorded."""

    family: int  # 4 | 6
    local: Address | None  # primary socket: address toward the server, bound port
    servers: tuple[ServerAnswer, ...]
    rfc5780_server: int | None = None  # index into servers of the one tested
    mapping_tests: tuple[Exchange, ...] = ()  # to A2:P1, A2:P2, A1:P2 from the primary socket
    filtering_tests: tuple[Exchange, ...] = ()  # change ip+port, change port; fresh sockets
    hairpin: bool | None = None  # own request came back through the NAT; None: not run
    behaviour: bool = True  # False: only the mapping was asked for (--no-behaviour)


@dataclass
class Verdict:
    public: Address | None
    mapping: str
    filtering: str
    hairpinning: bool | None
    nat_type: str
    reason: str | None = None  # why the type is unknown (or how it was derived)
    alg: bool = False
    udp_blocked: bool = False
    reachable: bool = True
    mappings_agree: bool | None = None
    notes: list[str] = field(default_factory=list)


def fmt(addr: Address | None) -> str:
    if addr is None:
        return "-"
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def same(a: Address | None, b: Address | None) -> bool:
    """Address equality that ignores textual differences in IPv6 spelling."""
    if a is None or b is None:
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0]) and a[1] == b[1]
    except ValueError:
        return a == b


def usable_other(answer: ServerAnswer) -> Address | None:
    """OTHER-ADDRESS of a server's test I, if it can serve RFC 5780 tests: an address of the
    same family that differs from the primary in both IP and port."""
    if answer.udp is None or answer.udp.reply is None:
        return None
    other = answer.udp.reply.other
    if other is None:
        return None
    primary = answer.address
    if (":" in other[0]) != (":" in primary[0]):
        return None
    if same((other[0], 0), (primary[0], 0)) or other[1] == primary[1]:
        return None
    return other


def _good(ex: Exchange | None) -> Reply | None:
    """The reply of an exchange if it is a success carrying XOR-MAPPED-ADDRESS."""
    if ex is None or ex.reply is None or ex.reply.error is not None:
        return None
    return ex.reply if ex.reply.mapped is not None else None


def _judge(ex: Exchange, notes: list[str]) -> str:
    """A filtering test's outcome: pass | blocked | ignored | wrong."""
    r = ex.reply
    if r is None:
        return "blocked"
    if r.error is not None:
        notes.append(f"{ex.name}: error {r.error} to CHANGE-REQUEST")
        return "ignored"
    if same(r.source, ex.dest) and not same(ex.dest, ex.expect):
        notes.append(f"{ex.name}: answered from {fmt(r.source)}, asked for {fmt(ex.expect)}")
        return "ignored"
    if not same(r.source, ex.expect):
        notes.append(f"{ex.name}: answered from {fmt(r.source)}, expected {fmt(ex.expect)}")
        return "wrong"
    if r.origin is not None and not same(r.origin, ex.expect):
        # The actual sender is what crossed the NAT, so it decides; note the disagreement.
        notes.append(f"{ex.name}: RESPONSE-ORIGIN {fmt(r.origin)} but sent from {fmt(r.source)}")
    return "pass"


def _mapping(obs: Observations, m1: Address, notes: list[str]) -> str:
    by_name = {ex.name: ex for ex in obs.mapping_tests}
    ex2, ex3, ex4 = by_name.get("mapping-2"), by_name.get("mapping-3"), by_name.get("mapping-4")
    for ex in (ex2, ex3, ex4):
        if ex is not None and ex.reply is not None and not same(ex.reply.source, ex.expect):
            notes.append(
                f"{ex.name}: answered from {fmt(ex.reply.source)}, sent to {fmt(ex.expect)}"
            )
            return UNKNOWN
    r2, r3, r4 = _good(ex2), _good(ex3), _good(ex4)
    if r2 is None:
        notes.append("mapping-2: no answer from the server's alternate address")
        return UNKNOWN
    assert r2.mapped is not None
    if same(r2.mapped, m1):
        if r4 is not None and r4.mapped is not None and not same(r4.mapped, m1):
            return APD  # same mapping toward another IP but not toward another port
        return EI
    if r3 is None or r3.mapped is None:
        notes.append("mapping-3: no answer from the server's alternate address and port")
        return UNKNOWN
    return AD if same(r3.mapped, r2.mapped) else APD


def _filtering(obs: Observations, mapping_reached_alternate: bool, notes: list[str]) -> str:
    by_name = {ex.name: ex for ex in obs.filtering_tests}
    ex2, ex3 = by_name.get("filtering-2"), by_name.get("filtering-3")
    if ex2 is None:
        return UNKNOWN
    j2 = _judge(ex2, notes)
    j3 = _judge(ex3, notes) if ex3 is not None else None
    if j2 == "pass":
        if j3 == "blocked":
            notes.append("filtering-3 got no answer although filtering-2 did (loss?)")
        return EI
    if "ignored" in (j2, j3):
        notes.append(NO_RFC5780 + " (CHANGE-REQUEST ignored)")
        return UNKNOWN
    if "wrong" in (j2, j3) or j3 is None:
        return UNKNOWN
    if j3 == "pass":
        return AD
    # Both blocked: only filtering if the alternate endpoints are known to answer at all.
    if not mapping_reached_alternate:
        notes.append("the server's alternate address never answered: cannot tell filtering")
        return UNKNOWN
    return APD


def classify(obs: Observations) -> Verdict:
    """Decide mapping, filtering, NAT type and what is known for sure."""
    notes: list[str] = []
    answered = [(i, s) for i, s in enumerate(obs.servers) if _good(s.udp) is not None]
    stream = [s for s in obs.servers if s.stream is not None and s.stream.mapped is not None]
    if not answered:
        if stream and not any(s.udp is not None for s in obs.servers):
            reply = stream[0].stream
            return Verdict(
                public=reply.mapped if reply else None,
                mapping=UNKNOWN,
                filtering=UNKNOWN,
                hairpinning=None,
                nat_type=UNKNOWN,
                reason="only stuns: servers were given; the NAT's UDP behaviour needs a stun: "
                "server",
                notes=notes,
            )
        if stream:
            return Verdict(
                public=stream[0].stream.mapped if stream[0].stream else None,
                mapping=UNKNOWN,
                filtering=UNKNOWN,
                hairpinning=None,
                nat_type=UDP_BLOCKED,
                reason="no answer over UDP, but the server answers over "
                + (stream[0].stream_transport or "TCP").upper(),
                udp_blocked=True,
                notes=notes,
            )
        return Verdict(
            public=None,
            mapping=UNKNOWN,
            filtering=UNKNOWN,
            hairpinning=None,
            nat_type=UNKNOWN,
            reason="no server answered",
            reachable=False,
            notes=notes,
        )

    replies = [r for _, s in answered if (r := _good(s.udp)) is not None]
    primary_idx = obs.rfc5780_server if obs.rfc5780_server is not None else answered[0][0]
    primary_reply = _good(obs.servers[primary_idx].udp) or replies[0]
    public = primary_reply.mapped
    assert public is not None

    alg = False
    for r in replies:
        if r.plain_mapped is not None and not same(r.plain_mapped, r.mapped):
            alg = True
            notes.append(
                f"MAPPED-ADDRESS {fmt(r.plain_mapped)} differs from XOR-MAPPED-ADDRESS "
                f"{fmt(r.mapped)}: something on the path rewrites addresses (an ALG)"
            )
            break

    agree = all(same(r.mapped, public) for r in replies) if len(replies) > 1 else None
    if agree is False:
        seen = ", ".join(f"{s.label}: {fmt(r.mapped)}" for (_, s), r in zip(answered, replies))
        notes.append(f"servers saw different mappings ({seen}): endpoint-dependent mapping")

    no_nat = obs.local is not None and same(public, obs.local)
    if not no_nat and obs.local is not None and same((public[0], 0), (obs.local[0], 0)):
        notes.append("the mapped address is ours but the port was changed on the path")

    tested = obs.rfc5780_server is not None and bool(obs.mapping_tests or obs.filtering_tests)
    reason: str | None = None
    if no_nat:
        mapping = NONE
    elif tested:
        mapping = _mapping(obs, public, notes)
    else:
        mapping = UNKNOWN

    if tested:
        reached = any(_good(ex) is not None for ex in obs.mapping_tests)
        filtering = _filtering(obs, reached, notes)
    else:
        filtering = UNKNOWN
        if not obs.behaviour:
            reason = "behaviour tests not run (--no-behaviour)"
        else:
            reason = NO_RFC5780 + " (no usable OTHER-ADDRESS)"

    if mapping == NONE:
        nat_type = {EI: OPEN, AD: SYMMETRIC_FIREWALL, APD: SYMMETRIC_FIREWALL}.get(
            filtering, UNKNOWN
        )
    elif mapping in (AD, APD) or (mapping == UNKNOWN and agree is False):
        nat_type = SYMMETRIC
        if mapping == UNKNOWN:
            reason = "servers saw different mapped addresses (endpoint-dependent mapping)"
    elif mapping == EI:
        nat_type = {EI: FULL_CONE, AD: RESTRICTED_CONE, APD: PORT_RESTRICTED_CONE}.get(
            filtering, UNKNOWN
        )
    else:
        nat_type = UNKNOWN
    if nat_type == UNKNOWN and reason is None:
        if any(NO_RFC5780 in n for n in notes):
            reason = NO_RFC5780
        else:
            reason = next((n for n in notes), "the tests were inconclusive")
    return Verdict(
        public=public,
        mapping=mapping,
        filtering=filtering,
        hairpinning=obs.hairpin,
        nat_type=nat_type,
        reason=reason,
        alg=alg,
        mappings_agree=agree,
        notes=notes,
    )


# What a direct (non-relayed) UDP path needs, per pair of classic types (design notes):
# every pair works except symmetric with symmetric or with a port-restricted filter.
_APDF_LIKE = {PORT_RESTRICTED_CONE, SYMMETRIC_FIREWALL, SYMMETRIC}
_PEER_TYPES = (OPEN, FULL_CONE, RESTRICTED_CONE, PORT_RESTRICTED_CONE, SYMMETRIC)


def direct_path(a: str, b: str) -> bool | None:
    """Will a direct UDP path work between peers behind NAT types a and b? None: unknown."""
    if UDP_BLOCKED in (a, b):
        return False
    if UNKNOWN in (a, b):
        return None
    if a == SYMMETRIC and b in _APDF_LIKE:
        return False
    return not (b == SYMMETRIC and a in _APDF_LIKE)


def ice_advice(nat_type: str) -> dict[str, object]:
    """What a NAT type means for ICE: peers reachable directly and when TURN is needed."""
    if nat_type == UNKNOWN:
        return {
            "direct_with": None,
            "turn_needed_with": None,
            "summary": "unknown: keep a TURN server in the configuration",
        }
    direct = [t for t in _PEER_TYPES if direct_path(nat_type, t)]
    relay = [t for t in _PEER_TYPES if not direct_path(nat_type, t)]
    if nat_type == UDP_BLOCKED:
        summary = "UDP is blocked: every connection needs TURN over TCP or TLS (turns:)"
    elif not relay:
        summary = "direct connections work with peers behind every common NAT type"
    else:
        summary = (
            "direct connections work with "
            + ", ".join(direct)
            + " peers; peers behind "
            + ", ".join(relay)
            + " NATs need a TURN relay"
        )
    return {"direct_with": direct, "turn_needed_with": relay, "summary": summary}
