"""Which peers a relay may talk to: canonicalise the address, then apply the policy.

A TURN relay that forwards to any address is a proxy into the server's own network (SSRF
through TURN: cloud metadata at 169.254.169.254, admin ports on loopback, the private LAN).
So peers are denied by default when netaddr's IANA special-purpose registries say the address
is not globally reachable, or is multicast or reserved, and in the ranges those registries do
not carry (:data:`EXTRA_SPECIAL`: RFC 9637's documentation prefix 3fff::/20 and the deprecated
site-local fec0::/10, still routed inside some networks). Addresses that embed an IPv4 address
(IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64 64:ff9b::/96, 6to4) are judged by the
IPv4 address inside them, so ``::ffff:127.0.0.1`` is loopback.

Order of the checks: an explicit deny wins, then an explicit allow, then the built-in
special-purpose rule.

The engine asks a :class:`PeerPolicy` (pion/turn's ``PermissionHandler``) before it installs a
permission or a channel; :class:`DefaultPeerPolicy` is the rule above, and any object with a
``refuse`` method can take its place.

Before any policy, whatever it is, the engine refuses the relay's own addresses
(:class:`OwnAddresses`): what it listens on, relays from and advertises, on any port, so a
client cannot make the relay talk to itself (nested allocations, relay loops, services on the
relay host). Explicitly allowed ranges (``reopened``) may reopen an own IP for peers that
really live on the relay host, but never its listener ports, its relay port range or the
transport addresses of its live relays.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol, runtime_checkable

from netaddr import AddrFormatError, IPAddress, IPNetwork, IPSet  # type: ignore[import-untyped]

from natkit.errors import ConfigError

Address = tuple[str, int]

_NAT64 = IPNetwork("64:ff9b::/96")
_SIX_TO_FOUR = IPNetwork("2002::/16")
_IPV4_TRANSLATED = IPNetwork("::ffff:0:0:0/96")


class PeerAddressError(ValueError):
    """A peer address that is not an IP address at all."""


def canonical_peer(address: str) -> IPAddress:
    """The address a datagram to ``address`` really reaches, for policy purposes."""
    try:
        ip = IPAddress(address.split("%", 1)[0])
    except (AddrFormatError, ValueError, TypeError):
        raise PeerAddressError(f"not an IP address: {address!r}") from None
    # Bounded: each step strips one layer of embedding and yields an IPv4 address.
    if ip.version == 6:
        value = int(ip)
        if ip.is_ipv4_mapped() or ip in _IPV4_TRANSLATED or ip in _NAT64:
            return IPAddress(value & 0xFFFFFFFF, 4)
        if ip in _SIX_TO_FOUR:
            return IPAddress((value >> 80) & 0xFFFFFFFF, 4)
        if value >> 32 == 0 and value > 0xFFFF:  # IPv4-compatible ::a.b.c.d (deprecated)
            return IPAddress(value & 0xFFFFFFFF, 4)
    return ip


#: special-purpose ranges netaddr's registries do not carry (yet): RFC 9637 documentation,
#: RFC 3879 deprecated site-local
EXTRA_SPECIAL = IPSet(["3fff::/20", "fec0::/10"])


def is_special(ip: IPAddress) -> bool:
    """True when ``ip`` lies in a special-purpose range a relay must not reach by default."""
    return not ip.is_global() or ip.is_multicast() or ip.is_reserved() or ip in EXTRA_SPECIAL


#: the reasons the built-in rules give, and the metric label each is counted under; a custom
#: policy's own reasons are counted as "policy"
REASON_LABELS = {
    "the relay's own relayed address": "own_relay",
    "the relay's own listener": "own_listener",
    "the relay's own relay port range": "own_relay",
    "the relay's own address": "own_address",
    "special-purpose range": "special_purpose",
    "in the deny list": "deny_list",
    "not an IP address": "not_ip",
}


def reason_label(reason: str) -> str:
    """The bounded metric label of a refusal reason."""
    return REASON_LABELS.get(reason, "policy")


def _family(ip: IPAddress) -> int:
    return int(ip.version)


class OwnAddresses:
    """The addresses of the relay itself, refused as peers before any peer policy is asked.

    ``networks``: IPs or CIDRs the relay owns or answers on (its listen addresses, every local
    address of the host for a wildcard listener, its relay and external addresses; 0.0.0.0 and
    :: always, which reach the host itself). ``listen_ports``: (family, port) of its listeners,
    on every own IP of that family. ``relay_ports``: its configured relay port range (low,
    high), or None when the kernel picks. ``reopened``: CIDRs explicitly allowed as peers
    (``allow_peers``), which reopen own IPs for other ports. ``relay_to_relay``: the live
    relayed addresses of this relay are accepted as peers (two clients relayed by the same
    server reaching each other, as WebRTC does when both must use a relay): off by default;
    nested allocations stay impossible either way (the engine drops requests from its relays)
    and the listener and the rest of the relay's IPs stay refused. The engine adds the IPs of
    every relay it creates and checks its live relay addresses itself. ``sibling_ports``: the
    relay port ranges of the other processes of the same server (``--workers``), whose relayed
    addresses live on ``sibling_ips`` (the relay and external IPs they share with this one):
    with ``relay_to_relay`` a peer there is accepted and reached over the network (this
    process cannot know which of those ports are live), without it they are refused as this
    process's own range is; :meth:`sibling_relay` tells the engine to drop requests coming
    from them as it drops those from its own relays.
    """

    __slots__ = (
        "_added",
        "_cache",
        "listen_ports",
        "networks",
        "relay_ports",
        "relay_to_relay",
        "reopened",
        "sibling_ips",
        "sibling_ports",
    )

    def __init__(
        self,
        networks: Iterable[str] = (),
        *,
        listen_ports: Iterable[tuple[int, int]] = (),
        relay_ports: tuple[int, int] | None = None,
        reopened: Iterable[str] = (),
        relay_to_relay: bool = False,
        sibling_ports: Iterable[tuple[int, int]] = (),
        sibling_ips: Iterable[str] = (),
    ) -> None:
        self.relay_to_relay = relay_to_relay
        self.sibling_ports = tuple(sibling_ports)
        self.sibling_ips = frozenset(str(canonical_peer(ip)) for ip in sibling_ips)
        self.networks = _cidrs([*networks, "0.0.0.0/32", "::/128"], "networks")
        self.listen_ports: frozenset[tuple[int, int]] = frozenset(listen_ports)
        self.relay_ports = relay_ports
        self.reopened = _cidrs(reopened, "reopened")
        self._cache: dict[str, tuple[int, bool] | None] = {}
        self._added: set[str] = set()  # every relay adds the same few IPs: parse each once

    def add(self, address: str) -> None:
        """One more address of the relay (a relay or advertised IP)."""
        if address in self._added:
            return
        if len(self._added) < 4096:
            self._added.add(address)
        try:
            ip = canonical_peer(address)
        except PeerAddressError:
            return
        if ip not in self.networks:
            self.networks.add(ip)
            self._cache.clear()

    def _own(self, address: str) -> tuple[int, bool] | None:
        """(family, reopened) when ``address`` is one of the relay's IPs, else None."""
        if address in self._cache:
            return self._cache[address]
        try:
            ip = canonical_peer(address)
            raw = IPAddress(address.split("%", 1)[0])
        except (PeerAddressError, AddrFormatError, ValueError):
            verdict = None
        else:
            if ip in self.networks or raw in self.networks:
                verdict = (_family(ip), ip in self.reopened or raw in self.reopened)
            else:
                verdict = None
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[address] = verdict
        return verdict

    def owns(self, address: str) -> bool:
        """True when ``address`` (an IP string) is one of the relay's own IPs."""
        return self._own(address) is not None

    def refuse(self, peer: Address, relays: Collection[Address] = ()) -> str | None:
        """Why ``peer`` is the relay itself, or None. ``relays``: the transport addresses of
        the live relays, as the engine knows them (canonical IP strings)."""
        own = self._own(peer[0])
        if own is None:
            return None
        family, reopened = own
        port = peer[1]
        canonical = str(canonical_peer(peer[0]))
        if (canonical, port) in relays or (peer[0], port) in relays:
            return None if self.relay_to_relay else "the relay's own relayed address"
        if (family, port) in self.listen_ports:
            return "the relay's own listener"
        if self.sibling_ports and canonical in self.sibling_ips and self._in_sibling(port):
            return None if self.relay_to_relay else "the relay's own relay port range"
        low_high = self.relay_ports
        if low_high is not None and low_high[0] <= port <= low_high[1]:
            return "the relay's own relay port range"
        if not reopened:
            return "the relay's own address"
        return None

    def _in_sibling(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.sibling_ports)

    def sibling_relay(self, address: Address) -> bool:
        """True when ``address`` may be a relayed address of another worker of this server."""
        if not self.sibling_ports or not self._in_sibling(address[1]):
            return False
        try:
            return str(canonical_peer(address[0])) in self.sibling_ips
        except PeerAddressError:
            return False

    def describe(self) -> list[str]:
        return [str(c) for c in self.networks.iter_cidrs()]


@runtime_checkable
class PeerPolicy(Protocol):
    """Which peers a relay may exchange data with."""

    def refuse(self, peer: Address) -> str | None:
        """Why the relay must not talk to ``peer`` (its IP decides for a permission; the port
        is what the client sent), or None when it may. Called once per CreatePermission peer
        and ChannelBind, never per packet."""
        ...


def _cidrs(values: Iterable[str], param: str) -> IPSet:
    out = IPSet()
    for value in values:
        try:
            out.add(IPNetwork(str(value)))
        except (AddrFormatError, ValueError, TypeError):
            raise ConfigError(
                f"bad CIDR {value!r}: use CIDRs such as 10.0.0.0/8 or 2001:db8::/32", param=param
            ) from None
    return out


class DefaultPeerPolicy:
    """Special-purpose ranges refused, with explicit ``allow`` and ``deny`` CIDRs on top."""

    __slots__ = ("_allow", "_cache", "_deny", "allow_special")

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        *,
        allow_special: bool = False,
    ) -> None:
        """``allow``/``deny`` are CIDRs or addresses; ``allow_special`` turns the default off.
        A bad CIDR is a :class:`~natkit.errors.ConfigError` naming ``allow`` or ``deny``."""
        self._allow = _cidrs(allow, "allow")
        self._deny = _cidrs(deny, "deny")
        self.allow_special = allow_special
        self._cache: dict[str, str | None] = {}

    def refuse(self, peer: Address) -> str | None:
        address = peer[0]
        if address in self._cache:
            return self._cache[address]
        try:
            verdict = self._decide(address)
        except PeerAddressError:
            verdict = "not an IP address"
        if len(self._cache) >= 4096:  # bounded: a client can name many distinct peers
            self._cache.clear()
        self._cache[address] = verdict
        return verdict

    def permits(self, address: str) -> bool:
        """True if the relay may exchange data with ``address`` (an IP string)."""
        return self.refuse((address, 0)) is None

    def _decide(self, address: str) -> str | None:
        ip = canonical_peer(address)
        raw = IPAddress(address.split("%", 1)[0])
        if ip in self._deny or raw in self._deny:
            return "in the deny list"
        if ip in self._allow or raw in self._allow:
            return None
        if self.allow_special or not is_special(ip):
            return None
        return "special-purpose range"

    def describe(self) -> dict[str, list[str]]:
        """The explicit lists, as CIDR strings (for logs and for the coturn engine)."""
        return {
            "allow": [str(c) for c in self._allow.iter_cidrs()],
            "deny": [str(c) for c in self._deny.iter_cidrs()],
        }
