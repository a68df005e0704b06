"""The TURN server state machine (RFC 8656), sans-IO.

The adapter feeds it what arrives (bytes, who sent it, the time) and carries out what it
returns (:mod:`natkit.turn.actions`): replies to the client, datagrams to peers and clients,
relay sockets to open or close, and the forwarding entries a fast table may take over.
Allocation needs sockets, so it is two-phase: :meth:`TurnEngine.handle_client` returns a
:class:`BindRelays` action, the adapter binds the relay sockets and hands them to
:meth:`TurnEngine.complete_allocate`, which answers the client.

Every forwarding rule (permission and channel checks, expiry, the bandwidth cap, which relay,
ChannelData and Data indication framing) lives here, behind :meth:`TurnEngine.forward_from_client`
and :meth:`TurnEngine.forward_from_peer`; adapters and fast tables only carry bytes.

Errors: bytes that do not decode are dropped and counted (``bad_packets``); a request that
decodes but breaks a rule gets its error response (400 and the others of RFC 8656); an
exception raised while handling a request is a bug, never the client's doing: logged with its
traceback, counted (``stats.bugs``) and answered 500 (an indication is dropped).

Abuse brakes (docs/security.md): the relay never talks to itself (its own addresses are
refused as peers before any policy, requests from its own relays are dropped); failed
authentications are braked per (username, realm, source IP) and server-wide without touching a
request whose MESSAGE-INTEGRITY verifies; error responses to unauthenticated UDP sources are
rate limited per source IP; permissions and channels per allocation are capped.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from natkit.stun import (
    CHANNEL_MAX,
    CHANNEL_MAX_RFC5766,
    CHANNEL_MIN,
    AddressErrorCode,
    Attr,
    Class,
    ErrorCode,
    Message,
    Method,
    PasswordAlgorithm,
    StunParseError,
    decode,
    long_term_key,
    verify_integrity,
)
from natkit.stun.attributes import CODECS
from natkit.turn.actions import (
    Action,
    BindRelays,
    ClientKey,
    CloseRelay,
    OffloadAllocation,
    OffloadChannel,
    OffloadPermission,
    OffloadWithdraw,
    Reply,
    SendToClient,
    SendToPeer,
)
from natkit.turn.allocation import Address, Allocation, Channel, Relay
from natkit.turn.auth import (
    Authenticator,
    Grant,
    Identity,
    NoAuth,
    NonceIssuer,
    Refused,
    StaticUsers,
)
from natkit.turn.limits import FailureLimiter, ResponseLimiter
from natkit.turn.policy import (
    DefaultPeerPolicy,
    OwnAddresses,
    PeerAddressError,
    PeerPolicy,
    canonical_peer,
    reason_label,
)
from natkit.turn.quota import AllocationQuota, Quota
from natkit.turn.wire import (
    AUTH_METHODS,
    COOKIE,
    FINGERPRINT,
    FINGERPRINT_XOR,
    HEADER,
    QUICK_ATTRS,
    QUICK_TYPES,
    allocate_success,
    tail_types,
)

__all__ = [
    "Action",
    "BindRelays",
    "CloseRelay",
    "Reply",
    "SendToClient",
    "SendToPeer",
    "Stats",
    "TurnConfig",
    "TurnEngine",
]

log = logging.getLogger("natkit.turn")

UDP = 17
IPV4, IPV6 = 1, 2  # REQUESTED-/ADDITIONAL-ADDRESS-FAMILY values
# coturn 4.x's clients (turnutils_uclient -Z) send ADDITIONAL-ADDRESS-FAMILY under its
# pre-RFC 8656 code; read it as the attribute it stands for
_LEGACY_ADDITIONAL_FAMILY = 0x8032
_FAMILY_OF_CODE = {IPV4: 4, IPV6: 6}
_CODE_OF_FAMILY = {4: IPV4, 6: IPV6}
_ALGORITHMS = (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256)
_CD_HEADER = struct.Struct("!HH")
_KEY_CACHE_MAX = 100_000
_KNOWN = frozenset(CODECS)  # attribute types the codec decodes (a request with only these: no 420)
# the largest DATA a Data indication carries: a STUN body is at most 65535 bytes, and holds
# XOR-PEER-ADDRESS (8 or 20 bytes + 4) and DATA's own header and padding
_DATA_MAX = {4: 65535 - 12 - 4 - 3, 6: 65535 - 24 - 4 - 3}
_PADDING = {1: b"\x00\x00\x00", 2: b"\x00\x00", 3: b"\x00"}


@dataclass(slots=True)
class TurnConfig:
    """Protocol parameters and limits. Times in seconds. (Who may authenticate, which peers
    and how many allocations are the engine's ``auth``, ``peer_policy`` and ``quota``.)"""

    realm: str = "natkit"
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    nonce_lifetime: int = 600
    reservation_lifetime: int = 30
    #: relay address families the server can offer (4 and/or 6)
    families: frozenset[int] = frozenset({4})
    max_permissions: int = 1000
    #: channel bindings per allocation (RFC 8656 leaves the number to policy; 508 beyond)
    max_channels: int = 500
    #: optional cap per allocation, bytes per second each way combined
    bandwidth: int | None = None
    software: str | None = None
    #: True: only RFC 8656 channel numbers (0x4000-0x4FFF); False: also RFC 5766's (to 0x7FFE)
    strict_channels: bool = False


@dataclass(slots=True)
class Stats:
    """Counters the metrics exporter reads; the adapter's fast path bumps the packet ones."""

    allocations_created: int = 0
    allocations_expired: int = 0
    allocations_deleted: int = 0
    permissions_created: int = 0
    channels_created: int = 0
    auth_failures: int = 0
    auth_blocked: int = 0
    refused_peers: int = 0
    #: refused peers by the bounded reason label of natkit.turn.policy.reason_label
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    quota_refusals: int = 0
    #: error responses to unauthenticated sources not sent (the per-source budget was spent)
    rate_limited: int = 0
    #: requests that came from one of the relay's own relayed addresses (dropped)
    from_own_relay: int = 0
    bad_packets: int = 0
    to_peer_packets: int = 0
    to_peer_bytes: int = 0
    to_client_packets: int = 0
    to_client_bytes: int = 0
    dropped_packets: int = 0
    #: datagrams from a client to a relayed address of this server, delivered straight to
    #: that allocation's client (never through the network); counted in to_client too
    relay_to_relay_packets: int = 0
    relay_to_relay_bytes: int = 0
    #: exceptions raised while handling a request: bugs, logged with their traceback
    bugs: int = 0
    errors: dict[int, int] = field(default_factory=dict)


class _Reservation:
    __slots__ = ("expires", "relay")

    def __init__(self, relay: Relay, expires: float) -> None:
        self.relay = relay
        self.expires = expires


class TurnEngine:
    """All allocations of one server and the rules that govern them.

    ``auth`` decides who may allocate (default: nobody; :class:`~natkit.turn.auth.NoAuth` for an
    open relay), ``peer_policy`` which peers are reachable (default: no special-purpose
    address), ``quota`` how many allocations may exist (default: no limit). ``own`` names the
    relay's own addresses, refused as peers whatever the policy says (the IPs of the relays
    the engine creates are added to it). ``limiter`` brakes failed authentications,
    ``responses`` error responses to unauthenticated UDP sources. ``offload``: emit the
    Offload* events of :mod:`natkit.turn.actions` for a fast table to mirror.
    """

    def __init__(
        self,
        config: TurnConfig | None = None,
        *,
        auth: Authenticator | None = None,
        peer_policy: PeerPolicy | None = None,
        quota: Quota | None = None,
        nonce_secret: bytes | None = None,
        limiter: FailureLimiter | None = None,
        responses: ResponseLimiter | None = None,
        own: OwnAddresses | None = None,
        offload: bool = False,
    ) -> None:
        self.config = config or TurnConfig()
        self.auth: Authenticator = auth if auth is not None else StaticUsers({})
        self.requires_auth = not isinstance(self.auth, NoAuth)
        self.peer_policy: PeerPolicy = (
            peer_policy if peer_policy is not None else DefaultPeerPolicy()
        )
        self.quota: Quota = quota if quota is not None else AllocationQuota()
        self.nonces = NonceIssuer(self.config.nonce_lifetime, nonce_secret)
        self.limiter = limiter or FailureLimiter()
        self.responses = responses or ResponseLimiter()
        self.own = own or OwnAddresses()
        self.offload = offload
        #: with ``offload``: TCP/TLS allocations' entries too (the table frames the stream)
        self.offload_streams = False
        #: with ``offload``: a UDP allocation's OffloadAllocation comes when it is created (not
        #: with its first permission), so a table knows every allocation a client has (a C
        #: path that makes allocations itself must never make a second one for a 5-tuple)
        self.offload_eager = False
        #: the channel number range, for the codec and the adapter's stream framer alike
        self.channel_max = CHANNEL_MAX if self.config.strict_channels else CHANNEL_MAX_RFC5766
        self.allocations: dict[Any, Allocation] = {}
        self.reservations: dict[bytes, _Reservation] = {}
        self.pending: set[Any] = set()
        self.stats = Stats()
        self._last_sweep = 0.0
        self._challenges: dict[tuple[int, int, str, str], bytes] = {}
        # (username, password, algorithm) -> long-term key: derived once, not per request
        self._keys: dict[tuple[str, str, int], bytes] = {}
        self._plain: dict[tuple[str, str, int], Identity] = {}
        # the transport addresses of live relays and reservations, bound and advertised, with
        # canonical IPs: never a peer, never a client
        self._relay_addrs: set[Address] = set()
        # the same addresses -> their Relay: where relay-to-relay data is delivered in process
        self._relay_of: dict[Address, Relay] = {}
        self._canonical: dict[str, str] = {}
        # own IPs a permission was granted for (an explicit allow reopened them): their data
        # is checked per packet and never offloaded
        self._own_permitted: set[str] = set()
        # channels to own IPs by peer address: void once a relay takes that address
        self._own_channels: dict[Address, list[tuple[Allocation, Channel]]] = {}
        # allocation key -> peer IPs whose permission grew: their other channels' offload
        # entries are renewed by the next tick, not by the request (constant work per request)
        self._dirty: dict[Any, set[str]] = {}
        # the source of the request being handled, for the error-response budget
        self._source: str | None = None
        self._now_hint = 0.0
        self._mute = False

    # ---- entry points ----------------------------------------------------------------------

    def handle_client(
        self, client: Any, addr: Address, data: bytes, now: float, *, stream: bool = False
    ) -> list[Action]:
        """A datagram (UDP) or frame (TCP/TLS) from a client at ``addr`` via ``client``."""
        if not data:
            return []
        first = data[0]
        if 0x40 <= first <= 0x7F:
            out = self.forward_from_client((client, addr), data, now)
            return [] if out is None else [out]
        if first > 0x3F:
            self.stats.bad_packets += 1
            return []
        if addr in self._relay_addrs or self.own.sibling_relay(addr):
            # one of our relays (or another worker's): a nested allocation, a loop
            self.stats.from_own_relay += 1
            return []
        if self.requires_auth:
            challenge = self._quick_challenge(data, addr[0], now, stream)
            if challenge is not None:
                return challenge
        try:
            msg = decode(data)
        except StunParseError:
            self.stats.bad_packets += 1
            return []
        # error responses to this source are budgeted (UDP only: a stream's source is proven)
        self._source = None if stream else addr[0]
        self._now_hint = now
        self._mute = False
        try:
            actions = self._dispatch(client, addr, stream, msg, now)
        except Exception:
            # A bug, not the client's doing: never hidden as a 400, never fatal to the server.
            self.stats.bugs += 1
            log.exception("event=internal_error method=0x%03x client=%s", msg.method, _fmt(addr))
            actions = []
            if msg.cls == Class.REQUEST:
                actions = [Reply(self._error(msg, 500, "Server Error", None))]
        finally:
            self._source = None
        if self._mute:
            self._mute = False
            self.stats.rate_limited += 1
            return [a for a in actions if not isinstance(a, Reply)]
        return actions

    def _budget_reply(self, now: float) -> None:
        """An error response to an unauthenticated source is about to be sent: take it from
        the source's budget, or mute the reply (over UDP a source proves nothing, and an
        attacker could aim our 401s at a victim)."""
        source = self._source
        if source is not None and not self._mute and not self.responses.allow(source, now):
            self._mute = True

    # ---- the data path: every forwarding rule, behind two methods -------------------------

    def forward_from_client(
        self, key: ClientKey, data: bytes, now: float
    ) -> SendToPeer | SendToClient | None:
        """A ChannelData frame (UDP datagram, or TCP/TLS frame with its padding) from the client
        of allocation ``key``: the payload for its peer, or None when it is dropped (no
        allocation, unbound or expired channel, no permission, over the bandwidth cap,
        truncated; counted in ``stats.dropped_packets``). When the peer is a live relayed
        address of this server (relay-to-relay), the frame for that allocation's client
        instead: what :meth:`forward_from_peer` makes of it arriving there from this
        allocation's relayed address (nothing goes through the network)."""
        stats = self.stats
        allocation = self.allocations.get(key)
        if allocation is None or allocation.channels is None or len(data) < 4:
            stats.dropped_packets += 1
            return None
        number, length = _CD_HEADER.unpack_from(data)
        channel = allocation.channels.get(number)
        if channel is None or channel.expires <= now or len(data) < 4 + length:
            stats.dropped_packets += 1
            return None
        peer = channel.peer
        perms = allocation.perms
        expiry = perms.get(peer[0]) if perms else None  # the permission check, inline: hot
        if (
            expiry is None
            or expiry <= now
            or (allocation.bucket is not None and not self._spend(allocation, length, now))
        ):
            stats.dropped_packets += 1
            return None
        internal = self._internal
        if internal is not None:
            target = internal.get(peer)
            if target is not None:
                return self._relay_to_relay(channel.relay, target, data[4 : 4 + length], now)
        stats.to_peer_packets += 1
        stats.to_peer_bytes += length
        return SendToPeer(channel.relay.handle, data[4 : 4 + length], peer)

    def forward_from_peer(
        self, relay: Relay, peer: Address, data: bytes, now: float
    ) -> SendToClient | None:
        """A datagram from ``peer`` arriving on ``relay``: the ChannelData frame (a channel to
        ``peer`` through ``relay`` is bound; padded for TCP/TLS clients) or Data indication
        for the client, or None when it is dropped (a reserved relay, no permission for the
        peer's IP, a peer of the other address family, over the bandwidth cap; counted)."""
        stats = self.stats
        allocation = relay.allocation
        if allocation is None:
            stats.dropped_packets += 1
            return None
        ip = peer[0]
        perms = allocation.perms
        expiry = perms.get(ip) if perms else None
        n = len(data)
        own = self._own_permitted
        if (
            expiry is None
            or expiry <= now
            or relay.family != (6 if ":" in ip else 4)
            or (own and ip in own and self._is_self(peer))
            or (allocation.bucket is not None and not self._spend(allocation, n, now))
        ):
            stats.dropped_packets += 1
            return None
        channels = allocation.peer_channels
        channel = channels.get(peer) if channels else None
        if channel is not None and channel.expires > now and channel.relay is relay:
            # the number was checked at ChannelBind; a UDP payload fits the 16-bit length
            frame = _CD_HEADER.pack(channel.number, n) + data
            if allocation.stream and n % 4:
                frame += _PADDING[n % 4]
        else:
            if n > _DATA_MAX[relay.family]:  # no Data indication can hold it
                stats.dropped_packets += 1
                return None
            indication = Message(Method.DATA, Class.INDICATION)
            frame = indication.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data).encode()
        stats.to_client_packets += 1
        stats.to_client_bytes += n
        return SendToClient(allocation.client, allocation.client_addr, frame)

    @property
    def _internal(self) -> dict[Address, Relay] | None:
        """Live relay addresses -> Relay when relay-to-relay is on (else None)."""
        return self._relay_of if self.own.relay_to_relay and self._relay_of else None

    def _relay_to_relay(
        self, source: Relay, target: Relay, data: bytes, now: float
    ) -> SendToClient | None:
        """Data from ``source``'s client to ``target``'s relayed address: what the target's
        client would get had it crossed the network from ``source``'s relayed address (the
        one its client was told), under the target's own permissions, channels and cap."""
        out = self.forward_from_peer(target, source.advertised, data, now)
        if out is not None:
            self.stats.relay_to_relay_packets += 1
            self.stats.relay_to_relay_bytes += len(data)
        return out

    def _spend(self, allocation: Allocation, size: int, now: float) -> bool:
        """Take ``size`` bytes from the allocation's bandwidth bucket; False when it is short."""
        bucket = allocation.bucket
        if bucket is None:
            return True
        rate = float(self.config.bandwidth or 0)
        bucket[0] = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] < size:
            return False
        bucket[0] -= size
        return True

    def complete_allocate(
        self,
        pending: BindRelays,
        relays: list[Relay],
        now: float,
        *,
        reserved: Relay | None = None,
    ) -> list[Action]:
        """Finish an Allocate once the adapter has bound ``relays`` (empty: it could not)."""
        self.pending.discard(pending.key)
        msg, ident = pending.request, pending.identity
        failed = None
        if not relays or relays[0].family != pending.families[0]:
            failed = self._error(msg, 508, "Insufficient Capacity", ident)
        elif pending.key in self.allocations:  # raced with another Allocate; keep the first
            failed = self._error(msg, 437, "Allocation Mismatch", ident)
        if failed is not None:
            self.quota.release(ident.account if ident else None, pending.client_addr)
            actions: list[Action] = [CloseRelay(r.handle, r.address) for r in relays]
            if reserved is not None:
                actions.append(CloseRelay(reserved.handle, reserved.address))
            actions.append(Reply(failed))
            return actions
        missing = list(pending.missing)
        got = {r.family for r in relays}
        missing += [f for f in pending.families if f not in got and f not in missing]
        token = None
        out: list[Action] = []
        if reserved is not None:
            token = os.urandom(8)
            self.reservations[token] = _Reservation(
                reserved, now + self.config.reservation_lifetime
            )
            self._track(reserved, out)
        reply = Reply(self._create(pending, relays, missing, token, now, out))
        return [*out, reply]

    def adopt_allocation(
        self,
        client: Any,
        addr: Address,
        username: str,
        relay: Relay,
        lifetime: int,
        transaction_id: bytes,
        response: bytes,
        now: float,
    ) -> list[Action]:
        """An Allocate a fast path outside the engine verified and answered itself (the C
        control path of natkit/server/_turnctl.c: a static user's plain UDP Allocate, under
        no quota limit, ``response`` the success it sent): the allocation becomes the
        engine's like one it made. Should the engine already hold one for that 5-tuple, or
        the quota refuse, the engine's state wins and the new relay is closed."""
        key = (client, addr)
        refused = None
        if key not in self.allocations and key not in self.pending:
            refused = self.quota.acquire(username if self.requires_auth else None, addr)
        if key in self.allocations or key in self.pending or refused is not None:
            self.stats.bugs += 1
            existing = self.allocations.get(key)
            log.warning(
                "event=adopt_refused client=%s user=%r why=%s",
                _fmt(addr),
                username[:64],
                "pending" if key in self.pending else "quota" if existing is None else
                "same transaction" if existing.last_request and
                existing.last_request[0] == transaction_id else "allocated",
            )  # fmt: skip
            # the fast path's table entry for the key goes: back to the engine's allocation
            existing = self.allocations.get(key)
            entry: Action = OffloadWithdraw(key)
            if existing is not None and existing.offloaded:
                entry = OffloadAllocation(key, tuple(existing.relays))
            return [entry, CloseRelay(relay.handle, relay.address)]
        allocation = Allocation(
            key, client, addr, False, username, username, [relay], now, lifetime
        )
        if self.config.bandwidth:
            allocation.bucket = [float(self.config.bandwidth), now]
        out: list[Action] = []
        relay.allocation = allocation
        self._track(relay, out)
        self.allocations[key] = allocation
        self.stats.allocations_created += 1
        allocation.last_request = (transaction_id, response)
        if self.offload and allocation.bucket is None:
            # the fast path put the allocation's table entry itself: no OffloadAllocation
            allocation.offloaded = True
        return out

    def client_gone(self, client: Any, addr: Address, now: float) -> list[Action]:
        """A TCP/TLS client connection closed: its allocation goes with it (RFC 8656 §5)."""
        allocation = self.allocations.get((client, addr))
        if allocation is None:
            return []
        return self._delete(allocation, "connection closed")

    def tick(self, now: float) -> list[Action]:
        """Expire allocations, reservations, permissions and channels. Call about once a second."""
        actions: list[Action] = []
        for allocation in [a for a in self.allocations.values() if a.expires <= now]:
            self.stats.allocations_expired += 1
            actions += self._delete(allocation, "expired", count=False)
        for token in [t for t, r in self.reservations.items() if r.expires <= now]:
            relay = self.reservations.pop(token).relay
            self._untrack(relay, actions)
            actions.append(CloseRelay(relay.handle, relay.address))
        if self._dirty:
            self._renew_channels(now, actions)
        if now - self._last_sweep >= 10:
            self._last_sweep = now
            for allocation in self.allocations.values():
                if allocation.perms or allocation.channels or allocation.expired_channels:
                    self._sweep(allocation, now, actions)
            self.limiter.prune(now)
            self.responses.prune(now)
            self._prune_own_channels()
        return actions

    def close_all(self) -> list[Action]:
        """Everything the adapter must close on shutdown."""
        actions: list[Action] = []
        for allocation in list(self.allocations.values()):
            actions += self._delete(allocation, "server shutdown")
        for reservation in self.reservations.values():
            self._untrack(reservation.relay, actions)
            actions.append(CloseRelay(reservation.relay.handle, reservation.relay.address))
        self.reservations.clear()
        return actions

    def has_allocation(self, key: ClientKey) -> bool:
        """True while the client of ``key`` holds an allocation (or one is being made)."""
        return key in self.allocations or key in self.pending

    def counts(self) -> dict[str, int]:
        """Current allocations, permissions and channels (for metrics and status)."""
        perms = channels = 0
        for allocation in self.allocations.values():
            if allocation.perms:
                perms += len(allocation.perms)
            if allocation.channels:
                channels += len(allocation.channels)
        return {
            "allocations": len(self.allocations),
            "permissions": perms,
            "channels": channels,
            "reservations": len(self.reservations),
        }

    # ---- dispatch --------------------------------------------------------------------------

    def _dispatch(
        self, client: Any, addr: Address, stream: bool, msg: Message, now: float
    ) -> list[Action]:
        method, cls = msg.method, msg.cls
        key = (client, addr)
        if cls == Class.INDICATION:
            if method == Method.SEND:
                return self._send_indication(key, msg, now)
            return []
        if cls != Class.REQUEST:
            return []
        if method == Method.BINDING:
            resp = msg.response().add(Attr.XOR_MAPPED_ADDRESS, addr)
            return [Reply(self._encode(msg, resp, None))]
        if method not in AUTH_METHODS:
            return self._fail(msg, 400, "Bad Request: unsupported method", None)
        attrs = _first_values(msg)
        if attrs.keys() <= _KNOWN:
            unknown: tuple[int, ...] = ()
        else:
            unknown = tuple(t for t in attrs if t < 0x8000 and t not in CODECS)
        if unknown:
            self._budget_reply(now)
            err = msg.error(420, "Unknown Attribute").add(Attr.UNKNOWN_ATTRIBUTES, unknown)
            return [Reply(self._encode(msg, err, None))]
        identity = self._authenticate(msg, addr, now, attrs)
        if isinstance(identity, list):
            return identity
        if method == Method.ALLOCATE:
            return self._allocate(key, client, addr, stream, msg, identity, now, attrs)
        allocation = self.allocations.get(key)
        if allocation is None:
            return self._fail(msg, 437, "Allocation Mismatch", identity)
        if identity is not None and identity.username != allocation.username:
            return self._fail(msg, 441, "Wrong Credentials", identity)
        if method == Method.REFRESH:
            return self._refresh(allocation, msg, identity, now)
        if method == Method.CREATE_PERMISSION:
            return self._create_permission(allocation, msg, identity, now)
        return self._channel_bind(allocation, msg, identity, now)

    # ---- authentication --------------------------------------------------------------------

    def _quick_challenge(
        self, data: bytes, ip: str, now: float, stream: bool
    ) -> list[Action] | None:
        """The 401 for a plain first request (no credentials yet: the first half of every
        Allocate), answered without decoding it; None when the full path must look at it.
        Only requests whose every attribute is one the full path would accept unchanged
        (REQUESTED-TRANSPORT, LIFETIME, DONT-FRAGMENT, each once, well formed) qualify, so
        the answer is the one the full path gives."""
        n = len(data)
        if n < 20 or n > 20 + 36:
            return None
        mtype, length = HEADER.unpack_from(data)
        if mtype not in QUICK_TYPES or 20 + length != n or data[4:8] != COOKIE:
            return None
        seen = 0
        pos = 20
        while pos < n:
            if pos + 4 > n:
                return None
            attr_type, alen = HEADER.unpack_from(data, pos)
            bit = QUICK_ATTRS.get((attr_type, alen))
            if bit is None or seen & bit:
                return None
            seen |= bit
            pos += 4 + alen
        if pos != n:
            return None
        if not stream and not self.responses.allow(ip, now):
            self.stats.rate_limited += 1
            return []
        method = QUICK_TYPES[mtype]
        return [
            Reply(self._challenge_bytes(method, data[8:20], False, 401, "Unauthorized", ip, now))
        ]

    def _challenge(self, msg: Message, code: int, reason: str, ip: str, now: float) -> bytes:
        self._budget_reply(now)
        if msg.legacy:
            err = msg.error(code, reason)
            err.add(Attr.REALM, self.config.realm).add(Attr.NONCE, self.nonces.issue(ip, now))
            err.add(Attr.PASSWORD_ALGORITHMS, _ALGORITHMS)
            return self._encode(msg, err, None)
        fingerprint = Attr.FINGERPRINT in msg
        return self._challenge_bytes(
            msg.method, msg.transaction_id, fingerprint, code, reason, ip, now
        )

    def static_keys(self) -> dict[str, bytes] | None:
        """username -> MD5 long-term key of every user, when the authenticator is a plain
        :class:`~natkit.turn.auth.StaticUsers` (what a C path may verify itself); else None."""
        if type(self.auth) is not StaticUsers:
            return None
        return {
            name: self._key(name, password, PasswordAlgorithm.MD5)
            for name, password in self.auth.users.items()
        }

    def challenge_parts(self) -> tuple[bytes, bytes]:
        """The 401 challenge's attributes before NONCE and after it, as :meth:`_challenge_bytes`
        encodes them: with the nonce scheme (:meth:`NonceIssuer.scheme`) all a C fast path
        needs to send the same challenge."""
        nonce = self.nonces.scheme()[2] + "0" * 30  # a placeholder of the real length
        err = Message(Method.ALLOCATE, Class.ERROR, bytes(12))
        err.add(Attr.ERROR_CODE, ErrorCode(401, "Unauthorized"))
        err.add(Attr.REALM, self.config.realm).add(Attr.NONCE, nonce)
        err.add(Attr.PASSWORD_ALGORITHMS, _ALGORITHMS)
        if self.config.software:
            err.add(Attr.SOFTWARE, self.config.software)
        body = err.encode()[20:]
        at = body.index(HEADER.pack(Attr.NONCE, len(nonce)) + nonce.encode())
        return body[:at], body[at + 4 + (len(nonce) + 3) // 4 * 4 :]

    def _challenge_bytes(
        self,
        method: int,
        transaction_id: bytes,
        fingerprint: bool,
        code: int,
        reason: str,
        ip: str,
        now: float,
    ) -> bytes:
        nonce = self.nonces.issue(ip, now)
        # Every challenge with the same nonce is the same bytes but for the transaction id
        # (and FINGERPRINT): encode it once per (method, code, nonce) and patch the id in.
        cache_key = (method, code, reason, nonce)
        template = self._challenges.get(cache_key)
        if template is None:
            err = Message(method, Class.ERROR, bytes(12))
            err.add(Attr.ERROR_CODE, ErrorCode(code, reason))
            err.add(Attr.REALM, self.config.realm).add(Attr.NONCE, nonce)
            err.add(Attr.PASSWORD_ALGORITHMS, _ALGORITHMS)
            if self.config.software:
                err.add(Attr.SOFTWARE, self.config.software)
            template = err.encode()
            if len(self._challenges) >= 64:
                self._challenges.clear()
            self._challenges[cache_key] = template
        head = template[:8] + transaction_id
        if not fingerprint:
            return head + template[20:]
        body = template[20:]
        head = HEADER.pack(HEADER.unpack_from(template)[0], len(body) + 8) + head[4:]
        crc = zlib.crc32(head + body) ^ FINGERPRINT_XOR
        return head + body + FINGERPRINT.pack(Attr.FINGERPRINT, 4, crc)

    def _authenticate(
        self, msg: Message, source: Address, now: float, attrs: dict[int, Any]
    ) -> Identity | list[Action] | None:
        if not self.requires_auth:
            return None
        ip = source[0]
        if Attr.MESSAGE_INTEGRITY not in attrs and Attr.MESSAGE_INTEGRITY_SHA256 not in attrs:
            return [Reply(self._challenge(msg, 401, "Unauthorized", ip, now))]
        get = attrs.get
        username, realm, nonce = get(Attr.USERNAME), get(Attr.REALM), get(Attr.NONCE)
        if username is None or realm is None or nonce is None:
            return self._fail(msg, 400, "Bad Request: USERNAME, REALM and NONCE needed", None)
        if not self.nonces.valid(nonce, ip, now):
            return [Reply(self._challenge(msg, 438, "Stale Nonce", ip, now))]
        algorithm = PasswordAlgorithm.MD5
        chosen, offered = get(Attr.PASSWORD_ALGORITHM), get(Attr.PASSWORD_ALGORITHMS)
        if chosen is not None or offered is not None:
            # RFC 8489 §9.2.4: both present, the list unchanged (no downgrade), choice in it.
            if (
                chosen is None
                or offered is None
                or tuple(offered) != _ALGORITHMS
                or chosen not in _ALGORITHMS
            ):
                return self._fail(msg, 400, "Bad Request: PASSWORD-ALGORITHM", None)
            algorithm = chosen
        if realm != self.config.realm:
            return self._auth_failed(msg, ip, now, f"wrong realm {realm[:64]!r}", username, realm)
        found = self.auth.lookup(username, realm, source, now)
        candidates = self._identities(username, found, algorithm, now)
        if isinstance(candidates, str):
            return self._auth_failed(msg, ip, now, candidates, username, realm)
        for identity in candidates:
            if verify_integrity(msg, identity.key):
                if self._source is not None:  # a proven source: its error budget refills
                    self.responses.credit(ip, now)
                return identity
        return self._auth_failed(msg, ip, now, "bad integrity", username, realm)

    def _identities(
        self, username: str, found: object, algorithm: PasswordAlgorithm, now: float
    ) -> list[Identity] | str:
        """The keys the authenticator's answer allows for ``algorithm``, or why there are none."""
        if found is None:
            return "unknown user"
        if isinstance(found, Refused):
            return found.reason
        if isinstance(found, str):
            return [self._identity(username, found, algorithm)]
        grants = [found] if isinstance(found, Grant) else found
        if not isinstance(grants, (list, tuple)) or not all(isinstance(g, Grant) for g in grants):
            raise TypeError(f"an Authenticator returned {type(found).__name__}, not str or Grant")
        out: list[Identity] = []
        why = "unknown user"
        for grant in grants:
            if grant.expires is not None and grant.expires <= now:
                why = "expired credential"
                continue
            if grant.password is not None:
                key = self._key(username, grant.password, algorithm)
            elif grant.key is not None and algorithm == PasswordAlgorithm.MD5:
                key = grant.key
            else:
                why = "no key for the password algorithm"
                continue
            out.append(Identity(username, key, grant.account or username, grant.expires))
        return out or why

    def _identity(self, username: str, password: str, algorithm: PasswordAlgorithm) -> Identity:
        """The Identity of a plain password (immutable: made once per credential, like its key)."""
        cache_key = (username, password, algorithm.algorithm)
        identity = self._plain.get(cache_key)
        if identity is None:
            identity = Identity(username, self._key(username, password, algorithm), username)
            if len(self._plain) >= _KEY_CACHE_MAX:
                self._plain.clear()
            self._plain[cache_key] = identity
        return identity

    def _key(self, username: str, password: str, algorithm: PasswordAlgorithm) -> bytes:
        cache_key = (username, password, algorithm.algorithm)
        key = self._keys.get(cache_key)
        if key is None:
            key = long_term_key(username, self.config.realm, password, algorithm)
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def _auth_failed(
        self, msg: Message, ip: str, now: float, why: str, username: str, realm: str
    ) -> list[Action]:
        """A request whose credentials did not verify: its 401, unless the brake for
        (username, realm, source IP) or the server's budget is spent (dropped unanswered).
        Only failures reach here: a request that verifies is never braked."""
        self.stats.auth_failures += 1
        if not self.limiter.failure(username, realm, ip, now):
            self.stats.auth_blocked += 1
            return []
        log.info("event=auth_failed source=%s user=%r reason=%r", ip, username[:64], why)
        return [Reply(self._challenge(msg, 401, "Unauthorized", ip, now))]

    # ---- Allocate / Refresh ----------------------------------------------------------------

    def _lifetime(self, msg: Message, attrs: dict[int, Any] | None = None) -> int:
        requested = msg.get(Attr.LIFETIME) if attrs is None else attrs.get(Attr.LIFETIME)
        if requested is None:
            return self.config.default_lifetime
        requested = int(requested)
        if requested == 0:
            return 0
        return max(self.config.default_lifetime, min(requested, self.config.max_lifetime))

    def _allocate(
        self,
        key: Any,
        client: Any,
        addr: Address,
        stream: bool,
        msg: Message,
        ident: Identity | None,
        now: float,
        attrs: dict[int, Any],
    ) -> list[Action]:
        existing = self.allocations.get(key)
        if existing is not None:
            cached = existing.last_request
            if cached is not None and cached[0] == msg.transaction_id:
                return [Reply(cached[1])]  # a retransmission: same answer again
            return self._fail(msg, 437, "Allocation Mismatch", ident)
        if key in self.pending:
            return []
        get = attrs.get
        transport = get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            return self._fail(msg, 400, "Bad Request: REQUESTED-TRANSPORT missing", ident)
        if transport != UDP:
            return self._fail(msg, 442, "Unsupported Transport Protocol", ident)
        even = get(Attr.EVEN_PORT)
        token = get(Attr.RESERVATION_TOKEN)
        requested_family = get(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        if additional is None:
            legacy = get(_LEGACY_ADDITIONAL_FAMILY)
            if isinstance(legacy, bytes) and len(legacy) == 4:
                additional = legacy[0]
        if token is not None and (even is not None or requested_family is not None):
            return self._fail(
                msg, 400, "Bad Request: RESERVATION-TOKEN with EVEN-PORT or family", ident
            )
        if requested_family is not None and additional is not None:
            return self._fail(msg, 400, "Bad Request: both address family attributes", ident)
        if additional is not None and additional != IPV6:
            return self._fail(
                msg, 400, "Bad Request: ADDITIONAL-ADDRESS-FAMILY must be IPv6", ident
            )
        if requested_family is not None and requested_family not in _FAMILY_OF_CODE:
            return self._fail(msg, 440, "Address Family not Supported", ident)
        family = _FAMILY_OF_CODE[requested_family] if requested_family else 4
        if family not in self.config.families:
            return self._fail(msg, 440, "Address Family not Supported", ident)
        families: tuple[int, ...] = (family,)
        missing: tuple[int, ...] = ()
        if additional is not None:
            if 6 in self.config.families:
                families = (4, 6)
            else:
                missing = (6,)
        user = ident.account if ident is not None else None
        refused = self.quota.acquire(user, addr)
        if refused is not None:
            self.stats.quota_refusals += 1
            log.info("event=quota_refused client=%s user=%r reason=%r", _fmt(addr), user, refused)
            return self._fail(msg, 486, "Allocation Quota Reached", ident)
        lifetime = self._lifetime(msg, attrs) or self.config.default_lifetime
        pending = BindRelays(
            key,
            client,
            addr,
            stream,
            msg,
            ident,
            families,
            even_port=even is not None,
            reserve_next=bool(even),
            lifetime=lifetime,
            dont_fragment=Attr.DONT_FRAGMENT in attrs,
            missing=missing,
        )
        if token is not None:
            reservation = self.reservations.pop(bytes(token), None)
            if reservation is None or reservation.expires <= now:
                self.quota.release(user, addr)
                if reservation is not None:
                    r = reservation.relay
                    gone: list[Action] = []
                    self._untrack(r, gone)
                    return [
                        *gone,
                        CloseRelay(r.handle, r.address),
                        Reply(self._error(msg, 508, "Insufficient Capacity", ident)),
                    ]
                return self._fail(
                    msg, 508, "Insufficient Capacity: unknown RESERVATION-TOKEN", ident
                )
            pending.families = (reservation.relay.family,)
            out: list[Action] = []
            reply = Reply(self._create(pending, [reservation.relay], [], None, now, out))
            return [*out, reply]
        self.pending.add(key)
        return [pending]

    def _create(
        self,
        pending: BindRelays,
        relays: list[Relay],
        missing: list[int],
        token: bytes | None,
        now: float,
        out: list[Action],
    ) -> bytes:
        ident = pending.identity
        allocation = Allocation(
            pending.key,
            pending.client,
            pending.client_addr,
            pending.stream,
            ident.username if ident else "",
            ident.account if ident else "",
            relays,
            now,
            pending.lifetime,
        )
        allocation.dont_fragment = pending.dont_fragment
        allocation.rest_expires = ident.expires if ident else None
        if self.config.bandwidth:
            allocation.bucket = [float(self.config.bandwidth), now]
        for relay in relays:
            relay.allocation = allocation
            self._track(relay, out)
        self.allocations[pending.key] = allocation
        self.stats.allocations_created += 1
        if self.offload_eager and not pending.stream:
            self._offload_peers(allocation, set(), out)
        msg = pending.request
        if not missing and token is None and ident is not None and not self.config.software:
            quick = allocate_success(msg, relays, pending.lifetime, pending.client_addr, ident.key)
            if quick is not None:
                allocation.last_request = (msg.transaction_id, quick)
                if log.isEnabledFor(logging.DEBUG):
                    self._log_created(pending, allocation, token)
                return quick
        resp = msg.response()
        for relay in relays:
            resp.add(Attr.XOR_RELAYED_ADDRESS, relay.advertised)
        for family in missing:
            resp.add(
                Attr.ADDRESS_ERROR_CODE,
                AddressErrorCode(_CODE_OF_FAMILY[family], 440, "Address Family not Supported"),
            )
        resp.add(Attr.LIFETIME, pending.lifetime)
        if token is not None:
            resp.add(Attr.RESERVATION_TOKEN, token)
        resp.add(Attr.XOR_MAPPED_ADDRESS, pending.client_addr)
        data = self._encode(msg, resp, ident)
        allocation.last_request = (msg.transaction_id, data)
        if log.isEnabledFor(logging.DEBUG):  # the lifecycle log; the adapter sums it up at info
            self._log_created(pending, allocation, token)
        return data

    @staticmethod
    def _log_created(pending: BindRelays, allocation: Allocation, token: bytes | None) -> None:
        log.debug(
            "event=allocation_created client=%s transport=%s user=%r relay=%s lifetime=%d%s",
            _fmt(pending.client_addr),
            "stream" if pending.stream else "udp",
            allocation.username,
            ",".join(_fmt(r.advertised) for r in allocation.relays),
            pending.lifetime,
            " reservation=yes" if token else "",
        )

    def _refresh(
        self, allocation: Allocation, msg: Message, ident: Identity | None, now: float
    ) -> list[Action]:
        requested_family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if (
            requested_family is not None
            and allocation.relay_for(_FAMILY_OF_CODE.get(requested_family, 0)) is None
        ):
            return self._fail(msg, 443, "Peer Address Family Mismatch", ident)
        lifetime = self._lifetime(msg)
        resp = msg.response().add(Attr.LIFETIME, lifetime)
        reply = Reply(self._encode(msg, resp, ident))
        if lifetime == 0:
            return [reply, *self._delete(allocation, "refreshed with lifetime 0")]
        allocation.expires = now + lifetime
        if ident is not None:
            allocation.rest_expires = ident.expires
        return [reply]

    def _delete(self, allocation: Allocation, why: str, *, count: bool = True) -> list[Action]:
        if self.allocations.pop(allocation.key, None) is None:
            return []
        if count:
            self.stats.allocations_deleted += 1
        user = allocation.account if self.requires_auth else None
        self.quota.release(user, allocation.client_addr)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event=allocation_deleted client=%s user=%r relay=%s reason=%r",
                _fmt(allocation.client_addr),
                allocation.username,
                ",".join(_fmt(r.advertised) for r in allocation.relays),
                why,
            )
        actions: list[Action] = []
        self._dirty.pop(allocation.key, None)
        if allocation.offloaded:
            actions.append(OffloadWithdraw(allocation.key))
        for relay in allocation.relays:
            relay.allocation = None
            self._untrack(relay, actions)
            actions.append(CloseRelay(relay.handle, relay.address))
        return actions

    # ---- permissions and channels ----------------------------------------------------------

    def _check_peer(
        self, allocation: Allocation, msg: Message, peer: Address, ident: Identity | None
    ) -> bytes | Relay:
        """The relay serving ``peer``, or an error response (403 / 443)."""
        refused = self.own.refuse(peer, self._relay_addrs) or self.peer_policy.refuse(peer)
        if refused is not None:
            stats = self.stats
            stats.refused_peers += 1
            label = reason_label(refused)
            stats.refused_by_reason[label] = stats.refused_by_reason.get(label, 0) + 1
            log.info(
                "event=peer_refused client=%s peer=%s reason=%r",
                _fmt(allocation.client_addr),
                _fmt(peer),
                refused,
            )
            return self._error(msg, 403, "Forbidden: peer address not allowed", ident)
        relay = allocation.relay_for(6 if ":" in peer[0] else 4)
        if relay is None:
            return self._error(msg, 443, "Peer Address Family Mismatch", ident)
        return relay

    def _create_permission(
        self, allocation: Allocation, msg: Message, ident: Identity | None, now: float
    ) -> list[Action]:
        peers = msg.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            return self._fail(msg, 400, "Bad Request: XOR-PEER-ADDRESS missing", ident)
        for peer in peers:
            checked = self._check_peer(allocation, msg, peer, ident)
            if isinstance(checked, bytes):
                return [Reply(checked)]  # all or nothing (RFC 8656 §9.2)
        actions: list[Action] = []
        ips = {p[0] for p in peers}
        fresh = ips - set(allocation.perms or ())
        if fresh and len(allocation.perms or ()) + len(fresh) > self.config.max_permissions:
            self._sweep(allocation, now, actions)
            if len(allocation.perms or ()) + len(fresh) > self.config.max_permissions:
                self.stats.quota_refusals += 1
                err = self._error(msg, 508, "Insufficient Capacity: too many permissions", ident)
                return [*actions, Reply(err)]
        until = now + self.config.permission_lifetime
        for ip in ips:
            allocation.permit(ip, until)
            if self.own.owns(ip):
                self._own_permitted.add(ip)
        self.stats.permissions_created += len(fresh)
        self._offload_peers(allocation, ips, actions)
        actions.append(Reply(self._encode(msg, msg.response(), ident)))
        return actions

    def _channel_bind(
        self, allocation: Allocation, msg: Message, ident: Identity | None, now: float
    ) -> list[Action]:
        number, peer = msg.get(Attr.CHANNEL_NUMBER), msg.get(Attr.XOR_PEER_ADDRESS)
        if number is None or peer is None:
            return self._fail(
                msg, 400, "Bad Request: CHANNEL-NUMBER and XOR-PEER-ADDRESS needed", ident
            )
        if not CHANNEL_MIN <= number <= self.channel_max:
            return self._fail(msg, 400, "Bad Request: channel number out of range", ident)
        checked = self._check_peer(allocation, msg, peer, ident)
        if isinstance(checked, bytes):
            return [Reply(checked)]
        peer = (peer[0], peer[1])
        channels = allocation.channels or {}
        bound = channels.get(number)
        if bound is not None and bound.peer != peer and bound.expires > now:
            return self._fail(msg, 400, "Bad Request: channel bound to another peer", ident)
        other = (allocation.peer_channels or {}).get(peer)
        if other is not None and other.number != number and other.expires > now:
            return self._fail(msg, 400, "Bad Request: peer bound to another channel", ident)
        tomb = allocation.expired_channels
        if tomb:
            was = tomb.get(number)
            if was is not None and was[0] != peer and was[1] > now:
                return self._fail(msg, 400, "Bad Request: channel recently bound elsewhere", ident)
            was = tomb.get(peer)
            if was is not None and was[0] != number and was[1] > now:
                return self._fail(msg, 400, "Bad Request: peer recently bound elsewhere", ident)
        actions: list[Action] = []
        if (
            not allocation.permitted(peer[0], now)
            and len(allocation.perms or ()) >= self.config.max_permissions
        ):
            self._sweep(allocation, now, actions)
            if len(allocation.perms or ()) >= self.config.max_permissions:
                err = self._error(msg, 508, "Insufficient Capacity: too many permissions", ident)
                return [*actions, Reply(err)]
        if bound is not None and bound.peer == peer:
            bound.expires = now + self.config.channel_lifetime
            channel = bound
        else:
            # expired bindings not yet swept give way to the new one
            for stale in (bound, other):
                if stale is not None:
                    allocation.unbind(stale)
                    self._withdraw_channel(allocation, stale, actions)
            if len(allocation.channels or ()) >= self.config.max_channels:
                self._sweep(allocation, now, actions)
                if len(allocation.channels or ()) >= self.config.max_channels:
                    self.stats.quota_refusals += 1
                    err = self._error(msg, 508, "Insufficient Capacity: too many channels", ident)
                    return [*actions, Reply(err)]
            channel = Channel(number, peer, checked, now + self.config.channel_lifetime)
            allocation.bind(channel)
            self.stats.channels_created += 1
        perms = allocation.perms or {}
        until = now + self.config.permission_lifetime
        if perms.get(peer[0], 0.0) < until:
            if peer[0] not in perms:
                self.stats.permissions_created += 1
            allocation.permit(peer[0], until)
        if self.own.owns(peer[0]):
            self._own_permitted.add(peer[0])
            own_key = (self._canon(peer[0]), peer[1])
            self._own_channels.setdefault(own_key, []).append((allocation, channel))
        self._offload_peers(allocation, {peer[0]}, actions, channel)
        actions.append(Reply(self._encode(msg, msg.response(), ident)))
        return actions

    # ---- offload events (natkit.turn.actions) ----------------------------------------------

    def _offload_peers(
        self,
        allocation: Allocation,
        ips: set[str],
        out: list[Action],
        channel: Channel | None = None,
    ) -> None:
        """The entries for ``ips`` after their permission changed, and for ``channel`` (the
        one a ChannelBind touched). An IP that has other channels keeps its old entries until
        the next :meth:`tick` renews the permission and all its channels at once: a request
        costs the same however many channels exist, and a table never holds a live permission
        beside a stale channel entry of that IP (it would frame the peer's data as a Data
        indication where the engine uses the channel)."""
        if (
            not self.offload
            or (allocation.stream and not self.offload_streams)
            or allocation.bucket is not None
        ):
            return  # a fast table could not apply the cap (nor frame a stream it cannot read)
        key = allocation.key
        if not allocation.offloaded:
            allocation.offloaded = True
            out.append(OffloadAllocation(key, tuple(allocation.relays)))
        ip_channels = allocation.ip_channels
        for ip in ips:
            others = ip_channels.get(ip) if ip_channels else None
            if others and (channel is None or len(others) > 1):
                self._dirty.setdefault(key, set()).add(ip)
            else:
                self._offload_permission(allocation, ip, out)
        if channel is not None:
            until = allocation.peer_until(channel)
            out.append(self._channel_entry(key, channel, until))

    def _channel_entry(self, key: ClientKey, channel: Channel, until: float) -> OffloadChannel:
        internal = self._internal
        target = internal.get(channel.peer) if internal is not None else None
        return OffloadChannel(key, channel.number, channel.relay, channel.peer, until, target)

    def _offload_permission(self, allocation: Allocation, ip: str, out: list[Action]) -> None:
        perms = allocation.perms
        own = self._own_permitted
        if not perms or ip not in perms or (own and ip in own):
            return  # an own IP (reopened by an explicit allow) is checked per packet
        relay = allocation.relay_for(6 if ":" in ip else 4)
        if relay is not None:
            out.append(OffloadPermission(allocation.key, relay, ip, perms[ip]))

    def _renew_channels(self, now: float, out: list[Action]) -> None:
        """The entries of IPs whose permission grew while they had several channels."""
        dirty, self._dirty = self._dirty, {}
        for key, ips in dirty.items():
            allocation = self.allocations.get(key)
            if allocation is None or not allocation.offloaded:
                continue
            for ip in ips:
                self._offload_permission(allocation, ip, out)
                for channel in allocation.channels_to(ip):
                    until = allocation.peer_until(channel)
                    if until > now:
                        out.append(self._channel_entry(key, channel, until))

    # ---- the relay's own addresses ---------------------------------------------------------

    def _canon(self, ip: str) -> str:
        canonical = self._canonical.get(ip)
        if canonical is None:
            try:
                canonical = str(canonical_peer(ip))
            except PeerAddressError:
                canonical = ip
            if len(self._canonical) >= 4096:
                self._canonical.clear()
            self._canonical[ip] = canonical
        return canonical

    def _track(self, relay: Relay, out: list[Action]) -> None:
        """A relay (or reservation) exists: its addresses are the relay's own from now on, and
        a channel an earlier client bound to one of them is void."""
        for ip, port in (relay.address, relay.advertised):
            self.own.add(ip)
            for addr in ((ip, port), (self._canon(ip), port)):
                self._relay_addrs.add(addr)
                self._relay_of[addr] = relay
                for allocation, channel in self._own_channels.pop(addr, ()):
                    if self.allocations.get(allocation.key) is not allocation:
                        continue
                    if allocation.channels and allocation.channels.get(channel.number) is channel:
                        allocation.unbind(channel)
                        self._withdraw_channel(allocation, channel, out)

    def _untrack(self, relay: Relay, out: list[Action]) -> None:
        """A relay (or reservation) ends: its addresses are no peer's any more, and a fast
        table's relay-to-relay entries toward it become plain ones (to the network address,
        where nothing listens now), before the adapter closes its socket."""
        for ip, port in (relay.address, relay.advertised):
            for addr in ((ip, port), (self._canon(ip), port)):
                self._relay_addrs.discard(addr)
                if self._relay_of.get(addr) is relay:
                    del self._relay_of[addr]
                if not self.offload:
                    continue
                for allocation, channel in self._own_channels.get(addr, ()):
                    if (
                        allocation.offloaded
                        and self.allocations.get(allocation.key) is allocation
                        and allocation.channels
                        and allocation.channels.get(channel.number) is channel
                    ):
                        until = allocation.peer_until(channel)
                        out.append(
                            OffloadChannel(
                                allocation.key, channel.number, channel.relay, channel.peer, until
                            )
                        )

    def _is_self(self, peer: Address) -> bool:
        """True when ``peer`` (an own IP reopened by an allow) is a port the relay serves."""
        return self.own.refuse((peer[0], peer[1]), self._relay_addrs) is not None

    def _prune_own_channels(self) -> None:
        for addr in list(self._own_channels):
            live = [
                (a, c)
                for a, c in self._own_channels[addr]
                if self.allocations.get(a.key) is a and a.channels and a.channels.get(c.number) is c
            ]
            if live:
                self._own_channels[addr] = live
            else:
                del self._own_channels[addr]

    def _withdraw_channel(
        self, allocation: Allocation, channel: Channel, out: list[Action]
    ) -> None:
        if allocation.offloaded:
            out.append(
                OffloadChannel(allocation.key, channel.number, channel.relay, channel.peer, None)
            )

    def _sweep(self, allocation: Allocation, now: float, out: list[Action]) -> None:
        """Drop expired permissions and channels, and their entries in a fast table."""
        ips, channels = allocation.expire(now)
        if not allocation.offloaded:
            return
        for ip in ips:
            relay = allocation.relay_for(6 if ":" in ip else 4)
            if relay is not None:
                out.append(OffloadPermission(allocation.key, relay, ip, None))
        for channel in channels:
            self._withdraw_channel(allocation, channel, out)

    # ---- data ------------------------------------------------------------------------------

    def _send_indication(self, key: Any, msg: Message, now: float) -> list[Action]:
        allocation = self.allocations.get(key)
        peer, data = msg.get(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)
        if allocation is None or peer is None or data is None:
            self.stats.dropped_packets += 1
            return []
        relay = allocation.relay_for(6 if ":" in peer[0] else 4)
        own = self._own_permitted
        if (
            relay is None
            or not allocation.permitted(peer[0], now)
            or (own and peer[0] in own and self._is_self(peer))
            or not self._spend(allocation, len(data), now)
        ):
            self.stats.dropped_packets += 1
            return []
        internal = self._internal
        if internal is not None:
            target = internal.get((peer[0], peer[1]))
            if target is not None:
                out = self._relay_to_relay(relay, target, data, now)
                return [] if out is None else [out]
        self.stats.to_peer_packets += 1
        self.stats.to_peer_bytes += len(data)
        return [SendToPeer(relay.handle, data, (peer[0], peer[1]), Attr.DONT_FRAGMENT in msg)]

    # ---- encoding --------------------------------------------------------------------------

    def _fail(self, msg: Message, code: int, reason: str, ident: Identity | None) -> list[Action]:
        return [Reply(self._error(msg, code, reason, ident))]

    def _error(self, msg: Message, code: int, reason: str, ident: Identity | None) -> bytes:
        if ident is None and self._source is not None:
            self._budget_reply(self._now_hint)
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        return self._encode(msg, msg.error(code, reason), ident)

    def _encode(self, request: Message, resp: Message, ident: Identity | None) -> bytes:
        if self.config.software:
            resp.add(Attr.SOFTWARE, self.config.software)
        tail = tail_types(request)
        fingerprint = Attr.FINGERPRINT in tail
        if ident is None:
            return resp.encode(fingerprint=fingerprint)
        integrity = "sha256" if Attr.MESSAGE_INTEGRITY_SHA256 in tail else "sha1"
        return resp.encode(key=ident.key, integrity=integrity, fingerprint=fingerprint)


def _first_values(msg: Message) -> dict[int, Any]:
    """Attribute type -> its first value: one pass instead of a scan per lookup."""
    first: dict[int, Any] = {}
    for attr_type, value in msg.attributes:
        if attr_type not in first:
            first[attr_type] = value
    return first


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
