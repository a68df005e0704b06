"""NAT behaviours and the nftables ruleset that makes a Linux router behave like them (sans-IO).

Nothing here touches the system: :func:`nat_ruleset` turns a :class:`NatBehaviour` plus the
router's interface names and addresses into ``nft -f`` input, and :func:`router_sysctls` says
which sysctls the router needs. The netns engine (:mod:`natkit.lab.netns`) applies both inside a
namespace; a container generator can emit the very same text.

Presets (RFC 4787 terms; ``PRESETS[name]`` or ``NatBehaviour.preset(name, **overrides)``):

==================  =====================  ======================  ================================
name                mapping                filtering               how it is built
==================  =====================  ======================  ================================
open                none (routed)          none                    forwarding only, no NAT
full-cone           endpoint-independent   endpoint-independent    masquerade + DNAT from a dynamic
                                                                   map ``mapped port -> inside
                                                                   ip . port``
restricted-cone     endpoint-independent   address-dependent       same, DNAT only from remote IPs
                                                                   in the set ``mapped port .
                                                                   remote ip``
port-restricted     endpoint-independent   address-and-port-dep.   plain masquerade (conntrack)
symmetric           address-and-port-dep.  address-and-port-dep.   ``masquerade fully-random``
udp-blocked         endpoint-independent   address-and-port-dep.   masquerade, forwarded UDP dropped
==================  =====================  ======================  ================================

How each part works:

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
* **Hairpinning.** With ``hairpinning=True`` a packet from inside to ``public ip:mapped port``
  is DNAT'd to the mapping's owner (via ``@mappings``) and SNAT'd to the public address, so the
  owner sees it come from the public side and its reply returns through the router. Hairpinned
  traffic is not filtered. Without it, such packets are dropped by the router.
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
from dataclasses import dataclass, replace
from enum import StrEnum

from natkit.errors import UsageError

__all__ = [
    "PRESETS",
    "Filtering",
    "Mapping",
    "NatBehaviour",
    "nat_ruleset",
    "router_sysctls",
]


class Mapping(StrEnum):
    """How a NAT chooses the public ``ip:port`` for an inside ``ip:port`` (RFC 4787 §4.1)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(StrEnum):
    """Which inbound packets a NAT lets through to a mapping (RFC 4787 §5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True)
class NatBehaviour:
    """What a router does to traffic between its inside and outside networks.

    ``mapping``/``filtering`` are ``None`` for a router without NAT (``open``). ``block_udp``
    drops forwarded UDP both ways (a firewall that passes TCP only). ``random_ports`` only
    matters for address-and-port-dependent mapping: ``True`` draws each port at random
    (``fully-random``), ``False`` derives it from a hash of the 5-tuple (repeatable).
    """

    name: str = "custom"
    mapping: Mapping | None = Mapping.ENDPOINT_INDEPENDENT
    filtering: Filtering | None = Filtering.ADDRESS_AND_PORT_DEPENDENT
    hairpinning: bool = False
    udp_timeout: int = 30
    block_udp: bool = False
    random_ports: bool = True

    def __post_init__(self) -> None:
        if (self.mapping is None) != (self.filtering is None):
            raise UsageError(
                f"NAT {self.name!r}: mapping and filtering must both be set or both be none"
            )
        if not 1 <= self.udp_timeout <= 86400:
            raise UsageError(
                f"NAT {self.name!r}: udp_timeout {self.udp_timeout} s is out of range; "
                "give 1..86400 seconds"
            )

    @property
    def nat(self) -> bool:
        """Whether the router translates addresses at all."""
        return self.mapping is not None

    @classmethod
    def preset(cls, name: str, **overrides: object) -> NatBehaviour:
        """The named preset (see the module docstring), with fields replaced by ``overrides``."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise UsageError(
                f"unknown NAT type {name!r}; choose one of: {', '.join(PRESETS)}"
            ) from None
        bad = set(overrides) - set(cls.__dataclass_fields__)
        if bad:
            raise UsageError(f"NAT {name!r}: unknown setting(s) {', '.join(sorted(bad))}")
        return replace(base, **overrides)  # type: ignore[arg-type]


_EIM = Mapping.ENDPOINT_INDEPENDENT
_APDM = Mapping.ADDRESS_AND_PORT_DEPENDENT

PRESETS: dict[str, NatBehaviour] = {
    "open": NatBehaviour("open", None, None),
    "full-cone": NatBehaviour("full-cone", _EIM, Filtering.ENDPOINT_INDEPENDENT),
    "restricted-cone": NatBehaviour("restricted-cone", _EIM, Filtering.ADDRESS_DEPENDENT),
    "port-restricted": NatBehaviour("port-restricted", _EIM, Filtering.ADDRESS_AND_PORT_DEPENDENT),
    "symmetric": NatBehaviour("symmetric", _APDM, Filtering.ADDRESS_AND_PORT_DEPENDENT),
    "udp-blocked": NatBehaviour(
        "udp-blocked", _EIM, Filtering.ADDRESS_AND_PORT_DEPENDENT, block_udp=True
    ),
}

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


def _check_ifname(what: str, name: str) -> str:
    if not _IFNAME.match(name):
        raise UsageError(f"{what} {name!r} is not a valid interface name (1-15 of A-Za-z0-9_.-)")
    return name


def router_sysctls(behaviour: NatBehaviour) -> dict[str, str]:
    """Sysctls the router needs for ``behaviour`` (keys as for ``sysctl -w``)."""
    del behaviour  # every behaviour routes; kept as a parameter for future knobs
    return {
        "net.ipv4.ip_forward": "1",
        # Hairpinned packets leave by the interface they came in on: no ICMP redirects.
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
    }


def nat_ruleset(
    behaviour: NatBehaviour,
    *,
    inside_if: str,
    outside_if: str,
    public_ip: str,
    inside_net: str,
    table: str = "natkit",
) -> str:
    """The ``nft -f`` text that makes a router with these interfaces behave like ``behaviour``.

    ``public_ip`` is the router's address on ``outside_if``; ``inside_net`` the inside prefix
    (CIDR). The text first deletes any earlier table of the same name, so applying it twice
    replaces the rules. Pure: strings in, string out.
    """
    _check_ifname("inside interface", inside_if)
    _check_ifname("outside interface", outside_if)
    if inside_if == outside_if:
        raise UsageError(f"inside and outside interface are both {inside_if!r}")
    if not _TABLE.match(table):
        raise UsageError(f"nftables table name {table!r} is invalid (letters, digits, _)")
    try:
        pub = ipaddress.IPv4Address(public_ip)
        net = ipaddress.IPv4Network(inside_net, strict=False)
    except ValueError as exc:
        raise UsageError(f"NAT {behaviour.name!r}: {exc}; give IPv4 addresses") from None

    ins, out, t = f'"{inside_if}"', f'"{outside_if}"', behaviour.udp_timeout
    lines: list[str] = [
        f"add table ip {table}",
        f"delete table ip {table}",
        f"table ip {table} {{",
    ]
    add = lines.append

    nat = behaviour.nat
    eif = behaviour.filtering == Filtering.ENDPOINT_INDEPENDENT
    adf = behaviour.filtering == Filtering.ADDRESS_DEPENDENT
    hairpin = nat and behaviour.hairpinning
    track = eif or adf or hairpin  # the dynamic mapping table is needed

    if nat:
        add("  ct timeout udp_mapping {")
        add("    protocol udp; l3proto ip")
        add(f"    policy = {{ unreplied: {t}, replied: {t} }}")
        add("  }")
    if track:
        add("  map mappings {")
        add("    type inet_service : ipv4_addr . inet_service")
        add(f"    flags dynamic, timeout; timeout {t}s")
        add("  }")
    if adf:
        add("  set peers {")
        add("    type inet_service . ipv4_addr")
        add(f"    flags dynamic, timeout; timeout {t}s")
        add("  }")

    # Mapping lifetime: the timeout policy must be attached to a new conntrack entry after
    # conntrack made it (priority > -200) and before it is confirmed.
    if nat:
        add("  chain ct_timeout {")
        add("    type filter hook prerouting priority mangle; policy accept;")
        add('    meta l4proto udp ct timeout set "udp_mapping"')
        add("  }")

    # Inbound: unsolicited packets for a mapping, and hairpinned ones.
    if nat and (eif or adf or hairpin):
        add("  chain nat_pre {")
        add("    type nat hook prerouting priority dstnat; policy accept;")
        to_owner = "dnat ip to udp dport map @mappings"
        if eif:
            add(f"    iifname {out} ip daddr {pub} meta l4proto udp {to_owner}")
        elif adf:
            add(f"    iifname {out} ip daddr {pub} udp dport . ip saddr @peers {to_owner}")
        if hairpin:
            add(f"    iifname {ins} ip daddr {pub} meta l4proto udp {to_owner}")
        add("  }")

    # Outbound: the mapping itself.
    if nat:
        add("  chain nat_post {")
        add("    type nat hook postrouting priority srcnat; policy accept;")
        if hairpin:
            snat = f"snat ip to {pub}"
            if behaviour.mapping == _APDM and behaviour.random_ports:
                snat += " fully-random"
            add(f"    iifname {ins} oifname {ins} ct status dnat {snat}")
        for stmt in _mapping_stmts(behaviour, pub):
            add(f"    oifname {out} {stmt}")
        add("  }")

    # After SNAT: remember which inside endpoint owns each mapped port, and whom it sent to.
    if track:
        add("  chain track_post {")
        add("    type filter hook postrouting priority srcnat + 10; policy accept;")
        orig = "ct original ip saddr . ct original proto-src"
        reply = "ct reply ip saddr . ct reply proto-src"
        base = f"    oifname {out} meta l4proto udp"
        add(
            f"{base} ct direction original "
            f"update @mappings {{ ct reply proto-dst timeout {t}s : {orig} }}"
        )
        add(
            f"{base} ct direction reply "
            f"update @mappings {{ ct original proto-dst timeout {t}s : {reply} }}"
        )
        if adf:
            add(
                f"{base} ct direction original "
                f"update @peers {{ ct reply proto-dst . ip daddr timeout {t}s }}"
            )
            add(
                f"{base} ct direction reply "
                f"update @peers {{ ct original proto-dst . ip daddr timeout {t}s }}"
            )
        add("  }")

    # Forwarding policy.
    add("  chain forward {")
    add("    type filter hook forward priority filter; policy accept;")
    if behaviour.block_udp:
        add("    meta l4proto udp drop")
    if nat:
        add("    ct state established,related accept")
        add(f"    iifname {out} ct status dnat accept")
        add(f"    iifname {out} ip daddr {net} drop")
    add("  }")

    # The router serves nothing: unanswered packets to it vanish instead of drawing ICMP errors.
    if nat:
        add("  chain input {")
        add("    type filter hook input priority filter; policy accept;")
        add("    ct state established,related accept")
        add("    meta l4proto { tcp, udp } drop")
        add("  }")
    add("}")
    return "\n".join(lines) + "\n"


def _mapping_stmts(behaviour: NatBehaviour, pub: ipaddress.IPv4Address) -> list[str]:
    if behaviour.mapping == Mapping.ENDPOINT_INDEPENDENT:
        return ["masquerade"]
    if behaviour.mapping == _APDM and behaviour.random_ports:
        return ["masquerade fully-random"]
    # Hash-derived ports: address-dependent hashes the remote IP only, APDM adds the port.
    key = "ip saddr . th sport . ip daddr"
    if behaviour.mapping == _APDM:
        key += " . th dport"
    # The kernel reads the port from the hash's host-order register as big-endian, i.e. byte-
    # swapped; that is still one port per key. OR-ing 4 into the low (host-order) byte sets a
    # bit of the port's high byte, which keeps every port at 1024 or above.
    port = f"jhash {key} mod 65536 | 4"
    return [f"meta l4proto {{ tcp, udp }} snat ip to {pub} : {port}", "masquerade"]
