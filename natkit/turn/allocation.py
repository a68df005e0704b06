"""The state of one TURN allocation: relayed addresses, permissions, channel bindings.

Kept small for idle allocations (``__slots__``, permission and channel tables created on first
use) because a server holds tens of thousands of them. The adapter's hot path reads
``perms``, ``channels`` and ``peer_channels`` directly; ``handle`` slots are opaque objects
belonging to the adapter (its relay sockets).
"""

from __future__ import annotations

from typing import Any

Address = tuple[str, int]

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF  # RFC 8656
#: RFC 5766 allowed up to 0x7FFE; coturn accepts it and its own client (turnutils_uclient),
#: like other RFC 5766 clients, picks numbers there.
CHANNEL_MAX_RFC5766 = 0x7FFE


class Relay:
    """One relayed transport address of an allocation (an allocation has one per family)."""

    __slots__ = ("address", "advertised", "family", "handle")

    def __init__(self, family: int, address: Address, advertised: Address, handle: Any) -> None:
        self.family = family  # 4 or 6
        self.address = address  # where the relay socket is bound
        self.advertised = advertised  # what XOR-RELAYED-ADDRESS says (external IP behind 1:1 NAT)
        self.handle = handle  # the adapter's socket/transport


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
        "key",
        "last_request",
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
        # channel number -> (peer, until) and peer -> (number, until): after a binding expires
        # neither may be bound to something else for 5 minutes (RFC 8656 §12)
        self.expired_channels: dict[Any, tuple[Any, float]] | None = None
        # (transaction id, response bytes) of the last Allocate, for retransmissions
        self.last_request: tuple[bytes, bytes] | None = None
        self.bucket: list[float] | None = None  # bandwidth cap token bucket [bytes, last]

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
        if self.channels is None:
            self.channels = {}
            self.peer_channels = {}
        assert self.peer_channels is not None
        self.channels[channel.number] = channel
        self.peer_channels[channel.peer] = channel

    def expire(self, now: float) -> tuple[int, int]:
        """Drop expired permissions and channels; returns how many of each went."""
        gone_perms = gone_channels = 0
        if self.perms:
            for ip in [ip for ip, t in self.perms.items() if t <= now]:
                del self.perms[ip]
                gone_perms += 1
        if self.channels:
            assert self.peer_channels is not None
            for number in [n for n, c in self.channels.items() if c.expires <= now]:
                channel = self.channels.pop(number)
                self.peer_channels.pop(channel.peer, None)
                if self.expired_channels is None:
                    self.expired_channels = {}
                self.expired_channels[number] = (channel.peer, now + 300)
                self.expired_channels[channel.peer] = (number, now + 300)
                gone_channels += 1
        if self.expired_channels:
            for k in [k for k, (_, t) in self.expired_channels.items() if t <= now]:
                del self.expired_channels[k]
            if not self.expired_channels:
                self.expired_channels = None
        return gone_perms, gone_channels
