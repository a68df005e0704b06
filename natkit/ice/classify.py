"""Classify candidate addresses (scope) and decode ICE priorities (RFC 8445 §5.1.2)."""

from __future__ import annotations

from dataclasses import dataclass

import netaddr  # type: ignore[import-untyped]

# Ranges netaddr has no single predicate for; checked before the generic predicates.
_CGNAT = netaddr.IPNetwork("100.64.0.0/10")  # RFC 6598 shared address space
_DOCUMENTATION = netaddr.IPSet(
    ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20"]
)
_UNSPECIFIED = netaddr.IPSet(["0.0.0.0/32", "::/128"])
_PRIVATE_V4 = netaddr.IPSet(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])

SCOPES = (
    "public",
    "private",
    "cgnat",
    "loopback",
    "link-local",
    "ula",
    "multicast",
    "documentation",
    "unspecified",
    "ipv4-mapped",
    "reserved",
    "mdns",
    "hostname",
)

# Scopes a peer on another network can never reach (documentation ranges are left out: they
# stand for public addresses in examples).
NON_ROUTABLE = frozenset(
    {"private", "cgnat", "loopback", "link-local", "ula", "unspecified", "reserved"}
)


def ip_version(address: str) -> int | None:
    """4 or 6 for an IP literal, None for a hostname (mDNS or FQDN)."""
    try:
        return int(netaddr.IPAddress(address.strip("[]")).version)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None


def address_scope(address: str) -> str:
    """The scope of an address: one of :data:`SCOPES`."""
    text = address.strip("[]")
    try:
        ip = netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return "mdns" if text.lower().rstrip(".").endswith(".local") else "hostname"
    if ip in _UNSPECIFIED:
        return "unspecified"
    if ip.version == 6 and ip.is_ipv4_mapped():
        return "ipv4-mapped"
    if ip.is_loopback():
        return "loopback"
    if ip.is_link_local():
        return "link-local"
    if ip.is_multicast():
        return "multicast"
    if ip in _DOCUMENTATION:
        return "documentation"
    if ip.version == 4 and ip in _CGNAT:
        return "cgnat"
    if ip.version == 4 and ip in _PRIVATE_V4:
        return "private"
    if ip.version == 6 and ip.is_ipv6_unique_local():
        return "ula"
    if ip.is_global():
        return "public"
    return "reserved"


@dataclass(frozen=True)
class Priority:
    """A candidate priority split into its parts: (2^24)*type + (2^8)*local + (256 - component)."""

    type_preference: int
    local_preference: int
    component: int

    def as_dict(self) -> dict[str, int]:
        return {
            "type_preference": self.type_preference,
            "local_preference": self.local_preference,
            "component": self.component,
        }


def decode_priority(priority: int) -> Priority:
    return Priority(
        type_preference=(priority >> 24) & 0xFF,
        local_preference=(priority >> 8) & 0xFFFF,
        component=256 - (priority & 0xFF),
    )


def encode_priority(type_preference: int, local_preference: int, component: int) -> int:
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


# RFC 8445 §5.1.2.2 recommended type preferences.
TYPE_PREFERENCE = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}


def relay_protocol_from_priority(priority: int) -> str | None:
    """libwebrtc encodes the client-to-TURN transport in a relay candidate's type preference
    (2 = UDP, 1 = TCP, 0 = TLS); other stacks don't, so this is a best guess."""
    return {2: "udp", 1: "tcp", 0: "tls"}.get((priority >> 24) & 0xFF)
