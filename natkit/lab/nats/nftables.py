"""nftables recipes for lab routers, as sans-IO data: a model in, ``nft -f`` text out.

A NAT kind's recipe (:attr:`natkit.lab.nats.NatKind.recipe`) takes its
:class:`~natkit.lab.nats.model.NatBehaviour` and the router's :class:`RouterSide` (interface
names and addresses) and returns a :class:`RouterRecipe`: the sysctls and the ruleset an engine
applies (the netns engine with ``nft -f`` in the router's namespace, the Compose generator in the
router container's environment). Nothing here touches the system.

:func:`rfc4787_recipe` derives the rules from the model by composing the parts below; a kind whose
rules do not follow from mapping and filtering alone (a firewall policy, a second translation
stage) writes its own recipe from the same parts on a :class:`Ruleset`.

How the parts work:

* **Mapping.** Linux conntrack + ``masquerade`` keeps the inside source port when it is free, so
  every destination sees the same ``public ip:port`` (endpoint-independent). ``fully-random``
  draws a new random port for every new conntrack entry, i.e. per remote ``ip:port``
  (address-and-port-dependent). Address-dependent mapping uses ``snat`` to a port computed by
  ``jhash(inside ip . inside port . remote ip)``: the same remote IP always gets the same port,
  another remote IP (almost surely) another one.
* **Filtering is per mapping.** Conntrack alone is address-and-port-dependent filtering: only
  the remote ``ip:port`` a mapping sent to can answer. For endpoint-independent and
  address-dependent filtering a chain in postrouting, after SNAT, records every outbound UDP
  packet: ``@mappings`` maps the mapped port to the inside ``ip . port`` that owns it and
  ``@peers`` holds ``mapped port . remote ip``. A prerouting DNAT rule sends an unsolicited
  inbound packet for a mapped port to its owner, from anyone (EIF) or only from a remote IP in
  ``@peers`` for that port (ADF). Entries time out after ``udp_timeout`` seconds unless
  refreshed by outbound traffic.
* **Mapping lifetime.** A ``ct timeout`` object, attached in prerouting to every new UDP
  conntrack entry, gives it ``udp_timeout`` seconds (replied or not) after its last packet; the
  dynamic sets use the same timeout and are refreshed by outbound packets only.
* **Hairpinning.** A packet from inside to ``public ip:mapped port`` is DNAT'd to the mapping's
  owner (via ``@mappings``) and SNAT'd to the public address, so the owner sees it come from the
  public side and its reply returns through the router. Hairpinned traffic is not filtered.
  Without it, such packets are dropped by the router.
* Unsolicited inbound packets that match nothing are dropped (no ICMP), new connections from
  outside that were not DNAT'd never reach the inside network, and nothing is served by the
  router itself. TCP is mapped like UDP and filtered by conntrack (address-and-port-dependent);
  the EIF/ADF/hairpin machinery is for UDP.
* Limits: IPv4 only. Endpoint-independent mapping is masquerade's port preservation, so two
  inside hosts that use the *same* source port toward the same destination get different
  public ports (as on a real Linux router); give lab peers distinct ports to avoid it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from natkit.errors import ConfigError
from natkit.lab.nats.model import Filtering, Mapping, NatBehaviour, PortAllocation

__all__ = [
    "CHAIN_HOOKS",
    "Nat64Plan",
    "RouterRecipe",
    "RouterSide",
    "Ruleset",
    "add_forward_policy",
    "add_hairpin",
    "add_inbound_filtering",
    "add_lifetime",
    "add_mapping",
    "add_router_input",
    "add_tracking",
    "ipv6_ruleset",
    "rfc4787_recipe",
    "router_sysctls",
]

# The first port of a sequentially allocating NAT (a multiple of 256: see add_mapping).
SEQUENTIAL_BASE = 40960
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")

# Base chains a recipe may use, in the order they are written (the order matters only to a
# reader: nftables orders by hook and priority).
CHAIN_HOOKS: dict[str, str] = {
    "ct_timeout": "type filter hook prerouting priority mangle; policy accept;",
    "nat_pre": "type nat hook prerouting priority dstnat; policy accept;",
    "nat_post": "type nat hook postrouting priority srcnat; policy accept;",
    "track_post": "type filter hook postrouting priority srcnat + 10; policy accept;",
    "forward": "type filter hook forward priority filter; policy accept;",
    "input": "type filter hook input priority filter; policy accept;",
}


@dataclass(frozen=True)
class RouterSide:
    """The router a recipe is for: ``inside_if``/``outside_if`` (LAN and WAN interfaces), its
    ``public_ip`` on the outside and the ``inside_net`` prefix (CIDR)."""

    inside_if: str
    outside_if: str
    public_ip: str
    inside_net: str
    table: str = "natkit"
    # IPv6 (for a behaviour with ``ipv6``): the LAN's prefix and, for prefix translation, the
    # prefix it is translated to on the outside.
    inside_net6: str | None = None
    outside_net6: str | None = None

    def __post_init__(self) -> None:
        for what, name in (("inside interface", self.inside_if), ("outside interface", self.outside_if)):
            if not isinstance(name, str) or not _IFNAME.match(name):
                raise ConfigError(f"{what} {name!r} is not a valid interface name (1-15 of A-Za-z0-9_.-)")
        if self.inside_if == self.outside_if:
            raise ConfigError(f"inside and outside interface are both {self.inside_if!r}")
        if not isinstance(self.table, str) or not _TABLE.match(self.table):
            raise ConfigError(f"nftables table name {self.table!r} is invalid (letters, digits, _)")

    def addresses(self, nat: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Network]:
        try:
            return ipaddress.IPv4Address(self.public_ip), ipaddress.IPv4Network(self.inside_net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"NAT {nat!r}: {exc}; give IPv4 addresses") from None


@dataclass(frozen=True)
class RouterRecipe:
    """What an engine applies to a router: sysctls (keys as for ``sysctl -w``) and a ruleset
    for ``nft -f`` (it deletes an earlier table of the same name first, so applying it twice
    replaces the rules)."""

    sysctls: dict[str, str]
    nft: str
    # Stateful NAT64 (a behaviour with ``nat64``): tayga's configuration file and the routes
    # and addresses around its tun device, which the engine sets up before ``nft``.
    nat64: Nat64Plan | None = None


@dataclass(frozen=True)
class Nat64Plan:
    """How a router translates ``prefix`` to IPv4 (a network-specific /96 prefix, RFC 6052
    §2.2: tayga refuses the well-known 64:ff9b::/96 for the RFC 5737 documentation addresses the
    lab's internet uses, as RFC 6052 §3.1 asks of non-global addresses): tayga
    maps each IPv6 host to an address of ``pool`` on tun device ``tun``; the IPv4 ruleset then
    masquerades the pool behind the router's public address (the stateful part)."""

    prefix: str = "2001:db8:64::/96"
    pool: str = "192.168.255.0/24"
    tayga_ip: str = "192.168.255.1"
    tayga_ip6: str = "fd00:64:ff9b::1"  # tayga's own IPv6 address (its ICMPv6 errors come from it)
    tun: str = "nat64"

    def tayga_conf(self, data_dir: str) -> str:
        return "\n".join([
            f"tun-device {self.tun}", f"ipv4-addr {self.tayga_ip}", f"ipv6-addr {self.tayga_ip6}", f"prefix {self.prefix}",
            f"dynamic-pool {self.pool}", f"data-dir {data_dir}", "",
        ])

    def commands(self) -> list[list[str]]:
        """``ip`` commands (run in the router) that bring the tun device and its routes up."""
        return [
            ["ip", "link", "set", self.tun, "up"],
            ["ip", "route", "add", self.pool, "dev", self.tun],
            ["ip", "-6", "route", "add", self.prefix, "dev", self.tun],
        ]


@dataclass
class Ruleset:
    """One nftables table under construction: objects (timeouts, maps, sets) and base chains
    (:data:`CHAIN_HOOKS`); :meth:`text` writes it."""

    table: str
    objects: list[str] = field(default_factory=list)
    chains: dict[str, list[str]] = field(default_factory=dict)
    family: str = "ip"

    def chain(self, name: str) -> list[str]:
        """The rules of base chain ``name`` (created empty on first use)."""
        if name not in CHAIN_HOOKS:
            raise ValueError(f"unknown base chain {name!r}; add its hook to CHAIN_HOOKS")
        return self.chains.setdefault(name, [])

    def rule(self, chain: str, text: str) -> None:
        self.chain(chain).append(text)

    def text(self) -> str:
        t, fam = self.table, self.family
        lines = [f"add table {fam} {t}", f"delete table {fam} {t}", f"table {fam} {t} {{", *self.objects]
        for name in CHAIN_HOOKS:
            if name in self.chains:
                lines += [f"  chain {name} {{", f"    {CHAIN_HOOKS[name]}"]
                lines += [f"    {r}" for r in self.chains[name]]
                lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _q(ifname: str) -> str:
    return f'"{ifname}"'


def add_lifetime(rs: Ruleset, timeout_s: int) -> None:
    """Every new UDP conntrack entry lives ``timeout_s`` after its last packet. The policy is
    attached after conntrack made the entry (priority > -200) and before it is confirmed."""
    rs.objects += [
        "  ct timeout udp_mapping {",
        f"    protocol udp; l3proto {rs.family}",
        f"    policy = {{ unreplied: {timeout_s}, replied: {timeout_s} }}",
        "  }",
    ]
    rs.rule("ct_timeout", 'meta l4proto udp ct timeout set "udp_mapping"')


def add_tracking(rs: Ruleset, side: RouterSide, timeout_s: int, *, peers: bool) -> None:
    """Record, after SNAT, which inside endpoint owns each mapped port (``@mappings``) and, with
    ``peers``, which remote IPs each mapping sent to (``@peers``)."""
    t = timeout_s
    rs.objects += [
        "  map mappings {",
        "    type inet_service : ipv4_addr . inet_service",
        f"    flags dynamic, timeout; timeout {t}s",
        "  }",
    ]
    if peers:
        rs.objects += [
            "  set peers {",
            "    type inet_service . ipv4_addr",
            f"    flags dynamic, timeout; timeout {t}s",
            "  }",
        ]
    orig = "ct original ip saddr . ct original proto-src"
    reply = "ct reply ip saddr . ct reply proto-src"
    base = f"oifname {_q(side.outside_if)} meta l4proto udp"
    rs.rule("track_post", f"{base} ct direction original update @mappings {{ ct reply proto-dst timeout {t}s : {orig} }}")
    rs.rule("track_post", f"{base} ct direction reply update @mappings {{ ct original proto-dst timeout {t}s : {reply} }}")
    if peers:
        rs.rule("track_post", f"{base} ct direction original update @peers {{ ct reply proto-dst . ip daddr timeout {t}s }}")
        rs.rule("track_post", f"{base} ct direction reply update @peers {{ ct original proto-dst . ip daddr timeout {t}s }}")


def add_inbound_filtering(rs: Ruleset, side: RouterSide, pub: ipaddress.IPv4Address, filtering: Filtering) -> None:
    """Unsolicited inbound UDP to a mapped port reaches its owner: from anyone (EIF) or from a
    remote IP the mapping sent to (ADF). APDF needs no rule: conntrack is exactly that."""
    to_owner = "dnat ip to udp dport map @mappings"
    out = _q(side.outside_if)
    if filtering == Filtering.ENDPOINT_INDEPENDENT:
        rs.rule("nat_pre", f"iifname {out} ip daddr {pub} meta l4proto udp {to_owner}")
    elif filtering == Filtering.ADDRESS_DEPENDENT:
        rs.rule("nat_pre", f"iifname {out} ip daddr {pub} udp dport . ip saddr @peers {to_owner}")


def add_hairpin(rs: Ruleset, side: RouterSide, pub: ipaddress.IPv4Address, b: NatBehaviour) -> None:
    """Inside -> own public mapping is looped back to the owner, from the public address.
    Call before :func:`add_mapping` (the hairpin SNAT must come first in ``nat_post``)."""
    ins = _q(side.inside_if)
    rs.rule("nat_pre", f"iifname {ins} ip daddr {pub} meta l4proto udp dnat ip to udp dport map @mappings")
    snat = f"snat ip to {pub}"
    if b.mapping == Mapping.ADDRESS_AND_PORT_DEPENDENT and b.random_ports:
        snat += " fully-random"
    rs.rule("nat_post", f"iifname {ins} oifname {ins} ct status dnat {snat}")


def add_mapping(rs: Ruleset, side: RouterSide, pub: ipaddress.IPv4Address, b: NatBehaviour) -> None:
    """The outbound translation for ``b.mapping`` (see the module docstring)."""
    out = _q(side.outside_if)
    ports = b.ports
    if ports == PortAllocation.SEQUENTIAL:
        # A counter per new mapping. The port is read from the register's first two bytes
        # (network order), i.e. the counter's low byte is the port's high byte: shifting the
        # counter into the second byte and OR-ing the high byte in gives ports base..base+255.
        stmts = [f"meta l4proto {{ tcp, udp }} snat ip to {pub} : numgen inc mod 256 << 8 | {SEQUENTIAL_BASE >> 8}", "masquerade"]
    elif b.mapping == Mapping.ENDPOINT_INDEPENDENT and ports == PortAllocation.PRESERVE:
        stmts = ["masquerade"]
    elif b.mapping == Mapping.ENDPOINT_INDEPENDENT:
        # Endpoint-independent without port preservation: the port is a hash of the inside
        # endpoint only, so every destination sees the same (but another) port.
        stmts = [f"meta l4proto {{ tcp, udp }} snat ip to {pub} : jhash ip saddr . th sport mod 65536 | 4", "masquerade"]
    elif b.mapping == Mapping.ADDRESS_AND_PORT_DEPENDENT and b.random_ports:
        stmts = ["masquerade fully-random"]
    else:
        # Hash-derived ports: address-dependent hashes the remote IP only, APDM adds the port.
        key = "ip saddr . th sport . ip daddr"
        if b.mapping == Mapping.ADDRESS_AND_PORT_DEPENDENT:
            key += " . th dport"
        # The kernel reads the port from the hash's host-order register as big-endian, i.e.
        # byte-swapped; that is still one port per key. OR-ing 4 into the low (host-order) byte
        # sets a bit of the port's high byte, which keeps every port at 1024 or above.
        port = f"jhash {key} mod 65536 | 4"
        stmts = [f"meta l4proto {{ tcp, udp }} snat ip to {pub} : {port}", "masquerade"]
    for stmt in stmts:
        rs.rule("nat_post", f"oifname {out} {stmt}")


def add_forward_policy(
    rs: Ruleset, side: RouterSide, net: ipaddress.IPv4Network | ipaddress.IPv6Network, *, nat: bool, block_udp: bool,
    egress_tcp_ports: tuple[int, ...] | None = None,
) -> None:
    """What the router forwards: no UDP at all with ``block_udp``; with ``egress_tcp_ports``
    only new TCP connections from inside to those ports; behind a NAT, only replies, DNAT'd
    packets and traffic from inside."""
    rs.chain("forward")
    if block_udp:
        rs.rule("forward", "meta l4proto udp drop")
    if egress_tcp_ports is not None:
        ports = ", ".join(str(p) for p in egress_tcp_ports)
        rs.rule("forward", "ct state established,related accept")
        if ports:
            rs.rule("forward", f"iifname {_q(side.inside_if)} ct state new tcp dport {{ {ports} }} accept")
        rs.rule("forward", f"iifname {_q(side.inside_if)} drop")
    if nat:
        rs.rule("forward", "ct state established,related accept")
        rs.rule("forward", f"iifname {_q(side.outside_if)} ct status dnat accept")
        rs.rule("forward", f"iifname {_q(side.outside_if)} ip daddr {net} drop")


def add_router_input(rs: Ruleset) -> None:
    """The router serves nothing: unanswered packets to it vanish instead of drawing ICMP."""
    rs.rule("input", "ct state established,related accept")
    rs.rule("input", "meta l4proto { tcp, udp } drop")


def router_sysctls(behaviour: NatBehaviour) -> dict[str, str]:
    """Sysctls every lab router needs (keys as for ``sysctl -w``)."""
    out = {
        "net.ipv4.ip_forward": "1",
        # Hairpinned packets leave by the interface they came in on: no ICMP redirects.
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
    }
    if behaviour.ipv6 is not None:
        out["net.ipv6.conf.all.forwarding"] = "1"
    return out


def ipv6_ruleset(b6: NatBehaviour, side: RouterSide, timeout_s: int) -> str:
    """The IPv6 table of a router whose LAN has IPv6 (``b6`` = the behaviour's ``ipv6``): a
    stateful firewall that admits only replies and related ICMPv6 (RFC 6092 §3.2's default:
    address-and-port-dependent filtering; endpoint-independent when ``b6.filtering`` says so),
    and with an endpoint-independent ``b6.mapping`` the translation of the LAN prefix to
    ``side.outside_net6`` (NPTv6-style, ``snat ip6 prefix to``: the interface identifier and
    the ports stay, the prefix changes)."""
    if side.inside_net6 is None:
        raise ConfigError(f"NAT {b6.name!r}: IPv6 needs the LAN's IPv6 prefix")
    rs = Ruleset(f"{side.table}6", family="ip6")
    inside, outside = _q(side.inside_if), _q(side.outside_if)
    add_lifetime(rs, timeout_s)
    lan = side.inside_net6
    if b6.mapping is not None:
        if side.outside_net6 is None:
            raise ConfigError(f"NAT {b6.name!r}: prefix translation needs the outside IPv6 prefix")
        rs.rule("nat_post", f"oifname {outside} ip6 saddr {lan} snat ip6 prefix to {side.outside_net6}")
        rs.rule("nat_pre", f"iifname {outside} ip6 daddr {side.outside_net6} dnat ip6 prefix to {lan}")
    rs.rule("forward", "ct state established,related accept")
    rs.rule("forward", f"iifname {inside} accept")
    if b6.filtering == Filtering.ENDPOINT_INDEPENDENT:
        rs.rule("forward", f"iifname {outside} accept")
    rs.rule("forward", f"iifname {outside} icmpv6 type {{ echo-request }} accept")
    rs.rule("forward", f"iifname {outside} drop")
    return rs.text()


def rfc4787_recipe(b: NatBehaviour, side: RouterSide) -> RouterRecipe:
    """The recipe that makes a Linux router behave like model ``b``: mapping, filtering,
    hairpinning, mapping lifetime and the UDP block, each from its part above."""
    pub, net = side.addresses(b.name)
    rs = Ruleset(side.table)
    nat = b.nat
    eif = b.filtering == Filtering.ENDPOINT_INDEPENDENT
    adf = b.filtering == Filtering.ADDRESS_DEPENDENT
    hairpin = nat and b.hairpinning
    if nat:
        add_lifetime(rs, b.udp_timeout)
    if eif or adf or hairpin:  # the dynamic mapping table is needed
        add_tracking(rs, side, b.udp_timeout, peers=adf)
    if nat and b.filtering is not None:
        add_inbound_filtering(rs, side, pub, b.filtering)
    if hairpin:
        add_hairpin(rs, side, pub, b)
    if nat:
        add_mapping(rs, side, pub, b)
    add_forward_policy(rs, side, net, nat=nat, block_udp=b.block_udp, egress_tcp_ports=b.egress_tcp_ports)
    if nat:
        add_router_input(rs)
    text = rs.text()
    if b.ipv6 is not None:
        text += ipv6_ruleset(b.ipv6, side, b.udp_timeout)
    return RouterRecipe(router_sysctls(b), text, Nat64Plan() if b.nat64 else None)
