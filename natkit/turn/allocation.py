"""The state of one TURN allocation: relayed addresses, permissions, channel bindings.

Kept small for idle allocations (``__slots__``, permission and channel tables created on first
use) because a server holds tens of thousands of them. This is the engine's state: adapters
never read it, they go through :class:`natkit.turn.engine.TurnEngine`'s public methods and
actions. ``handle`` slots are opaque objects belonging to the adapter (its relay sockets).
"""

from __future__ import annotations

from typing import Any

Address = tuple[str, int]


class Relay:
    """One relayed transport address of an allocation (an allocation has one per family).

    The adapter makes it around its relay socket (``handle``) and hands it to the engine;
    ``allocation`` is the engine's: the allocation it serves, None while it is only reserved
    (EVEN-PORT R bit) or after its allocation ended. The adapter passes the Relay back with
    every datagram from a peer (:meth:`TurnEngine.forward_from_peer`).
    """

    __slots__ = ("address", "advertised", "allocation", "family", "handle")

    def __init__(self, family: int, address: Address, advertised: Address, handle: Any) -> None:
        self.family = family  # 4 or 6
        self.address = address  # where the relay socket is bound
        self.advertised = advertised  # what XOR-RELAYED-ADDRESS says (external IP behind 1:1 NAT)
        self.handle = handle  # the adapter's socket/transport
        self.allocation: Allocation | None = None


class Channel:
    """A channel binding: number <-> peer transport address, through one relay."""

    __slots__ = ("expires", "number", "peer", "relay")

    def __init__(self, number: int, peer: Address, relay: Relay, expires: float) -> None:
        self.number = number
        self.peer = peer
        self.relay = relay
        self.expires = expires


class Allocation:
    """One allocation, identified by its client 5-tuple (``key``)."""

    __slots__ = (
        "account",
        "bucket",
        "channels",
        "client",
        "client_addr",
        "created",
        "dont_fragment",
        "expired_channels",
        "expires",
        "ip_channels",
        "key",
        "last_request",
        "offloaded",
        "peer_channels",
        "perms",
        "relays",
        "rest_expires",
        "stream",
        "username",
    )

    def __init__(
        self,
        key: Any,
        client: Any,
        client_addr: Address,
        stream: bool,
        username: str,
        account: str,
        relays: list[Relay],
        now: float,
        lifetime: float,
    ) -> None:
        self.key = key  # the 5-tuple key the engine indexes by
        self.client = client  # the adapter's handle to reply to the client
        self.client_addr = client_addr
        self.stream = stream  # TCP/TLS: ChannelData needs padding to 4 bytes
        self.username = username
        self.account = account
        self.relays = relays
        self.created = now
        self.expires = now + lifetime
        self.rest_expires: float | None = None
        self.dont_fragment = False
        # peer IP -> expiry; created lazily (most of an idle allocation's memory otherwise)
        self.perms: dict[str, float] | None = None
        self.channels: dict[int, Channel] | None = None
        self.peer_channels: dict[Address, Channel] | None = None
        # peer IP -> its channels: what a permission change touches, without a scan
        self.ip_channels: dict[str, list[Channel]] | None = None
        # channel number -> (peer, until) and peer -> (number, until): after a binding expires
        # neither may be bound to something else for 5 minutes (RFC 8656 §12)
        self.expired_channels: dict[Any, tuple[Any, float]] | None = None
        # (transaction id, response bytes) of the last Allocate, for retransmissions
        self.last_request: tuple[bytes, bytes] | None = None
        self.bucket: list[float] | None = None  # bandwidth cap token bucket [bytes, last]
        self.offloaded = False  # an OffloadAllocation was emitted for it

    def relay_for(self, family: int) -> Relay | None:
        for relay in self.relays:
            if relay.family == family:
                return relay
        return None

    def permitted(self, ip: str, now: float) -> bool:
        perms = self.perms
        if perms is None:
            return False
        expiry = perms.get(ip)
        return expiry is not None and expiry > now

    def permit(self, ip: str, until: float) -> None:
        if self.perms is None:
            self.perms = {}
        self.perms[ip] = until

    def bind(self, channel: Channel) -> None:
        if self.channels is None or self.peer_channels is None or self.ip_channels is None:
            self.channels, self.peer_channels, self.ip_channels = {}, {}, {}
        self.channels[channel.number] = channel
        self.peer_channels[channel.peer] = channel
        self.ip_channels.setdefault(channel.peer[0], []).append(channel)

    def unbind(self, channel: Channel) -> None:
        """Remove ``channel`` from every table (no tombstone: see :meth:`expire`)."""
        if self.channels is None or self.peer_channels is None or self.ip_channels is None:
            return
        if self.channels.get(channel.number) is channel:
            del self.channels[channel.number]
        if self.peer_channels.get(channel.peer) is channel:
            del self.peer_channels[channel.peer]
        same_ip = self.ip_channels.get(channel.peer[0])
        if same_ip is not None:
            if channel in same_ip:
                same_ip.remove(channel)
            if not same_ip:
                del self.ip_channels[channel.peer[0]]

    def channels_to(self, ip: str) -> list[Channel]:
        """The channels bound to peers at ``ip`` (any port)."""
        ip_channels = self.ip_channels
        return ip_channels.get(ip, []) if ip_channels else []

    def peer_until(self, channel: Channel) -> float:
        """How long ``channel`` carries data: its expiry, or its peer's permission's if earlier."""
        perms = self.perms
        return min(channel.expires, perms.get(channel.peer[0], 0.0) if perms else 0.0)

    def expire(self, now: float) -> tuple[list[str], list[Channel]]:
        """Drop expired permissions and channels; returns the peer IPs and channels that went."""
        gone_perms: list[str] = []
        gone_channels: list[Channel] = []
        if self.perms:
            gone_perms = [ip for ip, t in self.perms.items() if t <= now]
            for ip in gone_perms:
                del self.perms[ip]
        if self.channels:
            for channel in [c for c in self.channels.values() if c.expires <= now]:
                self.unbind(channel)
                number = channel.number
                if self.expired_channels is None:
                    self.expired_channels = {}
                self.expired_channels[number] = (channel.peer, now + 300)
                self.expired_channels[channel.peer] = (number, now + 300)
                gone_channels.append(channel)
        if self.expired_channels:
            for k in [k for k, (_, t) in self.expired_channels.items() if t <= now]:
                del self.expired_channels[k]
            if not self.expired_channels:
                self.expired_channels = None
        return gone_perms, gone_channels
