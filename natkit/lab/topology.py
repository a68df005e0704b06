"""The lab topology: a TOML file read into an engine-independent model, and its address plan.

A topology names what the lab holds, not how an engine builds it: the netns engine
(:mod:`natkit.lab.netns`) and a container generator read the same :class:`Topology` and the
same :class:`Plan` (which router and peer gets which address). See ``configs/lab/default.toml``
for the documented format. Every mistake in a file is a :class:`~natkit.errors.ConfigError` of
one line naming the file, the key and what to do, however hostile the file: :func:`load` reads
at most :data:`MAX_TOPOLOGY_BYTES` of a regular file, rejects binary data, numbers of more than
:data:`MAX_DIGITS` digits and nesting deeper than :data:`MAX_NESTING` before ``tomllib`` sees
the text (its parser recurses), and :func:`parse` checks the type of every value and rejects
unknown keys with their path.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from natkit.errors import ConfigError
from natkit.lab import nats
from natkit.lab.nats import GENERIC_KNOBS, NatBehaviour

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
    "loads",
    "parse",
]

# configs/lab/default.toml; the package carries it too (a link in a source tree, a copy in a wheel).
DEFAULT_TOPOLOGY = Path(__file__).with_name("default.toml").resolve()
PATHS = ("host", "srflx", "relay", "relay-tls", "longevity")
DEFAULT_PATHS = ("host", "srflx", "relay")
DEFAULT_STACKS = ("aiortc", "aiortc")
# The lab's DNS zone: IPv4-only names (A records) of the servers, which a NAT64 LAN's DNS64
# resolver turns into 64:ff9b::/96 addresses.
LAB_ZONE = "lab.natkit"
# IPv6 LAN prefixes: 2001:db8:1:K::/64 routed (K = the LAN's number); an NPTv6 LAN's inside
# prefix fd00:64:0:K::/64 is translated to 2001:db8:2:K::/64.
LAN6_ROUTED = "2001:db8:1:{k:x}::/64"
LAN6_ULA = "fd00:64:0:{k:x}::/64"
LAN6_TRANSLATED = "2001:db8:2:{k:x}::/64"
MAX_TOPOLOGY_BYTES = 1 << 20  # 1 MiB: the default topology is ~4 KiB
MAX_NESTING = 32  # arrays/inline tables inside each other; a topology needs 2
MAX_DIGITS = 64  # digits in one number; Python refuses int() of more than 4300
TURN_ENGINES = ("natkit", "coturn")
TURN_TRANSPORTS = ("udp", "tcp")
FAMILIES = ("ipv4", "ipv6", "nat64")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
# Mappings must outlive a case (gathering, checks, DTLS, echo) or the expectation model, which
# assumes live mappings, would be wrong for reasons that have nothing to do with NAT types.
MIN_UDP_TIMEOUT_S = 15
# The Compose engine's subnets: Docker puts its bridges on the host, so the netns defaults
# (203.0.113.0/24, 10.64.0.0/16: fine inside namespaces) could shadow a route of the host. These
# come from ranges hosts rarely use (RFC 2544's benchmarking block above 198.18.0.0/16, which
# some proxies take; an odd 10.x); `[compose]` moves them. The same host offsets are kept.
COMPOSE_INTERNET = "198.19.113.0/24"
COMPOSE_LAN_BASE = "10.213.0.0/16"


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
    longevity: bool = False

    @property
    def families(self) -> tuple[int, ...]:
        return self.behaviour.families


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
    # IPv6 addresses of the same servers on a dual-stack internet (None: IPv4 only).
    stun_addresses6: tuple[str, str] | None = None
    turn_address6: str | None = None
    signaling_address6: str | None = None
    turn_tls_port: int | None = None  # TURN over TLS (``turns:``, the relay-tls path)

    @property
    def transports(self) -> tuple[str, ...]:
        """What the TURN server offers: its UDP/TCP transports, and ``tls`` with a TLS port."""
        return (*self.turn_transports, *(("tls",) if self.turn_tls_port else ()))

    def names(self) -> dict[str, str]:
        """The lab zone's A records: name -> IPv4 address."""
        return {f"stun.{LAB_ZONE}": self.stun_addresses[0], f"turn.{LAB_ZONE}": self.turn_address,
                f"signaling.{LAB_ZONE}": self.signaling_address}

    def ice_servers(self, path: str, family: str = "ipv4", *, tls_name: bool = False) -> list[dict[str, Any]]:
        """The ``iceServers`` list (W3C shape) a peer gets for ``path`` over ``family``:
        IPv4 literals, IPv6 literals (``ipv6``), or the lab zone's names (``nat64``: an
        IPv6-only peer resolves them through its DNS64 resolver). ``tls_name``: the
        ``turns:`` URL of an IPv4 case names the TURN server (``turn.lab.natkit``, which its
        certificate carries) for a stack that drops IP literals there."""
        if path == "relay-tls" and tls_name and family == "ipv4" and self.turn_tls_port:
            cred = {"username": self.turn_username, "credential": self.turn_password}
            return [{"urls": [f"turns:turn.{LAB_ZONE}:{self.turn_tls_port}?transport=tcp"], **cred}]
        if family == "ipv6":
            assert self.stun_addresses6 is not None and self.turn_address6 is not None
            stun, turn = f"[{self.stun_addresses6[0]}]", f"[{self.turn_address6}]"
        elif family == "nat64":
            stun, turn = f"stun.{LAB_ZONE}", f"turn.{LAB_ZONE}"
        else:
            stun, turn = self.stun_addresses[0], self.turn_address
        cred = {"username": self.turn_username, "credential": self.turn_password}
        if path in ("srflx", "longevity"):
            return [{"urls": [f"stun:{stun}:{self.stun_port}"]}]
        if path == "relay":
            return [{"urls": [f"turn:{turn}:{self.turn_port}?transport={t}" for t in self.turn_transports], **cred}]
        if path == "relay-tls" and self.turn_tls_port:
            return [{"urls": [f"turns:{turn}:{self.turn_tls_port}?transport=tcp"], **cred}]
        return []


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: a caller behind ``nats[0]``, a callee behind ``nats[1]``, a path,
    and the ICE stacks of caller and callee (names of :mod:`natkit.lab.stacks`)."""

    nats: tuple[str, str]
    path: str
    same_lan: bool = False
    stacks: tuple[str, str] = DEFAULT_STACKS
    family: str = "ipv4"  # ipv4 | ipv6 | nat64 (an IPv6-only peer against an IPv4-only one)

    @property
    def id(self) -> str:
        """Unique per case (the signaling room's name)."""
        base = f"{self.nats[0]}~{self.nats[1]}/{self.path}"
        if self.family != "ipv4":
            base += f"@{self.family}"
        return base if self.stacks == DEFAULT_STACKS else f"{self.stacks[0]}-{self.stacks[1]}:{base}"


@dataclass(frozen=True)
class PeerPlan:
    id: str
    ip: str  # IPv4 address ("" on an IPv6-only LAN)
    ip6: str | None = None


@dataclass(frozen=True)
class InnerPlan:
    """A second NAT between the peers and their router (a subscriber's home NAT behind a carrier
    NAT): its WAN address on the router's inside network, its own LAN and peers."""

    id: str
    wan_ip: str
    lan_net: str
    lan_ip: str
    peers: tuple[PeerPlan, ...]


@dataclass(frozen=True)
class RouterPlan:
    """One router (a NAT instance) with its LAN and the peers on it.

    With an inner NAT (``inner``), ``lan_net``/``lan_ip`` are the network between the two
    stages and the peers sit on the inner routers' LANs. IPv6 (``public_ip6`` set): the router's
    address on the internet, its LAN prefix (``lan_net6``), its address there, and for prefix
    translation the outside prefix (``outside_net6``).
    """

    id: str
    nat: NatSpec
    public_ip: str
    lan_net: str
    lan_ip: str
    peers: tuple[PeerPlan, ...]
    inner: tuple[InnerPlan, ...] = ()
    public_ip6: str | None = None
    lan_net6: str | None = None
    lan_ip6: str | None = None
    outside_net6: str | None = None

    @property
    def peer_lan(self) -> str:
        """The IPv4 LAN of the first peer (an inner NAT's LAN when there is one)."""
        return self.inner[0].lan_net if self.inner else self.lan_net


@dataclass(frozen=True)
class Plan:
    """Who gets which address. Deterministic: the same topology always gives the same plan."""

    internet_net: str
    routers: tuple[RouterPlan, ...]
    internet_net6: str | None = None

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
    internet_net6: str | None = None
    paths: tuple[str, ...] = DEFAULT_PATHS
    # The subnets the Compose engine uses instead of ``internet_net`` and ``lan_base``
    # (``[compose]`` keys); see :meth:`for_compose`.
    compose_internet: str = COMPOSE_INTERNET
    compose_lan_base: str = COMPOSE_LAN_BASE

    def for_compose(self) -> Topology:
        """This topology on the Compose engine's subnets: every internet address keeps its offset
        in the subnet (``.2`` stays ``.2``), routers and LANs follow from the plan. Idempotent."""
        old = ipaddress.IPv4Network(self.internet_net)
        new = ipaddress.IPv4Network(self.compose_internet)

        def move(ip: str) -> str:
            return str(new.network_address + (int(ipaddress.IPv4Address(ip)) - int(old.network_address)))

        s = self.servers
        servers = replace(
            s, stun_addresses=(move(s.stun_addresses[0]), move(s.stun_addresses[1])),
            turn_address=move(s.turn_address), signaling_address=move(s.signaling_address),
        )
        return replace(self, internet_net=str(new), lan_base=self.compose_lan_base, servers=servers)

    def nat(self, name: str) -> NatSpec:
        for n in self.nats:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def matrix_nats(self) -> tuple[NatSpec, ...]:
        """The NATs that form the rows/columns of the matrix (same-LAN NATs are extra rows)."""
        return tuple(n for n in self.nats if not n.same_lan)

    def pair_families(self, a: NatSpec, b: NatSpec) -> tuple[str, ...]:
        """The address families a case between NATs ``a`` and ``b`` runs over: IPv4 when both
        LANs have it, IPv6 when both have it (and the internet is dual-stack), ``nat64`` when
        one is IPv6-only behind NAT64 and the other has no IPv6."""
        fa, fb = a.families, b.families
        out = [f"ipv{f}" for f in (4, 6) if f in fa and f in fb and (f == 4 or self.internet_net6)]
        if not out and (a.behaviour.nat64 or b.behaviour.nat64) and (4 in fa or 4 in fb):
            out.append("nat64")
        return tuple(out)

    def cases(self, paths: tuple[str, ...] | None = None) -> list[Case]:
        """Every unordered pair of matrix NATs (a NAT with itself = two NATs of that kind), plus
        each same-LAN NAT, times every path (the topology's ``lab.paths`` by default), over
        every family the pair shares; plus a ``longevity`` case per NAT that asks for it."""
        rows = self.matrix_nats
        out: list[Case] = []
        for path in self.paths if paths is None else paths:
            if path == "longevity":
                continue
            for i, a in enumerate(rows):
                for b in rows[i:]:
                    out += [Case((a.name, b.name), path, family=f) for f in self.pair_families(a, b)]
            for n in self.nats:
                if n.same_lan:
                    out += [Case((n.name, n.name), path, same_lan=True, family=f) for f in self.pair_families(n, n)]
        if paths is None or "longevity" in paths:
            out += [Case((n.name, n.name), "longevity", same_lan=n.same_lan) for n in self.nats if n.longevity]
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
        for n_index, nat in enumerate(self.nats):
            slots = [next(lans), next(lans)]
            pubs = [next(public), next(public)]
            for k in (1, 2):
                lan, pub = slots[k - 1], pubs[k - 1]
                rid = f"{nat.name}-{k}"
                if rid not in needed:
                    continue
                slot = 2 * n_index + k  # a number per router, for its IPv6 and inner prefixes
                routers.append(self._router(rid, nat, pub, lan, slots[1] if nat.same_lan else None, slot))
        return Plan(self.internet_net, tuple(routers), self.internet_net6)

    def _v6(self, ip4: str) -> str | None:
        """The IPv6 address of an internet host: the IPv4 address's host number in the
        internet's IPv6 prefix (203.0.113.12 -> 2001:db8::c)."""
        return _V6(self.internet_net, self.internet_net6).of(ip4) if self.internet_net6 else None

    def _router(self, rid: str, nat: NatSpec, pub: str, lan: ipaddress.IPv4Network,
                spare: ipaddress.IPv4Network | None, slot: int) -> RouterPlan:
        b = nat.behaviour
        v6 = self._v6(pub) if b.ipv6 is not None else None
        lan6 = out6 = None
        if v6 is not None:
            lan6 = LAN6_ULA.format(k=slot) if b.ipv6 is not None and b.ipv6.mapping is not None else LAN6_ROUTED.format(k=slot)
            out6 = LAN6_TRANSLATED.format(k=slot) if b.ipv6 is not None and b.ipv6.mapping is not None else None

        def peers_on(net: ipaddress.IPv4Network, first: int, count: int, pid: str) -> tuple[PeerPlan, ...]:
            hosts = list(net.hosts())
            base6 = ipaddress.IPv6Network(lan6).network_address if lan6 else None
            return tuple(
                PeerPlan(f"{pid}-p{first + i}", str(hosts[8 + first + i]) if b.ipv4 else "",
                         str(base6 + 9 + first + i) if base6 is not None else None)
                for i in range(count)
            )

        lan_ip6 = str(ipaddress.IPv6Network(lan6).network_address + 1) if lan6 else None
        if b.inner is None:
            hosts = list(lan.hosts())
            return RouterPlan(rid, nat, pub, str(lan), str(hosts[0]), peers_on(lan, 1, nat.peers, rid),
                              (), v6, lan6, lan_ip6, out6)
        # Two stages: the router's inside is a /24 of inner_net; each inner router gets its own
        # LAN (the second one, for two subscribers, is the slot a second router would have).
        middle = list(ipaddress.IPv4Network(b.inner_net).subnets(new_prefix=24))[slot % 256]
        mhosts = list(middle.hosts())
        inner_lans = [lan] + ([spare] if nat.peers > 1 and spare is not None else [])
        inner = []
        for i, ilan in enumerate(inner_lans):
            count = 1 if len(inner_lans) > 1 else nat.peers
            ihosts = list(ilan.hosts())
            inner.append(InnerPlan(f"{rid}h{i + 1}", str(mhosts[1 + i]), str(ilan), str(ihosts[0]),
                                   peers_on(ilan, 1 + i, count, rid)))
        peers = tuple(p for ip in inner for p in ip.peers)
        return RouterPlan(rid, nat, pub, str(middle), str(mhosts[0]), peers, tuple(inner), v6, lan6, lan_ip6, out6)


# -- reading ------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value for an error message: short, whatever it is (a 5,000-digit integer, a huge list)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of about {len(str(abs(value) // 10**18)) + 18} digits"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"the string {text}" if isinstance(value, str) else text


def _short(text: str) -> str:
    quoted = repr(text)
    return quoted if len(quoted) <= 60 else quoted[:57] + "..."


class _Reader:
    """Walks the parsed TOML, naming ``file: key`` in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"key '{key}': {what}", param=key, where=self.source)

    def table(self, data: Mapping[str, Any], key: str, name: str, required: bool = False) -> dict[str, Any]:
        full = f"{key}.{name}" if key else name
        if name not in data:
            if required:
                raise self.fail(full, "missing table; add it (see configs/lab/default.toml)")
            return {}
        value = data[name]
        if not isinstance(value, dict):
            raise self.fail(full, f"expected a table, got {_show(value)}")
        return value

    def tables(self, data: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
        value = data.get(name, [])
        if not isinstance(value, list):
            raise self.fail(name, f"expected [[{name}]] tables, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{name}[{i}]", f"expected a table, got {_show(item)}")
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
            if abs(value) > 2**53:  # float() of a huge integer overflows
                raise self.fail(full, f"{_show(value)} is out of range")
            value = float(value)
        if not isinstance(value, kinds):
            raise self.fail(full, f"expected {_kind_name(kinds)}, got {_show(value)}")
        return value

    def number(self, data: Mapping[str, Any], key: str, name: str, default: float, lo: float, hi: float) -> float:
        value = float(self.get(data, key, name, float, default))
        if not lo <= value <= hi:  # NaN fails too
            raise self.fail(f"{key}.{name}", f"{value:g} is out of range; give {lo:g}..{hi:g}")
        return value

    def ip(self, data: Mapping[str, Any], key: str, name: str, net: ipaddress.IPv4Network | None) -> str:
        text = self.get(data, key, name, str)
        return self.check_ip(f"{key}.{name}", text, net)

    def check_ip(self, full: str, text: str, net: ipaddress.IPv4Network | None) -> str:
        try:
            addr = ipaddress.IPv4Address(text)
        except ValueError:
            raise self.fail(full, f"{_short(text)} is not an IPv4 address") from None
        if net is not None and (addr not in net or addr in (net.network_address, net.broadcast_address)):
            raise self.fail(full, f"{text} is not a host address of the internet subnet {net}")
        return text

    def network(self, full: str, text: str, example: str) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.IPv4Network(text)
        except ValueError as exc:
            why = str(exc) if len(str(exc)) <= 100 else "not an IPv4 network"
            raise self.fail(full, f"{_short(text)}: {why}; give a CIDR such as {example}") from None
        # The kernel will not route these between namespaces (or should not be shadowed).
        for what, flag in (("loopback", net.is_loopback), ("multicast", net.is_multicast),
                           ("link-local", net.is_link_local), ("reserved", net.is_reserved),
                           ("unspecified", net.network_address.is_unspecified)):
            if flag:
                raise self.fail(full, f"{text} is a {what} range; give a unicast range such as {example}")
        return net

    def port(self, data: Mapping[str, Any], key: str, name: str, default: int) -> int:
        value = self.get(data, key, name, int, default)
        if not 1 <= value <= 65535:
            raise self.fail(f"{key}.{name}", f"{_show(value)} is not a port; give 1..65535")
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


_NAT_KEYS = {"name", "type", "wan", "lan", "longevity", *GENERIC_KNOBS}


def _nat(r: _Reader, data: dict[str, Any], key: str, same_lan: bool) -> NatSpec:
    r.check_keys(data, key, _NAT_KEYS)
    name = r.get(data, key, "name", str)
    if not _NAME.match(name):
        raise r.fail(f"{key}.name", f"{_short(name)} is not a valid name; use 1-20 of a-z, 0-9, '-', starting with a letter")
    type_name = r.get(data, key, "type", str)
    if type_name not in nats.names():
        raise r.fail(f"{key}.type", f"unknown NAT type {_short(type_name)}; expected one of: {', '.join(nats.names())}")
    kind = nats.get(type_name)
    knobs: dict[str, object] = {}
    if "hairpin" in data:
        knobs["hairpin"] = r.get(data, key, "hairpin", bool)
    if "udp_timeout_s" in data:
        timeout = r.number(data, key, "udp_timeout_s", 60, MIN_UDP_TIMEOUT_S, 86400)
        if timeout != int(timeout):
            raise r.fail(f"{key}.udp_timeout_s", f"{timeout:g} is not a whole number of seconds")
        knobs["udp_timeout_s"] = int(timeout)
    knobs.setdefault("udp_timeout_s", 60)
    for knob in knobs:
        if knob not in kind.knobs and knob in data:
            raise r.fail(f"{key}.{knob}", f"NAT type {type_name!r} takes no {knob}; remove it")
    behaviour = kind.from_knobs({k: v for k, v in knobs.items() if k in kind.knobs})
    wan = r.link(r.table(data, key, "wan"), f"{key}.wan")
    lan = r.link(r.table(data, key, "lan"), f"{key}.lan")
    longevity = bool(r.get(data, key, "longevity", bool, False)) if "longevity" in data else False
    return NatSpec(name, type_name, behaviour, wan, lan, peers=2 if same_lan else 1, same_lan=same_lan,
                   longevity=longevity)


def parse(data: Mapping[str, Any], source: str = "<topology>") -> Topology:
    """Validate parsed TOML ``data`` and build the :class:`Topology` (``source`` names the file)."""
    r = _Reader(source)
    r.check_keys(data, "", {"lab", "internet", "stun", "turn", "signaling", "nat", "same_lan", "compose"})
    lab = r.table(data, "", "lab")
    r.check_keys(lab, "lab", {"name", "case_deadline_s", "parallel", "lan_base", "paths"})
    name = r.get(lab, "lab", "name", str, "lab")
    if not 0 < len(name) <= 64 or any(ord(c) < 0x20 for c in name):
        raise r.fail("lab.name", "give 1-64 printable characters")
    deadline = r.number(lab, "lab", "case_deadline_s", 10.0, 2.0, 120.0)
    parallel = int(r.number(lab, "lab", "parallel", 0, 0, 256))
    lan_base = r.get(lab, "lab", "lan_base", str, "10.64.0.0/16")
    lan_net = r.network("lab.lan_base", lan_base, "10.64.0.0/16")
    if lan_net.prefixlen > 18:
        raise r.fail("lab.lan_base", f"{lan_base} is too small; give a /18 or larger (one /24 per router)")

    paths = r.get(lab, "lab", "paths", list, None) if "paths" in lab else None
    if paths is not None and (
        not paths or not all(isinstance(p, str) and p in PATHS and p != "longevity" for p in paths)
        or len(set(paths)) != len(paths)
    ):
        raise r.fail("lab.paths", f"{_show(paths)}: give distinct paths out of {', '.join(p for p in PATHS if p != 'longevity')} "
                                  "(longevity cases come from a NAT's longevity = true)")

    inet = r.table(data, "", "internet", required=True)
    r.check_keys(inet, "internet", {"subnet", "subnet6", "delay_ms", "jitter_ms", "loss_pct"})
    subnet = r.get(inet, "internet", "subnet", str)
    net = r.network("internet.subnet", subnet, "203.0.113.0/24")
    if net.prefixlen > 26:
        raise r.fail("internet.subnet", f"{subnet} is too small; give a /26 or larger")
    if net.overlaps(lan_net):
        raise r.fail("internet.subnet", f"{subnet} overlaps lab.lan_base {lan_base}")
    link = r.link({k: v for k, v in inet.items() if k not in ("subnet", "subnet6")}, "internet")
    net6: str | None = None
    if "subnet6" in inet:
        text6 = r.get(inet, "internet", "subnet6", str)
        try:
            n6 = ipaddress.IPv6Network(text6)
        except ValueError:
            raise r.fail("internet.subnet6", f"{_short(text6)} is not an IPv6 network; give a /64 of 2001:db8::/32 "
                                             "such as 2001:db8::/64") from None
        if n6.prefixlen != 64 or any(n6.subnet_of(ipaddress.IPv6Network(f"2001:db8:{k}::/48")) for k in (1, 2)) or not n6.subnet_of(ipaddress.IPv6Network("2001:db8::/32")):
            raise r.fail("internet.subnet6", f"{text6}: give a /64 of the documentation prefix 2001:db8::/32 outside "
                                             "2001:db8:1::/48 and 2001:db8:2::/48 (the LANs' prefixes), such as 2001:db8::/64")
        net6 = str(n6)

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
    r.check_keys(turn, "turn", {"engine", "address", "port", "transports", "username", "password", "realm", "tls_port"})
    engine = r.get(turn, "turn", "engine", str, "natkit")
    if engine not in TURN_ENGINES:
        raise r.fail("turn.engine", f"unknown engine {_short(engine)}; expected one of: {', '.join(TURN_ENGINES)}")
    taddr = r.ip(turn, "turn", "address", net)
    tport = r.port(turn, "turn", "port", 3478)
    transports = r.get(turn, "turn", "transports", list, ["udp", "tcp"])
    if (
        not transports
        or not all(isinstance(t, str) and t in TURN_TRANSPORTS for t in transports)
        or len(set(transports)) != len(transports)
    ):
        raise r.fail("turn.transports", f"{_show(transports)}: give a list of distinct transports out of udp, tcp")
    tls_port = r.port(turn, "turn", "tls_port", 443) if "tls_port" in turn else None
    if tls_port is not None and tls_port == tport:
        raise r.fail("turn.tls_port", "must differ from turn.port")
    user = r.get(turn, "turn", "username", str, "natkit")
    password = r.get(turn, "turn", "password", str, "natkit-lab")
    realm = r.get(turn, "turn", "realm", str, "lab.natkit")
    for k, v in (("username", user), ("password", password), ("realm", realm)):
        if not 0 < len(v) <= 256 or any(ord(c) < 0x20 for c in v):
            raise r.fail(f"turn.{k}", "must be a string of 1-256 characters without control characters")

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

    nats_data = r.tables(data, "nat")
    if not nats_data:
        raise r.fail("nat", "give at least one [[nat]] table")
    lans_data = r.tables(data, "same_lan")
    if len(nats_data) + len(lans_data) > 100:
        raise r.fail("nat", f"{len(nats_data) + len(lans_data)} NATs; give at most 100")
    found = [_nat(r, d, f"nat[{i}]", False) for i, d in enumerate(nats_data)]
    found += [_nat(r, d, f"same_lan[{i}]", True) for i, d in enumerate(lans_data)]
    seen: set[str] = set()
    for i, n in enumerate(found):
        if n.name in seen:
            where = f"nat[{i}]" if not n.same_lan else f"same_lan[{i - len(nats_data)}]"
            raise r.fail(f"{where}.name", f"duplicate name {n.name!r}")
        seen.add(n.name)
    hosts = net.num_addresses - 2 - 9 - len(used)
    if 2 * len(found) > hosts:
        raise r.fail("internet.subnet", f"{subnet} has no room for {2 * len(found)} router addresses")
    if 2 * len(found) > 2 ** (24 - lan_net.prefixlen):
        raise r.fail("lab.lan_base", f"{lan_base} has no room for {2 * len(found)} router LANs")

    for i, n in enumerate(found):
        if n.longevity and n.behaviour.udp_timeout + 10 > 120:
            where = f"nat[{i}]" if not n.same_lan else f"same_lan[{i - len(nats_data)}]"
            raise r.fail(f"{where}.longevity", f"idling past a {n.behaviour.udp_timeout} s mapping lifetime takes too "
                                               "long; give udp_timeout_s <= 110 with longevity")
        if n.behaviour.ipv6 is not None and net6 is None:
            where = f"nat[{i}]" if not n.same_lan else f"same_lan[{i - len(nats_data)}]"
            raise r.fail(f"{where}.type", f"NAT type {n.type!r} needs IPv6 on the internet: add internet.subnet6 "
                                          "(e.g. \"2001:db8::/64\")")
    v6 = _V6(str(net), net6)
    servers = Servers(
        (a0, a1), sport, salt, engine, taddr, tport, tuple(transports), user, password, realm, saddr, sigport,
        (v6.of(a0), v6.of(a1)) if net6 else None, v6.of(taddr) if net6 else None, v6.of(saddr) if net6 else None,
        tls_port,
    )
    default_paths = (*DEFAULT_PATHS, *(("relay-tls",) if tls_port else ()))
    if paths is not None and "relay-tls" in paths and not tls_port:
        raise r.fail("lab.paths", "relay-tls needs TURN over TLS: set turn.tls_port (e.g. 443)")
    c_inet, c_lans = _compose_subnets(r, data, net, lan_net)
    return Topology(source, name, str(net), link, str(lan_net), servers, tuple(found), deadline, parallel,
                    internet_net6=net6, paths=tuple(paths) if paths is not None else default_paths,
                    compose_internet=str(c_inet), compose_lan_base=str(c_lans))


class _V6:
    """IPv4 internet host -> its IPv6 address (the same host number in the IPv6 prefix)."""

    def __init__(self, net4: str, net6: str | None) -> None:
        self.n4 = ipaddress.IPv4Network(net4)
        self.n6 = ipaddress.IPv6Network(net6) if net6 else None

    def of(self, ip4: str) -> str:
        assert self.n6 is not None
        return str(self.n6.network_address + (int(ipaddress.IPv4Address(ip4)) - int(self.n4.network_address)))


def _compose_subnets(
    r: _Reader, data: Mapping[str, Any], net: ipaddress.IPv4Network, lan_net: ipaddress.IPv4Network
) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    """``[compose]``: the subnets the Compose engine uses, each at least as large as the netns
    one it replaces (addresses keep their offsets); defaults of the same size in
    :data:`COMPOSE_INTERNET` and :data:`COMPOSE_LAN_BASE`."""
    table = r.table(data, "", "compose")
    r.check_keys(table, "compose", {"internet_subnet", "lan_base"})
    found = []
    for key, default, ref, ref_key in (("internet_subnet", COMPOSE_INTERNET, net, "internet.subnet"),
                                       ("lan_base", COMPOSE_LAN_BASE, lan_net, "lab.lan_base")):
        if key in table:
            text = r.get(table, "compose", key, str)
            got = r.network(f"compose.{key}", text, default)
            if got.prefixlen > ref.prefixlen:
                raise r.fail(f"compose.{key}", f"{text} is smaller than {ref_key} {ref}; give a /{ref.prefixlen} or larger")
        else:
            got = ipaddress.IPv4Network(f"{default.split('/')[0]}/{ref.prefixlen}", strict=False)
        found.append(got)
    c_inet, c_lans = found
    if c_inet.overlaps(c_lans):
        raise r.fail("compose.internet_subnet", f"{c_inet} overlaps compose.lan_base {c_lans}")
    return c_inet, c_lans


# What the pre-scan looks at: strings and comments (skipped), brackets, long digit runs, lines.
_TOKENS = re.compile(
    r'"""(?:\\.|[^\\])*?"""|\'\'\'.*?\'\'\'|"(?:\\.|[^"\\\n])*"|\'[^\'\n]*\'|#[^\n]*'
    rf"|[\[\]{{}}]|\d[\d_]{{{MAX_DIGITS},}}|\n",
    re.DOTALL,
)


def _prescan(text: str, where: str) -> None:
    """Refuse what would make ``tomllib`` recurse too deep or convert a huge number."""
    depth, line = 0, 1
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok == "\n":
            line += 1
        elif tok in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(
                    f"line {line}: arrays or tables nested more than {MAX_NESTING} deep; a topology "
                    "needs two levels (see configs/lab/default.toml)", where=where,
                )
        elif tok in "]}":
            depth = max(0, depth - 1)
        elif tok[0].isdigit():
            raise ConfigError(
                f"line {line}: a number of more than {MAX_DIGITS} digits; numbers in a topology are small",
                where=where,
            )
        else:
            line += tok.count("\n")


def loads(text: str, source: str = "<topology>") -> Topology:
    """Parse and validate topology TOML ``text`` (``source`` names it in errors)."""
    if len(text) > MAX_TOPOLOGY_BYTES:
        raise ConfigError(f"{len(text)} characters; a topology is at most 1 MiB", where=source)
    if "\x00" in text:
        raise ConfigError("contains NUL bytes: not a TOML text file; give a topology file", where=source)
    _prescan(text, source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}; fix the file (see configs/lab/default.toml)", where=source) from None
    except (RecursionError, ValueError) as exc:  # the pre-scan should have caught these
        raise ConfigError(f"cannot parse the TOML ({type(exc).__name__}); check the file's syntax", where=source) from None
    return parse(data, source)


def load(path: str | os.PathLike[str] | None = None) -> Topology:
    """Read and validate a topology file (the default one when ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_TOPOLOGY
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("not a regular file (a directory, device or FIFO); give a TOML topology file", where=str(p))
        if st.st_size > MAX_TOPOLOGY_BYTES:
            raise ConfigError(
                f"{st.st_size} bytes; a topology file is at most 1 MiB (the default one is ~4 KiB)", where=str(p)
            )
        with p.open("rb") as fh:
            raw = fh.read(MAX_TOPOLOGY_BYTES + 1)  # the size may change between stat and read
    except FileNotFoundError:
        raise ConfigError(f"no such topology file; give a path such as {DEFAULT_TOPOLOGY}", where=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the topology file: {exc.strerror or exc}", where=str(p)) from None
    if len(raw) > MAX_TOPOLOGY_BYTES:
        raise ConfigError("larger than 1 MiB; a topology file is a few KiB", where=str(p))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte {exc.start}): a binary file? give a TOML topology file", where=str(p)
        ) from None
    return loads(text, str(p))
