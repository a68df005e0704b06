"""The lab topology: a TOML file read into an engine-independent model, and its address plan.

A topology names what the lab holds, not how an engine builds it: the netns engine
(:mod:`natkit.lab.netns`) and a container generator read the same :class:`Topology` and the
same :class:`Plan` (which router and peer gets which address). See ``configs/lab/default.toml``
for the documented format. Every mistake in a file is a :class:`~natkit.errors.UsageError` of
one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natkit.errors import UsageError
from natkit.lab.nat import PRESETS, NatBehaviour

__all__ = [
    "DEFAULT_TOPOLOGY",
    "PATHS",
    "Case",
    "Link",
    "NatSpec",
    "PeerPlan",
    "Plan",
    "RouterPlan",
    "Topology",
    "load",
    "parse",
]

# configs/lab/default.toml; the package carries it too (a link in a source tree, a copy in a wheel).
DEFAULT_TOPOLOGY = Path(__file__).with_name("default.toml").resolve()
PATHS = ("host", "srflx", "relay")
TURN_ENGINES = ("natkit", "coturn")
TURN_TRANSPORTS = ("udp", "tcp")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
# Mappings must outlive a case (gathering, checks, DTLS, echo) or the expectation model, which
# assumes live mappings, would be wrong for reasons that have nothing to do with NAT types.
MIN_UDP_TIMEOUT_S = 15


@dataclass(frozen=True)
class Link:
    """netem settings of one link (applied on both ends' egress by the engine)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    @property
    def shaped(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)


@dataclass(frozen=True)
class NatSpec:
    """One NAT of the topology: a behaviour, its knobs, its links and how many peers sit behind it."""

    name: str
    type: str
    behaviour: NatBehaviour
    wan: Link = Link()
    lan: Link = Link()
    peers: int = 1
    same_lan: bool = False


@dataclass(frozen=True)
class Servers:
    stun_addresses: tuple[str, str]
    stun_port: int
    stun_alt_port: int
    turn_engine: str
    turn_address: str
    turn_port: int
    turn_transports: tuple[str, ...]
    turn_username: str
    turn_password: str
    turn_realm: str
    signaling_address: str
    signaling_port: int

    def ice_servers(self, path: str) -> list[dict[str, Any]]:
        """The ``iceServers`` list (W3C shape) a peer gets for ``path``."""
        if path == "srflx":
            return [{"urls": [f"stun:{self.stun_addresses[0]}:{self.stun_port}"]}]
        if path == "relay":
            urls = [
                f"turn:{self.turn_address}:{self.turn_port}?transport={t}"
                for t in self.turn_transports
            ]
            return [
                {"urls": urls, "username": self.turn_username, "credential": self.turn_password}
            ]
        return []


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: a caller behind ``nats[0]``, a callee behind ``nats[1]``, a path."""

    nats: tuple[str, str]
    path: str
    same_lan: bool = False

    @property
    def id(self) -> str:
        return f"{self.nats[0]}~{self.nats[1]}/{self.path}"


@dataclass(frozen=True)
class PeerPlan:
    id: str
    ip: str


@dataclass(frozen=True)
class RouterPlan:
    """One router (a NAT instance) with its LAN and the peers on it."""

    id: str
    nat: NatSpec
    public_ip: str
    lan_net: str
    lan_ip: str
    peers: tuple[PeerPlan, ...]


@dataclass(frozen=True)
class Plan:
    """Who gets which address. Deterministic: the same topology always gives the same plan."""

    internet_net: str
    routers: tuple[RouterPlan, ...]

    def router(self, router_id: str) -> RouterPlan:
        for r in self.routers:
            if r.id == router_id:
                return r
        raise KeyError(router_id)

    def peers_of(self, case: Case) -> tuple[tuple[RouterPlan, PeerPlan], tuple[RouterPlan, PeerPlan]]:
        """(router, peer) of the caller and of the callee of ``case``."""
        a, b = case.nats
        if case.same_lan:
            r = self.router(f"{a}-1")
            return (r, r.peers[0]), (r, r.peers[1])
        ra = self.router(f"{a}-1")
        rb = self.router(f"{b}-2" if a == b else f"{b}-1")
        return (ra, ra.peers[0]), (rb, rb.peers[0])


@dataclass(frozen=True)
class Topology:
    """A whole lab: the internet segment, its servers and the NATs."""

    source: str
    name: str
    internet_net: str
    internet_link: Link
    lan_base: str
    servers: Servers
    nats: tuple[NatSpec, ...]
    case_deadline_s: float = 10.0
    parallel: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def nat(self, name: str) -> NatSpec:
        for n in self.nats:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def matrix_nats(self) -> tuple[NatSpec, ...]:
        """The NATs that form the rows/columns of the matrix (same-LAN NATs are extra rows)."""
        return tuple(n for n in self.nats if not n.same_lan)

    def cases(self, paths: tuple[str, ...] = PATHS) -> list[Case]:
        """Every unordered pair of matrix NATs (a NAT with itself = two NATs of that kind), plus
        each same-LAN NAT, times every path."""
        rows = self.matrix_nats
        out: list[Case] = []
        for path in paths:
            for i, a in enumerate(rows):
                for b in rows[i:]:
                    out.append(Case((a.name, b.name), path))
            for n in self.nats:
                if n.same_lan:
                    out.append(Case((n.name, n.name), path, same_lan=True))
        return out

    def plan(self, cases: list[Case] | None = None) -> Plan:
        """Addresses for every router the ``cases`` need (all cases when None).

        A NAT gets router ``NAME-1``; a second identical router ``NAME-2`` exists when a case
        pairs the NAT with itself (two distinct NATs of one kind). Router ``k`` (in file order)
        gets LAN ``lan_base + k`` (a /24), the router ``.1`` and its peers ``.10``, ``.11``.
        """
        cases = self.cases() if cases is None else cases
        needed: set[str] = set()
        for c in cases:
            needed.add(f"{c.nats[0]}-1")
            if not c.same_lan:
                needed.add(f"{c.nats[1]}-2" if c.nats[0] == c.nats[1] else f"{c.nats[1]}-1")
        inet = ipaddress.IPv4Network(self.internet_net)
        taken = {
            *self.servers.stun_addresses,
            self.servers.turn_address,
            self.servers.signaling_address,
        }
        public = (str(h) for h in inet.hosts() if str(h) not in taken and int(h) - int(inet.network_address) >= 10)
        lans = ipaddress.IPv4Network(self.lan_base).subnets(new_prefix=24)
        routers: list[RouterPlan] = []
        for nat in self.nats:
            for k in (1, 2):
                lan = next(lans)
                pub = next(public)
                rid = f"{nat.name}-{k}"
                if rid not in needed:
                    continue
                hosts = list(lan.hosts())
                peers = tuple(
                    PeerPlan(f"{rid}-p{i + 1}", str(hosts[9 + i])) for i in range(nat.peers)
                )
                routers.append(RouterPlan(rid, nat, pub, str(lan), str(hosts[0]), peers))
        return Plan(self.internet_net, tuple(routers))


# -- reading ------------------------------------------------------------------------------


class _Reader:
    """Walks the parsed TOML, naming ``file: key`` in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, what: str) -> UsageError:
        return UsageError(f"{self.source}: key '{key}': {what}")

    def table(self, data: Mapping[str, Any], key: str, name: str, required: bool = False) -> dict[str, Any]:
        full = f"{key}.{name}" if key else name
        if name not in data:
            if required:
                raise self.fail(full, "missing table; add it (see configs/lab/default.toml)")
            return {}
        value = data[name]
        if not isinstance(value, dict):
            raise self.fail(full, f"expected a table, got {type(value).__name__}")
        return value

    def check_keys(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> None:
        for k in data:
            if k not in allowed:
                full = f"{key}.{k}" if key else k
                raise self.fail(full, f"unknown key; expected one of: {', '.join(sorted(allowed))}")

    def get(self, data: Mapping[str, Any], key: str, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        full = f"{key}.{name}" if key else name
        if name not in data:
            if default is None:
                raise self.fail(full, "missing; it is required")
            return default
        value = data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are not numbers here, and an integer is a fine float.
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(full, f"expected {_kind_name(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.fail(full, f"expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}")
        return value

    def number(self, data: Mapping[str, Any], key: str, name: str, default: float, lo: float, hi: float) -> float:
        value = float(self.get(data, key, name, float, default))
        if not lo <= value <= hi:
            raise self.fail(f"{key}.{name}", f"{value:g} is out of range; give {lo:g}..{hi:g}")
        return value

    def ip(self, data: Mapping[str, Any], key: str, name: str, net: ipaddress.IPv4Network | None) -> str:
        text = self.get(data, key, name, str)
        return self.check_ip(f"{key}.{name}", text, net)

    def check_ip(self, full: str, text: str, net: ipaddress.IPv4Network | None) -> str:
        try:
            addr = ipaddress.IPv4Address(text)
        except ValueError:
            raise self.fail(full, f"{text!r} is not an IPv4 address") from None
        if net is not None and (addr not in net or addr in (net.network_address, net.broadcast_address)):
            raise self.fail(full, f"{text} is not a host address of the internet subnet {net}")
        return text

    def port(self, data: Mapping[str, Any], key: str, name: str, default: int) -> int:
        value = self.get(data, key, name, int, default)
        if not 1 <= value <= 65535:
            raise self.fail(f"{key}.{name}", f"{value} is not a port; give 1..65535")
        return int(value)

    def link(self, data: Mapping[str, Any], key: str) -> Link:
        self.check_keys(data, key, {"delay_ms", "jitter_ms", "loss_pct"})
        return Link(
            self.number(data, key, "delay_ms", 0.0, 0.0, 2000.0),
            self.number(data, key, "jitter_ms", 0.0, 0.0, 1000.0),
            self.number(data, key, "loss_pct", 0.0, 0.0, 100.0),
        )


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


_NAT_KEYS = {"name", "type", "hairpin", "udp_timeout_s", "wan", "lan"}


def _nat(r: _Reader, data: Any, key: str, same_lan: bool) -> NatSpec:
    if not isinstance(data, dict):
        raise r.fail(key, f"expected a table, got {type(data).__name__}")
    r.check_keys(data, key, _NAT_KEYS)
    name = r.get(data, key, "name", str)
    if not _NAME.match(name):
        raise r.fail(f"{key}.name", f"{name!r} is not a valid name; use 1-20 of a-z, 0-9, '-', starting with a letter")
    kind = r.get(data, key, "type", str)
    if kind not in PRESETS:
        raise r.fail(f"{key}.type", f"unknown NAT type {kind!r}; expected one of: {', '.join(PRESETS)}")
    hairpin = r.get(data, key, "hairpin", bool, False)
    timeout = r.number(data, key, "udp_timeout_s", 60, MIN_UDP_TIMEOUT_S, 86400)
    if timeout != int(timeout):
        raise r.fail(f"{key}.udp_timeout_s", f"{timeout:g} is not a whole number of seconds")
    behaviour = NatBehaviour.preset(kind, hairpinning=hairpin, udp_timeout=int(timeout))
    wan = r.link(r.table(data, key, "wan"), f"{key}.wan")
    lan = r.link(r.table(data, key, "lan"), f"{key}.lan")
    return NatSpec(name, kind, behaviour, wan, lan, peers=2 if same_lan else 1, same_lan=same_lan)


def parse(data: Mapping[str, Any], source: str = "<topology>") -> Topology:
    """Validate parsed TOML ``data`` and build the :class:`Topology` (``source`` names the file)."""
    r = _Reader(source)
    r.check_keys(data, "", {"lab", "internet", "stun", "turn", "signaling", "nat", "same_lan"})
    lab = r.table(data, "", "lab")
    r.check_keys(lab, "lab", {"name", "case_deadline_s", "parallel", "lan_base"})
    name = r.get(lab, "lab", "name", str, "lab")
    deadline = r.number(lab, "lab", "case_deadline_s", 10.0, 2.0, 120.0)
    parallel = int(r.number(lab, "lab", "parallel", 0, 0, 256))
    lan_base = r.get(lab, "lab", "lan_base", str, "10.64.0.0/16")
    try:
        lan_net = ipaddress.IPv4Network(lan_base)
    except ValueError as exc:
        raise r.fail("lab.lan_base", f"{exc}; give a CIDR such as 10.64.0.0/16") from None
    if lan_net.prefixlen > 18:
        raise r.fail("lab.lan_base", f"{lan_base} is too small; give a /18 or larger (one /24 per router)")

    inet = r.table(data, "", "internet", required=True)
    r.check_keys(inet, "internet", {"subnet", "delay_ms", "jitter_ms", "loss_pct"})
    subnet = r.get(inet, "internet", "subnet", str)
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise r.fail("internet.subnet", f"{exc}; give a CIDR such as 203.0.113.0/24") from None
    if net.prefixlen > 26:
        raise r.fail("internet.subnet", f"{subnet} is too small; give a /26 or larger")
    if net.overlaps(lan_net):
        raise r.fail("internet.subnet", f"{subnet} overlaps lab.lan_base {lan_base}")
    link = r.link({k: v for k, v in inet.items() if k != "subnet"}, "internet")

    stun = r.table(data, "", "stun", required=True)
    r.check_keys(stun, "stun", {"addresses", "port", "alt_port"})
    addrs = r.get(stun, "stun", "addresses", list)
    if len(addrs) != 2 or not all(isinstance(a, str) for a in addrs):
        raise r.fail("stun.addresses", "give exactly two IPv4 addresses (RFC 5780 needs a primary and an alternate)")
    a0 = r.check_ip("stun.addresses[0]", addrs[0], net)
    a1 = r.check_ip("stun.addresses[1]", addrs[1], net)
    if a0 == a1:
        raise r.fail("stun.addresses", "the two addresses must differ")
    sport = r.port(stun, "stun", "port", 3478)
    salt = r.port(stun, "stun", "alt_port", 3479)
    if sport == salt:
        raise r.fail("stun.alt_port", "must differ from stun.port")

    turn = r.table(data, "", "turn", required=True)
    r.check_keys(turn, "turn", {"engine", "address", "port", "transports", "username", "password", "realm"})
    engine = r.get(turn, "turn", "engine", str, "natkit")
    if engine not in TURN_ENGINES:
        raise r.fail("turn.engine", f"unknown engine {engine!r}; expected one of: {', '.join(TURN_ENGINES)}")
    taddr = r.ip(turn, "turn", "address", net)
    tport = r.port(turn, "turn", "port", 3478)
    transports = r.get(turn, "turn", "transports", list, ["udp", "tcp"])
    if not transports or any(t not in TURN_TRANSPORTS for t in transports) or len(set(transports)) != len(transports):
        raise r.fail("turn.transports", f"{transports!r}: give a list of distinct transports out of udp, tcp")
    user = r.get(turn, "turn", "username", str, "natkit")
    password = r.get(turn, "turn", "password", str, "natkit-lab")
    realm = r.get(turn, "turn", "realm", str, "lab.natkit")
    for k, v in (("username", user), ("password", password), ("realm", realm)):
        if not v or any(ord(c) < 0x20 for c in v):
            raise r.fail(f"turn.{k}", "must be a non-empty string without control characters")

    sig = r.table(data, "", "signaling", required=True)
    r.check_keys(sig, "signaling", {"address", "port"})
    saddr = r.ip(sig, "signaling", "address", net)
    sigport = r.port(sig, "signaling", "port", 8080)

    used: dict[str, str] = {}
    for key, addr in (("stun.addresses[0]", a0), ("stun.addresses[1]", a1), ("turn.address", taddr), ("signaling.address", saddr)):
        # TURN and signaling may share an address with each other but not with STUN's two,
        # which must answer only as the RFC 5780 responder.
        if addr in used and not {key, used[addr]} == {"turn.address", "signaling.address"}:
            raise r.fail(key, f"{addr} is already used by {used[addr]}")
        used.setdefault(addr, key)
    if taddr == saddr and tport == sigport:
        raise r.fail("signaling.port", "TURN and signaling share an address and a port")

    nats_data = data.get("nat", [])
    if not isinstance(nats_data, list) or not nats_data:
        raise r.fail("nat", "give at least one [[nat]] table")
    nats = [_nat(r, d, f"nat[{i}]", False) for i, d in enumerate(nats_data)]
    lans_data = data.get("same_lan", [])
    if not isinstance(lans_data, list):
        raise r.fail("same_lan", "expected [[same_lan]] tables")
    nats += [_nat(r, d, f"same_lan[{i}]", True) for i, d in enumerate(lans_data)]
    seen: set[str] = set()
    for i, n in enumerate(nats):
        if n.name in seen:
            where = f"nat[{i}]" if not n.same_lan else f"same_lan[{i - len(nats_data)}]"
            raise r.fail(f"{where}.name", f"duplicate name {n.name!r}")
        seen.add(n.name)
    hosts = net.num_addresses - 2 - 9 - len(used)
    if 2 * len(nats) > hosts:
        raise r.fail("internet.subnet", f"{subnet} has no room for {2 * len(nats)} router addresses")
    if 2 * len(nats) > 2 ** (24 - lan_net.prefixlen):
        raise r.fail("lab.lan_base", f"{lan_base} has no room for {2 * len(nats)} router LANs")

    servers = Servers(
        (a0, a1), sport, salt, engine, taddr, tport, tuple(transports), user, password, realm, saddr, sigport
    )
    return Topology(source, name, str(net), link, str(lan_net), servers, tuple(nats), deadline, parallel)


def load(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (the default one when ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_TOPOLOGY
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{p}: no such topology file; give a path such as {DEFAULT_TOPOLOGY}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: cannot read the topology file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{p}: invalid TOML: {exc}") from None
    return parse(data, str(p))
