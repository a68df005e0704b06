"""The TURN server state machine (RFC 8656), sans-IO.

The adapter feeds it what arrives (bytes, who sent it, the time) and carries out what it
returns: replies to the client, datagrams to peers, relay sockets to open or close. Allocation
needs sockets, so it is two-phase: :meth:`TurnEngine.handle_client` returns a
:class:`BindRelays` action, the adapter binds the relay sockets and hands them to
:meth:`TurnEngine.complete_allocate`, which answers the client.
"""

from __future__ import annotations

import hmac
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from natkit.stun import (
    AddressErrorCode,
    Attr,
    Class,
    ErrorCode,
    Message,
    Method,
    PasswordAlgorithm,
    StunParseError,
    decode,
    message_type,
    verify_integrity,
)
from natkit.stun.attributes import CODECS
from natkit.turn.allocation import (
    CHANNEL_MAX,
    CHANNEL_MAX_RFC5766,
    CHANNEL_MIN,
    Address,
    Allocation,
    Channel,
    Relay,
)
from natkit.turn.auth import Credentials, FailureLimiter, Identity, NonceIssuer
from natkit.turn.policy import PeerPolicy

log = logging.getLogger("natkit.turn")

UDP = 17
IPV4, IPV6 = 1, 2  # REQUESTED-/ADDITIONAL-ADDRESS-FAMILY values
_FAMILY_OF_CODE = {IPV4: 4, IPV6: 6}
_CODE_OF_FAMILY = {4: IPV4, 6: IPV6}
_ALGORITHMS = (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256)
_AUTH_METHODS = frozenset(
    {Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND}
)
_CD_HEADER = struct.Struct("!HH")
_HEADER = struct.Struct("!HH")
_FINGERPRINT = struct.Struct("!HHI")
_FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
_COOKIE = b"\x21\x12\xa4\x42"
#: request message types of the methods that need credentials -> method
_QUICK_TYPES = {message_type(m, Class.REQUEST): m for m in _AUTH_METHODS}
#: (type, length) of the attributes a credential-less request may carry for the quick 401
_QUICK_ATTRS = {
    (Attr.REQUESTED_TRANSPORT, 4): 1,
    (Attr.LIFETIME, 4): 2,
    (Attr.DONT_FRAGMENT, 0): 4,
}


@dataclass(slots=True)
class TurnConfig:
    """Protocol parameters and limits. Times in seconds."""

    realm: str = "natkit"
    auth: bool = True
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    nonce_lifetime: int = 600
    reservation_lifetime: int = 30
    #: relay address families the server can offer (4 and/or 6)
    families: frozenset[int] = frozenset({4})
    max_allocations: int | None = None
    user_quota: int | None = None
    max_permissions: int = 1000
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
    quota_refusals: int = 0
    bad_packets: int = 0
    to_peer_packets: int = 0
    to_peer_bytes: int = 0
    to_client_packets: int = 0
    to_client_bytes: int = 0
    dropped_packets: int = 0
    errors: dict[int, int] = field(default_factory=dict)


# ---- actions -------------------------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    """Send ``data`` to the client the request came from."""

    data: bytes


@dataclass(slots=True)
class SendToPeer:
    """Send ``data`` from the relay socket ``handle`` to ``peer``."""

    handle: Any
    data: bytes
    peer: Address
    dont_fragment: bool = False


@dataclass(slots=True)
class CloseRelay:
    """Close the relay socket ``handle`` (its allocation or reservation ended)."""

    handle: Any
    address: Address


@dataclass(slots=True)
class BindRelays:
    """Bind relay sockets, then call :meth:`TurnEngine.complete_allocate` with this object."""

    key: Any
    client: Any
    client_addr: Address
    stream: bool
    request: Message
    identity: Identity | None
    families: tuple[int, ...]  # 4 / 6, the first one is required
    even_port: bool
    reserve_next: bool
    lifetime: int
    dont_fragment: bool
    #: families that were asked for but the server cannot offer (ADDRESS-ERROR-CODE 440)
    missing: tuple[int, ...] = ()


Action = Reply | SendToPeer | CloseRelay | BindRelays


class _Reservation:
    __slots__ = ("expires", "relay")

    def __init__(self, relay: Relay, expires: float) -> None:
        self.relay = relay
        self.expires = expires


class TurnEngine:
    """All allocations of one server and the rules that govern them."""

    def __init__(
        self,
        config: TurnConfig | None = None,
        credentials: Credentials | None = None,
        policy: PeerPolicy | None = None,
        *,
        nonce_secret: bytes | None = None,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self.config = config or TurnConfig()
        self.credentials = credentials or Credentials(self.config.realm)
        self.policy = policy or PeerPolicy()
        self.nonces = NonceIssuer(self.config.nonce_lifetime, nonce_secret)
        self.limiter = limiter or FailureLimiter()
        self.allocations: dict[Any, Allocation] = {}
        self.per_account: dict[str, int] = {}
        self.reservations: dict[bytes, _Reservation] = {}
        self.pending: set[Any] = set()
        self.stats = Stats()
        self._last_sweep = 0.0
        self._challenges: dict[tuple[int, int, str, str], bytes] = {}

    # ---- entry points ----------------------------------------------------------------------

    def handle_client(
        self, client: Any, addr: Address, data: bytes, now: float, *, stream: bool = False
    ) -> list[Action]:
        """A datagram (UDP) or frame (TCP/TLS) from a client at ``addr`` via ``client``."""
        if not data:
            return []
        first = data[0]
        if 0x40 <= first <= 0x7F:
            return self._channel_from_client((client, addr), data, now)
        if first > 0x3F:
            self.stats.bad_packets += 1
            return []
        if self.config.auth:
            challenge = self._quick_challenge(data, addr[0], now)
            if challenge is not None:
                return challenge
        try:
            msg = decode(data)
        except StunParseError:
            self.stats.bad_packets += 1
            return []
        try:
            return self._dispatch(client, addr, stream, msg, now)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, StunParseError):
            # A request whose attributes decode but make no sense together; never fatal.
            self.stats.bad_packets += 1
            log.debug("event=bad_request client=%s:%s", addr[0], addr[1], exc_info=True)
            if msg.cls == Class.REQUEST:
                return [Reply(self._encode(msg, msg.error(400, "Bad Request"), None))]
            return []

    def handle_peer(
        self, allocation: Allocation, relay: Relay, data: bytes, peer: Address, now: float
    ) -> bytes | None:
        """A datagram from ``peer`` on ``relay``: bytes for the client, or None to drop it."""
        perms = allocation.perms
        expiry = perms.get(peer[0]) if perms else None
        if expiry is None or expiry <= now:
            self.stats.dropped_packets += 1
            return None
        if allocation.bucket is not None and not self._spend(allocation, len(data), now):
            self.stats.dropped_packets += 1
            return None
        self.stats.to_client_packets += 1
        self.stats.to_client_bytes += len(data)
        channels = allocation.peer_channels
        channel = channels.get(peer) if channels else None
        if channel is not None and channel.expires > now and channel.relay is relay:
            return channel_data(channel.number, data, allocation.stream)
        indication = Message(Method.DATA, Class.INDICATION)
        indication.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data)
        return indication.encode()

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
        if not relays or relays[0].family != pending.families[0]:
            actions: list[Action] = [CloseRelay(r.handle, r.address) for r in relays]
            if reserved is not None:
                actions.append(CloseRelay(reserved.handle, reserved.address))
            actions.append(Reply(self._error(msg, 508, "Insufficient Capacity", ident)))
            return actions
        if pending.key in self.allocations:  # raced with another Allocate; keep the first
            closes: list[Action] = [CloseRelay(r.handle, r.address) for r in relays]
            if reserved is not None:
                closes.append(CloseRelay(reserved.handle, reserved.address))
            return [*closes, Reply(self._error(msg, 437, "Allocation Mismatch", ident))]
        missing = list(pending.missing)
        got = {r.family for r in relays}
        missing += [f for f in pending.families if f not in got and f not in missing]
        token = None
        if reserved is not None:
            token = os.urandom(8)
            self.reservations[token] = _Reservation(
                reserved, now + self.config.reservation_lifetime
            )
        return [Reply(self._create(pending, relays, missing, token, now))]

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
            actions.append(CloseRelay(relay.handle, relay.address))
        if now - self._last_sweep >= 10:
            self._last_sweep = now
            for allocation in self.allocations.values():
                if allocation.perms or allocation.channels or allocation.expired_channels:
                    allocation.expire(now)
            self.limiter.prune(now)
        return actions

    def close_all(self) -> list[Action]:
        """Everything the adapter must close on shutdown."""
        actions: list[Action] = []
        for allocation in list(self.allocations.values()):
            actions += self._delete(allocation, "server shutdown")
        for reservation in self.reservations.values():
            actions.append(CloseRelay(reservation.relay.handle, reservation.relay.address))
        self.reservations.clear()
        return actions

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
        if method not in _AUTH_METHODS:
            return self._fail(msg, 400, "Bad Request: unsupported method", None)
        attrs = _first_values(msg)
        unknown = tuple(t for t in attrs if t < 0x8000 and t not in CODECS)
        if unknown:
            err = msg.error(420, "Unknown Attribute").add(Attr.UNKNOWN_ATTRIBUTES, unknown)
            return [Reply(self._encode(msg, err, None))]
        identity = self._authenticate(msg, addr[0], now, attrs)
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
            return [Reply(self._create_permission(allocation, msg, identity, now))]
        return [Reply(self._channel_bind(allocation, msg, identity, now))]

    # ---- authentication --------------------------------------------------------------------

    def _quick_challenge(self, data: bytes, ip: str, now: float) -> list[Action] | None:
        """The 401 for a plain first request (no credentials yet: the first half of every
        Allocate), answered without decoding it; None when the full path must look at it.
        Only requests whose every attribute is one the full path would accept unchanged
        (REQUESTED-TRANSPORT, LIFETIME, DONT-FRAGMENT, each once, well formed) qualify, so
        the answer is the one the full path gives."""
        n = len(data)
        if n < 20 or n > 20 + 36:
            return None
        mtype, length = _HEADER.unpack_from(data)
        if (
            mtype not in _QUICK_TYPES
            or 20 + length != n
            or data[4:8] != _COOKIE
            or self.limiter.blocked(ip, now)  # let the full path count and drop it
        ):
            return None
        seen = 0
        pos = 20
        while pos < n:
            if pos + 4 > n:
                return None
            attr_type, alen = _HEADER.unpack_from(data, pos)
            bit = _QUICK_ATTRS.get((attr_type, alen))
            if bit is None or seen & bit:
                return None
            seen |= bit
            pos += 4 + alen
        if pos != n:
            return None
        method = _QUICK_TYPES[mtype]
        return [
            Reply(self._challenge_bytes(method, data[8:20], False, 401, "Unauthorized", ip, now))
        ]

    def _challenge(self, msg: Message, code: int, reason: str, ip: str, now: float) -> bytes:
        if msg.legacy:
            err = msg.error(code, reason)
            err.add(Attr.REALM, self.config.realm).add(Attr.NONCE, self.nonces.issue(ip, now))
            err.add(Attr.PASSWORD_ALGORITHMS, _ALGORITHMS)
            return self._encode(msg, err, None)
        fingerprint = Attr.FINGERPRINT in msg
        return self._challenge_bytes(
            msg.method, msg.transaction_id, fingerprint, code, reason, ip, now
        )

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
        head = _HEADER.pack(_HEADER.unpack_from(template)[0], len(body) + 8) + head[4:]
        crc = zlib.crc32(head + body) ^ _FINGERPRINT_XOR
        return head + body + _FINGERPRINT.pack(Attr.FINGERPRINT, 4, crc)

    def _authenticate(
        self, msg: Message, ip: str, now: float, attrs: dict[int, Any]
    ) -> Identity | list[Action] | None:
        if not self.config.auth:
            return None
        if self.limiter.blocked(ip, now):
            self.stats.auth_blocked += 1
            return []  # silently dropped: this source failed too often
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
            return self._auth_failed(msg, ip, now, f"wrong realm {realm!r}")
        candidates = self.credentials.candidates(username, algorithm, now)
        if isinstance(candidates, str):
            return self._auth_failed(msg, ip, now, candidates, username)
        for identity in candidates:
            if verify_integrity(msg, identity.key):
                return identity
        return self._auth_failed(msg, ip, now, "bad integrity", username)

    def _auth_failed(
        self, msg: Message, ip: str, now: float, why: str, username: str = ""
    ) -> list[Action]:
        self.stats.auth_failures += 1
        self.limiter.failure(ip, now)
        log.info("event=auth_failed source=%s user=%r reason=%r", ip, username, why)
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
        if self.config.max_allocations is not None and (
            len(self.allocations) + len(self.pending) >= self.config.max_allocations
        ):
            self.stats.quota_refusals += 1
            return self._fail(msg, 486, "Allocation Quota Reached", ident)
        account = ident.account if ident is not None else ""
        if (
            ident is not None
            and self.config.user_quota is not None
            and self.per_account.get(account, 0) >= self.config.user_quota
        ):
            self.stats.quota_refusals += 1
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
                if reservation is not None:
                    r = reservation.relay
                    return [
                        CloseRelay(r.handle, r.address),
                        Reply(self._error(msg, 508, "Insufficient Capacity", ident)),
                    ]
                return self._fail(
                    msg, 508, "Insufficient Capacity: unknown RESERVATION-TOKEN", ident
                )
            pending.families = (reservation.relay.family,)
            return [Reply(self._create(pending, [reservation.relay], [], None, now))]
        self.pending.add(key)
        return [pending]

    def _create(
        self,
        pending: BindRelays,
        relays: list[Relay],
        missing: list[int],
        token: bytes | None,
        now: float,
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
        self.allocations[pending.key] = allocation
        self.per_account[allocation.account] = self.per_account.get(allocation.account, 0) + 1
        self.stats.allocations_created += 1
        msg = pending.request
        if not missing and token is None and ident is not None and not self.config.software:
            quick = _allocate_success(msg, relays, pending.lifetime, pending.client_addr, ident.key)
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
        left = self.per_account.get(allocation.account, 1) - 1
        if left > 0:
            self.per_account[allocation.account] = left
        else:
            self.per_account.pop(allocation.account, None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event=allocation_deleted client=%s user=%r relay=%s reason=%r",
                _fmt(allocation.client_addr),
                allocation.username,
                ",".join(_fmt(r.advertised) for r in allocation.relays),
                why,
            )
        return [CloseRelay(r.handle, r.address) for r in allocation.relays]

    # ---- permissions and channels ----------------------------------------------------------

    def _check_peer(
        self, allocation: Allocation, msg: Message, peer: Address, ident: Identity | None
    ) -> bytes | Relay:
        """The relay serving ``peer``, or an error response (403 / 443)."""
        if not self.policy.permits(peer[0]):
            self.stats.refused_peers += 1
            log.info(
                "event=peer_refused client=%s peer=%s", _fmt(allocation.client_addr), _fmt(peer)
            )
            return self._error(msg, 403, "Forbidden: peer address not allowed", ident)
        relay = allocation.relay_for(6 if ":" in peer[0] else 4)
        if relay is None:
            return self._error(msg, 443, "Peer Address Family Mismatch", ident)
        return relay

    def _create_permission(
        self, allocation: Allocation, msg: Message, ident: Identity | None, now: float
    ) -> bytes:
        peers = msg.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            return self._error(msg, 400, "Bad Request: XOR-PEER-ADDRESS missing", ident)
        for peer in peers:
            checked = self._check_peer(allocation, msg, peer, ident)
            if isinstance(checked, bytes):
                return checked  # all or nothing (RFC 8656 §9.2)
        fresh = {p[0] for p in peers} - set(allocation.perms or ())
        if fresh and len(allocation.perms or ()) + len(fresh) > self.config.max_permissions:
            allocation.expire(now)
            if len(allocation.perms or ()) + len(fresh) > self.config.max_permissions:
                self.stats.quota_refusals += 1
                return self._error(msg, 508, "Insufficient Capacity: too many permissions", ident)
        until = now + self.config.permission_lifetime
        for peer in peers:
            allocation.permit(peer[0], until)
        self.stats.permissions_created += len(fresh)
        return self._encode(msg, msg.response(), ident)

    def _channel_bind(
        self, allocation: Allocation, msg: Message, ident: Identity | None, now: float
    ) -> bytes:
        number, peer = msg.get(Attr.CHANNEL_NUMBER), msg.get(Attr.XOR_PEER_ADDRESS)
        if number is None or peer is None:
            return self._error(
                msg, 400, "Bad Request: CHANNEL-NUMBER and XOR-PEER-ADDRESS needed", ident
            )
        top = CHANNEL_MAX if self.config.strict_channels else CHANNEL_MAX_RFC5766
        if not CHANNEL_MIN <= number <= top:
            return self._error(msg, 400, "Bad Request: channel number out of range", ident)
        checked = self._check_peer(allocation, msg, peer, ident)
        if isinstance(checked, bytes):
            return checked
        peer = (peer[0], peer[1])
        channels = allocation.channels or {}
        bound = channels.get(number)
        if bound is not None and bound.peer != peer and bound.expires > now:
            return self._error(msg, 400, "Bad Request: channel bound to another peer", ident)
        other = (allocation.peer_channels or {}).get(peer)
        if other is not None and other.number != number and other.expires > now:
            return self._error(msg, 400, "Bad Request: peer bound to another channel", ident)
        tomb = allocation.expired_channels
        if tomb:
            was = tomb.get(number)
            if was is not None and was[0] != peer and was[1] > now:
                return self._error(msg, 400, "Bad Request: channel recently bound elsewhere", ident)
            was = tomb.get(peer)
            if was is not None and was[0] != number and was[1] > now:
                return self._error(msg, 400, "Bad Request: peer recently bound elsewhere", ident)
        if (
            not allocation.permitted(peer[0], now)
            and len(allocation.perms or ()) >= self.config.max_permissions
        ):
            allocation.expire(now)
            if len(allocation.perms or ()) >= self.config.max_permissions:
                return self._error(msg, 508, "Insufficient Capacity: too many permissions", ident)
        if bound is not None and bound.peer == peer:
            bound.expires = now + self.config.channel_lifetime
        else:
            if bound is not None:  # an expired binding not yet swept
                (allocation.peer_channels or {}).pop(bound.peer, None)
            if other is not None:
                channels.pop(other.number, None)
            allocation.bind(Channel(number, peer, checked, now + self.config.channel_lifetime))
            self.stats.channels_created += 1
        perms = allocation.perms or {}
        until = now + self.config.permission_lifetime
        if perms.get(peer[0], 0.0) < until:
            if peer[0] not in perms:
                self.stats.permissions_created += 1
            allocation.permit(peer[0], until)
        return self._encode(msg, msg.response(), ident)

    # ---- data ------------------------------------------------------------------------------

    def _send_indication(self, key: Any, msg: Message, now: float) -> list[Action]:
        allocation = self.allocations.get(key)
        peer, data = msg.get(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)
        if allocation is None or peer is None or data is None:
            self.stats.dropped_packets += 1
            return []
        if not allocation.permitted(peer[0], now):
            self.stats.dropped_packets += 1
            return []
        relay = allocation.relay_for(6 if ":" in peer[0] else 4)
        if relay is None or (
            allocation.bucket is not None and not self._spend(allocation, len(data), now)
        ):
            self.stats.dropped_packets += 1
            return []
        self.stats.to_peer_packets += 1
        self.stats.to_peer_bytes += len(data)
        return [SendToPeer(relay.handle, data, (peer[0], peer[1]), Attr.DONT_FRAGMENT in msg)]

    def _channel_from_client(self, key: Any, data: bytes, now: float) -> list[Action]:
        target = self.channel_target(key, data, now)
        if target is None:
            return []
        return [SendToPeer(*target)]

    def channel_target(
        self, key: Any, data: bytes, now: float
    ) -> tuple[Any, bytes, Address] | None:
        """Where a client's ChannelData frame goes: (relay handle, payload, peer), or None."""
        allocation = self.allocations.get(key)
        if allocation is None or allocation.channels is None or len(data) < 4:
            self.stats.dropped_packets += 1
            return None
        number, length = _CD_HEADER.unpack_from(data)
        channel = allocation.channels.get(number)
        if channel is None or channel.expires <= now or len(data) < 4 + length:
            self.stats.dropped_packets += 1
            return None
        perms = allocation.perms
        expiry = perms.get(channel.peer[0]) if perms else None
        if expiry is None or expiry <= now:
            self.stats.dropped_packets += 1
            return None
        if allocation.bucket is not None and not self._spend(allocation, length, now):
            self.stats.dropped_packets += 1
            return None
        self.stats.to_peer_packets += 1
        self.stats.to_peer_bytes += length
        return channel.relay.handle, data[4 : 4 + length], channel.peer

    def _spend(self, allocation: Allocation, size: int, now: float) -> bool:
        bucket = allocation.bucket
        assert bucket is not None
        rate = float(self.config.bandwidth or 0)
        bucket[0] = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] < size:
            return False
        bucket[0] -= size
        return True

    # ---- encoding --------------------------------------------------------------------------

    def _fail(self, msg: Message, code: int, reason: str, ident: Identity | None) -> list[Action]:
        return [Reply(self._error(msg, code, reason, ident))]

    def _error(self, msg: Message, code: int, reason: str, ident: Identity | None) -> bytes:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        return self._encode(msg, msg.error(code, reason), ident)

    def _encode(self, request: Message, resp: Message, ident: Identity | None) -> bytes:
        if self.config.software:
            resp.add(Attr.SOFTWARE, self.config.software)
        tail = _tail_types(request)
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


def _tail_types(msg: Message) -> tuple[int, ...]:
    """The types of the last three attributes: where a decoded message's MESSAGE-INTEGRITY,
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are (the codec allows nothing after them)."""
    return tuple(t for t, _ in msg.attributes[-3:])


_ADDR4 = struct.Struct("!HHBBH4s")  # XOR-...-ADDRESS, IPv4: type, length, 0, family, port, ip
_U32_ATTR = struct.Struct("!HHI")
_xor_ips: dict[str, bytes] = {}


def _xor_ip4(ip: str) -> bytes | None:
    """An IPv4 address XORed with the magic cookie (what XOR-*-ADDRESS carries), or None."""
    xored = _xor_ips.get(ip)
    if xored is None:
        parts = ip.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
            return None
        xored = bytes(int(p) ^ c for p, c in zip(parts, _COOKIE, strict=True))
        if len(_xor_ips) >= 4096:
            _xor_ips.clear()
        _xor_ips[ip] = xored
    return xored


def _allocate_success(
    request: Message, relays: list[Relay], lifetime: int, mapped: Address, key: bytes
) -> bytes | None:
    """The common Allocate success response (IPv4 relayed and mapped addresses, LIFETIME,
    signed as the request was, FINGERPRINT if it had one) built directly: the same bytes the
    codec produces (tests compare), for a fraction of the cost. None: use the codec."""
    parts = []
    for relay in relays:
        ip, port = relay.advertised
        xored = _xor_ip4(ip)
        if xored is None:
            return None
        parts.append(_ADDR4.pack(Attr.XOR_RELAYED_ADDRESS, 8, 0, 1, port ^ 0x2112, xored))
    parts.append(_U32_ATTR.pack(Attr.LIFETIME, 4, lifetime))
    xored = _xor_ip4(mapped[0])
    if xored is None:
        return None
    parts.append(_ADDR4.pack(Attr.XOR_MAPPED_ADDRESS, 8, 0, 1, mapped[1] ^ 0x2112, xored))
    body = b"".join(parts)
    mtype = message_type(request.method, Class.SUCCESS)
    prefix = _COOKIE + request.transaction_id
    tail = _tail_types(request)
    if Attr.MESSAGE_INTEGRITY_SHA256 in tail:
        head = _HEADER.pack(mtype, len(body) + 36) + prefix
        mac = hmac.digest(key, head + body, "sha256")
        body += _HEADER.pack(Attr.MESSAGE_INTEGRITY_SHA256, 32) + mac
    else:
        head = _HEADER.pack(mtype, len(body) + 24) + prefix
        mac = hmac.digest(key, head + body, "sha1")
        body += _HEADER.pack(Attr.MESSAGE_INTEGRITY, 20) + mac
    if Attr.FINGERPRINT in tail:
        head = _HEADER.pack(mtype, len(body) + 8) + prefix
        crc = zlib.crc32(head + body) ^ _FINGERPRINT_XOR
        body += _FINGERPRINT.pack(Attr.FINGERPRINT, 4, crc)
    return _HEADER.pack(mtype, len(body)) + prefix + body


def channel_data(number: int, payload: bytes, pad: bool) -> bytes:
    """A ChannelData frame; padded to a multiple of 4 over TCP/TLS (RFC 8656 §12.5)."""
    frame = _CD_HEADER.pack(number, len(payload)) + payload
    if pad and len(payload) % 4:
        frame += b"\x00" * (4 - len(payload) % 4)
    return frame


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
