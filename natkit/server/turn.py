"""The TURN relay: ``async with natkit.TurnServer(users={...}, allow_peers=[...]) as turn``.

The protocol lives in the sans-IO :mod:`natkit.turn` engine; this module owns the sockets
(client listeners on UDP, TCP and TLS; one UDP relay socket per relayed address), the clock
and the lifecycle: a tick every half second expires allocations, and :meth:`TurnServer.stop`
closes every relay socket. Binding requests are answered on the same ports.

Safe by default (docs/security.md): peers in special-purpose ranges (loopback, private,
link-local and cloud metadata, CGNAT, ULA, multicast, documentation, ...) are refused unless
``allow_peers`` opens them; the relay's own addresses (every local address for a wildcard
listener) are refused whatever the policy, and its listener ports and relay ports even when an
allow reopens the IP; without ``users``/``auth_secrets`` a random user is made rather than an
open relay (``no_auth=True`` makes an open relay, and says so in the log); TCP/TLS connections
are held to the stream limits of natkit/server/_stream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from natkit.errors import ConfigError, PrerequisiteError, UsageError
from natkit.server import _turn_fast
from natkit.server._local import local_addresses
from natkit.server._stream import StreamGuard, StreamLimits
from natkit.server._tls import certificate_names, server_context
from natkit.server._turn_fast import FastTable
from natkit.server._turn_io import RelaySocket, StreamClient, UdpListener
from natkit.server.metrics import MetricsEndpoint, start_metrics
from natkit.server.service import (
    TurnOptions,
    TurnService,
    as_list,
    build_options,
    check_ip,
    load_users_file,
    plan_auth,
)
from natkit.server.service import (
    family as _family,
)
from natkit.server.stun import parse_listen
from natkit.turn.actions import (
    Action,
    BindRelays,
    CloseRelay,
    OffloadAllocation,
    OffloadChannel,
    OffloadPermission,
    OffloadWithdraw,
    Reply,
    SendToClient,
    SendToPeer,
)
from natkit.turn.allocation import Address, Relay
from natkit.turn.engine import TurnConfig, TurnEngine
from natkit.turn.limits import ResponseLimiter
from natkit.turn.policy import DefaultPeerPolicy, OwnAddresses, PeerPolicy
from natkit.turn.ports import PortPool
from natkit.turn.quota import AllocationQuota

__all__ = ["TurnOptions", "TurnServer", "TurnService", "load_users_file"]

log = logging.getLogger("natkit.server.turn")

_RCVBUF = 4 << 20  # client listeners: every client's traffic arrives here
# "Any port" with TCP too: the TCP listener takes the UDP one's port number, which a TCP socket
# elsewhere may hold; so many fresh UDP ports are tried before that is an error.
_ANY_PORT_TRIES = 20
_RELAY_RCVBUF = 1 << 20  # each relay socket (the kernel doubles it, capped by rmem_max)
_TICK = 0.5
# spare relay sockets the C thread holds for the Allocates it serves (refilled below LOW)
_SPARES_LOW, _SPARES_HIGH = 960, 1000
_SPARES_MIN = 32  # below this many spares to be had (a small port range), the engine's alone
# a source's 401s the C thread may bank, in error bursts: earned one per verified request, so
# only a source that receives our replies has them, and a client behind which hundreds of
# Allocates are under way at once (a NAT, the bench's 256) is never braked into timeouts
_C_CREDIT_BURSTS = 4
_C_USERS_MAX = 16  # static users the C thread verifies itself (more: the engine does)
_SUMMARY_EVERY = 10.0  # seconds between batched allocation lifecycle lines
IP_PMTUDISC_DO = 2
# Linux values; the socket module exposes them only on some builds.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)


def _af(family: int) -> socket.AddressFamily:
    return socket.AF_INET6 if family == 6 else socket.AF_INET


def _default_policy(opts: TurnOptions) -> PeerPolicy:
    try:
        return DefaultPeerPolicy(opts.allow_peers, opts.deny_peers)
    except ConfigError as exc:  # name the server's option, not the policy's argument
        raise ConfigError(exc.message, param=f"{exc.param}_peers") from None


def _c_users(keys: dict[str, bytes]) -> bool:
    """Whether the C thread can verify these users itself (few, names not too long)."""
    return len(keys) <= _C_USERS_MAX and all(len(n.encode()) <= 256 for n in keys)


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _primary_ip(family: int) -> str:
    """This host's address toward the outside (a UDP connect sends nothing)."""
    probe = "2001:db8::1" if family == 6 else "192.0.2.1"
    with socket.socket(_af(family), socket.SOCK_DGRAM) as s:
        try:
            s.connect((probe, 9))
            return str(s.getsockname()[0])
        except OSError:
            return "::1" if family == 6 else "127.0.0.1"


#: the relay ports split between workers when none are configured (coturn's default range)
WORKER_PORTS = (49152, 65535)


def _worker_share(
    opts: TurnOptions, worker: int, workers: int
) -> tuple[tuple[int, int] | None, list[tuple[int, int]], TurnOptions]:
    """(the whole relay range, the other workers' shares, options with this worker's share)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ConfigError(f"give 1-256 workers, not {workers!r}", param="workers")
    if not 0 <= worker < workers:
        raise ConfigError(f"worker {worker} is not one of 0-{workers - 1}", param="worker")
    if workers == 1:
        return None, [], opts
    low, high = (opts.min_port, opts.max_port) if opts.min_port else WORKER_PORTS
    size = (high - low + 1) // workers
    if size < 2:
        raise ConfigError(
            f"relay ports {low}-{high} cannot be split between {workers} workers: "
            "give a wider --min-port/--max-port range or fewer workers",
            param="min_port",
        )
    shares = [
        (low + n * size, high if n == workers - 1 else low + (n + 1) * size - 1)
        for n in range(workers)
    ]
    mine = shares.pop(worker)
    return (low, high), shares, opts.replace(min_port=mine[0], max_port=mine[1])


class TurnServer(TurnService):
    """A TURN relay (RFC 8656) on UDP, TCP and (with a certificate) TLS: natkit's engine.

    ``TurnServer(listen, options=TurnOptions(...))`` or the same options as keyword arguments
    (``TurnServer(users={"u": "p"}, allow_peers=["10.0.0.0/8"])``); see :class:`TurnOptions`.
    ``fast_path``: None (the C data path when the extension is built and NATKIT_NO_CEXT is
    unset), True/False to force C/Python.
    ``workers``/``worker``/``reuse_port``: this is process ``worker`` of ``workers`` serving the
    same listeners with SO_REUSEPORT (``natkit serve turn --workers N``, natkit/server/_workers.py):
    the relay port range (``min_port``-``max_port``, default 49152-65535 with several
    workers) is split into one share per worker so their relay ports never collide, and the
    other shares are the siblings' relayed addresses (peers reached over the network with
    ``relay_to_relay``, refused without it; docs/turn-server.md). ``nonce_secret`` (16+ bytes)
    keys the nonces: workers share the first one's (made at random when not given), so any of
    them accepts a nonce another issued.
    Once started, :attr:`addresses`, :attr:`urls` and :meth:`ice_server` are ready.
    """

    engine_name = "natkit"

    def __init__(
        self,
        listen: Sequence[str | Address] | None = None,
        *,
        options: TurnOptions | None = None,
        reuse_port: bool = False,
        worker: int = 0,
        workers: int = 1,
        nonce_secret: bytes | None = None,
        c_allocate: bool | None = None,
        **overrides: Any,
    ) -> None:
        opts = build_options(options, listen, overrides)
        self.workers, self.worker = workers, worker
        # Authenticated Allocates served by the C thread (natkit/server/_turnctl.c): the
        # option, or the argument when given
        self.c_allocate = opts.c_allocate if c_allocate is None else c_allocate
        if nonce_secret is not None and (
            not isinstance(nonce_secret, bytes) or len(nonce_secret) < 16
        ):
            raise ConfigError("give a nonce secret of at least 16 bytes", param="nonce_secret")
        # Workers share one nonce secret (the first process makes it, worker_options hands it
        # on): a client the kernel moves to another worker keeps its nonce instead of a 438.
        if nonce_secret is None and workers > 1 and worker == 0:
            nonce_secret = os.urandom(16)
        self.nonce_secret = nonce_secret
        self.reuse_port = reuse_port or workers > 1
        self.relay_range, self.sibling_ports, opts = _worker_share(opts, worker, workers)
        self.options = opts
        self.listen = opts.listen_addresses()
        self.realm = opts.realm
        self.auth_plan = plan_auth(opts)
        self.users = self.auth_plan.users
        self.auth_secrets = self.auth_plan.secrets
        #: family -> every relay IP of it (allocations are spread over them), and the first
        self.relay_pool = self._relay_ips(opts.relay_ip)
        self.relay_ips = {fam: ips[0] for fam, ips in self.relay_pool.items()}
        self.external_ips = self._external_ips(opts.external_ip)
        # one port pool per relay IP: each IP holds one relay socket per port of the range
        self.port_pools = {
            ip: PortPool(opts.min_port, opts.max_port)
            for ips in self.relay_pool.values()
            for ip in ips
        }
        self.ports = next(iter(self.port_pools.values()))
        self._next_ip = {fam: 0 for fam in self.relay_pool}
        self.policy = opts.peer_policy or _default_policy(opts)
        try:
            self._ssl: ssl.SSLContext | None = server_context(opts.tls_cert, opts.tls_key)
        except UsageError as exc:  # the certificate or key does not load
            raise ConfigError(str(exc), param="tls_cert") from None
        self.tls_port = opts.tls_port
        self.tcp = opts.tcp
        self.limits = StreamLimits(
            max_connections=opts.max_connections,
            per_source=opts.max_connections_per_source,
            first_message_timeout=opts.first_message_timeout,
            allocate_timeout=opts.allocate_timeout,
            idle_timeout=opts.idle_timeout,
        )
        try:
            self.metrics_address = parse_listen(opts.metrics, 9641) if opts.metrics else None
        except UsageError as exc:
            raise ConfigError(str(exc), param="metrics") from None
        self.config = TurnConfig(
            realm=opts.realm,
            default_lifetime=opts.default_lifetime,
            max_lifetime=opts.max_lifetime,
            nonce_lifetime=opts.nonce_lifetime,
            families=frozenset(self.relay_ips),
            max_permissions=opts.max_permissions,
            max_channels=opts.max_channels,
            bandwidth=opts.bandwidth,
            software=opts.software,
            strict_channels=opts.strict_channels,
        )
        self.user_quota = opts.resolved_user_quota(self.auth_plan)
        quota = opts.quota or AllocationQuota(per_user=self.user_quota, total=opts.max_allocations)
        self.engine = TurnEngine(
            self.config,
            auth=self.auth_plan.authenticator,
            peer_policy=self.policy,
            quota=quota,
            nonce_secret=nonce_secret,
            responses=ResponseLimiter(opts.error_burst, opts.error_rate),
        )
        engine = self.engine
        self.guard = StreamGuard(
            self.limits,
            has_session=lambda conn: engine.has_allocation((conn, conn.addr)),
            cert_names=certificate_names(opts.tls_cert) if opts.tls_cert else None,
            logger=log,
        )
        self.now = time.time()
        self.addresses: list[tuple[str, Address]] = []
        self._udp: list[UdpListener] = []
        self._held_tcp: dict[Address, socket.socket] = {}  # bound with their UDP port number
        self._listeners: dict[int, UdpListener] = {}
        self._relays: dict[int, RelaySocket] = {}
        # bound, watched relay sockets the table's thread may take for an Allocate it serves
        # itself (also in _relays, with no relay yet): fd -> socket
        self._spares: dict[int, RelaySocket] = {}
        self._spare_ip = 0
        self._fast_allocates = False
        self._fast_keys_of_users: dict[str, bytes] | None = None
        self._spares_on = False  # the thread serves Allocates (it has spares to)
        self._closing = False
        self._reserved: Relay | None = None  # _bind_relays' reservation (EVEN-PORT R bit)
        self._servers: list[asyncio.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._metrics: MetricsEndpoint | None = None
        self.fast_path = opts.fast_path
        self.fast: FastTable | None = None
        self.streams: dict[int, StreamClient] = {}  # TCP clients the table reads, by its fd
        self._notify_fd: int | None = None
        # engine allocation key -> the C table keys mirroring it
        self._fast_keys: dict[Any, set[bytes]] = {}
        self._fast_totals: dict[str, int] = {}
        self._started = False
        self.bugs = 0  # the adapter's own; the engine counts its own in engine.stats.bugs
        self.send_errors = 0
        self.bad_frames = 0
        self._summary_at = 0.0
        self._summary_counts = (0, 0, 0)

    # -- configuration helpers --------------------------------------------------------------

    def _relay_ips(self, relay_ip: str | Sequence[str] | None) -> dict[int, list[str]]:
        ips: dict[int, list[str]] = {}
        for value in as_list(relay_ip):
            ip = check_ip(value, "relay_ip")
            if ipaddress.ip_address(ip).is_unspecified:
                raise ConfigError(f"{ip} is not an address to relay from", param="relay_ip")
            same = ips.setdefault(_family(ip), [])
            if ip in same:
                raise ConfigError(f"relay IP {ip} given twice", param="relay_ip")
            same.append(ip)
        if not ips:
            for ip, _ in self.listen:
                fam = _family(ip)
                if fam in ips:
                    continue
                if ipaddress.ip_address(ip).is_unspecified:
                    ips[fam] = [_primary_ip(fam)]
                else:
                    ips[fam] = [ip]
        return ips

    def _external_ips(self, external_ip: str | Sequence[str] | None) -> dict[int, str]:
        ips: dict[int, str] = {}
        for value in as_list(external_ip):
            ip = check_ip(value, "external_ip")
            if _family(ip) not in self.relay_ips:
                raise ConfigError(
                    f"{ip} has no relay IP of its family to stand for", param="external_ip"
                )
            if len(self.relay_pool[_family(ip)]) > 1:
                raise ConfigError(
                    f"{ip} would stand for {len(self.relay_pool[_family(ip)])} relay IPs: "
                    "give one relay IP per family with an external IP",
                    param="external_ip",
                )
            ips[_family(ip)] = ip
        return ips

    # -- what it serves ---------------------------------------------------------------------

    def _public_ip(self, fam: int) -> str | None:
        return self.external_ips.get(fam) or self.relay_ips.get(fam)

    @property
    def fast_path_kind(self) -> str:
        """'c' when the C data path is in use, else 'python (...why)'."""
        if self.fast is not None:
            return "c"
        return "python (disabled)" if self.fast_path is False else _turn_fast.status()

    @property
    def fast_path_line(self) -> str:
        """Which UDP data path runs and why, for the start line ("C fast path (...)",
        "pure Python: NATKIT_NO_CEXT=1")."""
        return _turn_fast.describe(self.fast_path is not False)

    def stats(self) -> dict[str, Any]:
        s = self.engine.stats
        fast = self.fast.stats() if self.fast is not None else self._fast_totals
        return {
            "engine": self.engine_name,
            **self.engine.counts(),
            "relay_sockets": len(self._relays) - len(self._spares),
            "connections": self.guard.total,
            "allocations_created": s.allocations_created,
            "allocations_expired": s.allocations_expired,
            "allocations_deleted": s.allocations_deleted,
            "auth_failures": s.auth_failures,
            "auth_blocked": s.auth_blocked,
            "refused_peers": s.refused_peers,
            "refused_by_reason": dict(s.refused_by_reason),
            "quota_refusals": s.quota_refusals,
            "rate_limited_responses": s.rate_limited,
            "from_own_relay": s.from_own_relay,
            "stream": self.guard.stats(),
            "bad_packets": s.bad_packets + self.bad_frames,
            "dropped_packets": s.dropped_packets + self.send_errors + fast.get("send_errors", 0),
            "to_peer_packets": s.to_peer_packets + fast.get("to_peer_packets", 0),
            "to_peer_bytes": s.to_peer_bytes + fast.get("to_peer_bytes", 0),
            "to_client_packets": s.to_client_packets + fast.get("to_client_packets", 0),
            "to_client_bytes": s.to_client_bytes + fast.get("to_client_bytes", 0),
            "relay_to_relay_packets": s.relay_to_relay_packets + fast.get("internal_packets", 0),
            "fast_path": self.fast_path_kind,
            "errors": dict(s.errors),
            "bugs": self.bugs + s.bugs,
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> TurnServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("TurnServer already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        if self.fast_path is not False:
            lib = _turn_fast.load()
            if lib is None and self.fast_path:
                self._started = False
                raise PrerequisiteError(
                    f"the C relay path is not available ({_turn_fast.describe()}): reinstall "
                    "natkit where gcc and the Python headers are installed, unset NATKIT_NO_CEXT, "
                    "or run with fast_path=None (or False) to use the Python path"
                )
            if lib is not None:
                self.fast = FastTable(lib, gro=self.options.udp_gro)
                self.engine.offload = True  # the engine describes what the table may forward
                self.engine.offload_streams = True  # TCP clients too (TLS stays here)
                self.fast.set_channel_max(self.engine.channel_max)
                self.fast.set_now(self.now)
                # the table's own thread runs the data path; this loop wakes only for what
                # the table leaves to the engine (requests, anything its entries do not cover)
                self._notify_fd = self.fast.start()
                self._loop.add_reader(self._notify_fd, self._drain_fast)
        try:
            for ip, port in self.listen:
                self._listen_udp(ip, port)
            if self.tcp or self._ssl is not None:
                await self._listen_streams()
            self.engine.own = self._own_addresses()
            self._control_fast()
            self.guard.start(self._loop)
            if self.metrics_address is not None:
                self._metrics = start_metrics(self.stats, *self.metrics_address)
        except BaseException:
            await self.stop()
            raise
        self._tick()
        if self.no_auth:
            log.warning(
                "event=open_relay TURN authentication is OFF (--no-auth): anyone who can reach "
                "%s can relay through this server. Use it in a closed lab only.",
                ", ".join(sorted({_fmt(a) for _, a in self.addresses})),
            )
        relay = ",".join(ip for ips in self.relay_pool.values() for ip in ips)
        describe = getattr(self.policy, "describe", None)
        log.info(
            "event=turn_started listen=%s relay_ip=%s realm=%r policy=%s own=%s user_quota=%s "
            "data_path=%s",
            " ".join(f"{t}/{_fmt(a)}" for t, a in self.addresses),
            relay,
            self.realm,
            describe() if callable(describe) else type(self.policy).__name__,
            ",".join(self.engine.own.describe()),
            self.user_quota if self.user_quota is not None else "none",
            self.fast_path_kind,
        )

    def _own_addresses(self) -> OwnAddresses:
        """Every address this relay owns or answers on (refused as peers, any port): its
        listen addresses (all local addresses for a wildcard), relay and external IPs; its
        listener ports and relay port range stay refused even where an allow reopens the IP."""
        networks: list[str] = []
        wildcard = {_family(ip) for ip, _ in self.listen if ipaddress.ip_address(ip).is_unspecified}
        if wildcard:
            networks += [a for a in local_addresses() if _family(a.split("/")[0]) in wildcard]
        networks += [ip for ip, _ in self.listen if not ipaddress.ip_address(ip).is_unspecified]
        networks += list(self.port_pools) + list(self.external_ips.values())
        ports = {(_family(ip), port) for _, (ip, port) in self.addresses}
        reopened: Sequence[str] = ()
        if self.options.peer_policy is None:
            reopened = self.options.allow_peers
        relay_ports = (self.ports.low, self.ports.high) if not self.ports.ephemeral else None
        return OwnAddresses(
            networks,
            listen_ports=ports,
            relay_ports=relay_ports,
            reopened=reopened,
            relay_to_relay=self.options.relay_to_relay,
            sibling_ports=self.sibling_ports,
            sibling_ips=[*self.port_pools, *self.external_ips.values()],
        )

    def _control_fast(self) -> None:
        """Let the table's thread answer credential-less first requests (the 401 of every
        Allocate) with the engine's challenge and nonce; requests from the relay's own
        addresses stay the engine's (its relay IPs over the relay port range, siblings' too)."""
        table, engine = self.fast, self.engine
        if table is None or not engine.requires_auth:
            return
        if self.ports.ephemeral:
            low, high = 0, 65535
        else:
            low = min([self.ports.low, *(lo for lo, _ in self.sibling_ports)])
            high = max([self.ports.high, *(hi for _, hi in self.sibling_ports)])
        ips = dict.fromkeys([*self.port_pools, *self.external_ips.values()])
        responses = engine.responses
        budget = max(1, int(responses.burst)) if responses.limited else 0
        table.configure_control(
            engine.nonces.scheme(), engine.challenge_parts(), budget * _C_CREDIT_BURSTS,
            [(ip, low, high) for ip in ips],
        )  # fmt: skip
        if budget:
            responses.credited = []
        # authenticated Allocates too, where the engine's answer needs nothing the thread
        # lacks: static users, no quota limit, no SOFTWARE, no bandwidth cap, IPv4 relays
        keys = engine.static_keys()
        quota = engine.quota
        if (
            self.c_allocate
            and keys
            and _c_users(keys)
            and type(quota) is AllocationQuota
            and quota.per_user is None
            and quota.per_source is None
            and quota.total_limit is None
            and not engine.config.software
            and not engine.config.bandwidth
            and self.relay_pool.get(4)
            and all(_family(self._advertised((ip, 0))[0]) == 4 for ip in self.relay_pool[4])
        ):
            engine.offload_eager = True  # the table knows every allocation there is
            self._fast_allocates = True
            self._fast_keys_of_users = keys
            self._refill_spares()

    def _apply_fast_users(self) -> None:
        """Tell the thread whose Allocates it serves: the users' keys while it has spares to
        serve them with, nobody's otherwise (it would have to drop them)."""
        keys = self._fast_keys_of_users
        usable = keys if keys and _c_users(keys) and self._spares_on else {}
        config = self.engine.config
        assert self.fast is not None
        self.fast.configure_allocates(
            config.realm, usable, config.default_lifetime, config.max_lifetime
        )

    def _check_fast_users(self) -> None:
        """The users changed (engine.auth.users is a live mapping): the thread verifies with
        the new keys from now on, or hands every Allocate to the engine (every tick)."""
        keys = self.engine.static_keys()
        if keys == self._fast_keys_of_users or self.fast is None:
            return
        self._fast_keys_of_users = keys
        self._apply_fast_users()

    def _refill_spares(self) -> None:
        """Keep the thread supplied with bound relay sockets (made here: the port policy
        stays this side's), _SPARES_LOW..._SPARES_HIGH of them."""
        if len(self._spares) >= _SPARES_LOW or self.fast is None:
            return
        ips = self.relay_pool[4]
        # never more than an eighth of the free relay ports: the engine's own Allocates (an
        # EVEN-PORT pair, a small range) must find theirs
        free = 0
        for ip in ips:
            pool = self.port_pools[ip]
            free += 65536 if pool.ephemeral else pool.high - pool.low + 1 - len(pool.in_use)
        target = min(_SPARES_HIGH, (free + len(self._spares)) // 8)
        if (target >= _SPARES_MIN) != self._spares_on:
            # too few ports to spare: the engine serves every Allocate (the thread drops one
            # it would serve but has no spare for), until there are enough again
            self._spares_on = target >= _SPARES_MIN
            self._apply_fast_users()
            if not self._spares_on:
                self._reclaim_spares()  # their ports are the engine's again
        if not self._spares_on:
            return
        want = target - len(self._spares)
        # candidate ports round robin over the relay IPs, bound by the table in one call (the
        # kernel's work, without a Python call per socket)
        wanted: list[tuple[str, str, int]] = []
        per_ip = -(-want // len(ips))
        for n in range(len(ips)):
            ip = ips[(self._spare_ip + n) % len(ips)]
            pool = self.port_pools[ip]
            adv = self._advertised((ip, 0))[0]
            if pool.ephemeral:
                wanted += [(ip, adv, 0)] * per_ip
            else:
                wanted += [(ip, adv, port) for port in pool.candidates(limit=per_ip)]
        self._spare_ip += 1
        if not wanted:
            return  # the ports are all taken: Allocates go to the engine (its 508)
        relays = self._relays
        for fd, port, index in self.fast.make_spares(wanted[:want], _RELAY_RCVBUF):
            ip = wanted[index][0]
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, fileno=fd)
            relay_sock = RelaySocket(self, sock, (ip, port))
            relays[fd] = relay_sock
            pool = self.port_pools[ip]
            if not pool.ephemeral:
                pool.take(port)
            self._spares[fd] = relay_sock

    def _adopt(self, fd: int, head: bytes, addr: Address, response: bytes) -> None:
        """An allocation the table's thread made (and answered): the engine's from now on."""
        if self._closing:
            return  # (its relay socket closes with the others)
        relay_fd, lifetime, tid, user_len, _ = _turn_fast.MADE.unpack_from(head)
        username = head[_turn_fast.MADE.size : _turn_fast.MADE.size + user_len].decode()
        listener = self._listeners.get(fd)
        relay_sock = self._spares.pop(relay_fd, None)
        if listener is None or relay_sock is None:  # (cannot be: both outlive the thread's use)
            log.warning("event=adopt_lost client=%s", _fmt(addr))
            return
        relay = Relay(4, relay_sock.address, self._advertised(relay_sock.address), relay_sock)
        relay_sock.relay = relay
        now = time.time()
        # a verified request: the engine's error budget for its source gets one back too (the
        # thread credited its own), as for one the engine verified; else a busy source whose
        # Allocates the thread serves would spend the engine's budget on 401s and never earn
        self.engine.responses.credit(addr[0], now, fast=False)
        actions = self.engine.adopt_allocation(
            listener, addr, username, relay, lifetime, tid, response, now
        )
        self.run_actions(actions, listener, addr)

    def worker_options(self, worker: int) -> dict[str, Any]:
        """Keyword arguments of worker ``worker``'s TurnServer (natkit/server/_workers.py):
        these listeners (ports resolved), the same users (a generated one too), the whole
        relay range to take its share of; metrics stay with the first process."""
        assert self.relay_range is not None, "a single-process server has no workers"
        udp = self.addresses_of("udp")
        tls = self.addresses_of("tls")
        changes: dict[str, Any] = {
            "listen": udp,
            "min_port": self.relay_range[0],
            "max_port": self.relay_range[1],
            "metrics": None,
            "c_allocate": self.c_allocate,
        }
        if tls:
            changes["tls_port"] = tls[0][1]
        if self.auth_plan.generated:
            changes["users"] = dict(self.auth_plan.users)
        return {
            "options": self.options.replace(**changes),
            "reuse_port": True,
            "worker": worker,
            "workers": self.workers,
            "nonce_secret": self.nonce_secret,
        }

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._closing = True  # allocations the thread made from here on are not adopted
        if self.fast is not None:  # the thread takes no spare from here on
            self.fast.take_spares()
        self.run_actions(self.engine.close_all(), None, None)
        if self._started:
            self._log_summary(time.time())
        for relay in list(self._relays.values()):
            self.forget_relay(relay)
        self._spares.clear()  # (closed with the others)
        for held in self._held_tcp.values():  # a start that failed before its TCP listeners
            held.close()
        self._held_tcp.clear()
        self.guard.stop()
        for server in self._servers:
            server.close()
        self.guard.close_all()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
        for listener in self._udp:
            if self.fast is not None:
                self.fast.unwatch(listener.fd)
            elif self._loop is not None:
                self._loop.remove_reader(listener.fd)
            listener.sock.close()
        self._udp.clear()
        self._listeners.clear()
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                self._metrics.shutdown()
            self._metrics = None
        if self.fast is not None:
            if self._loop is not None and self._notify_fd is not None:
                self._loop.remove_reader(self._notify_fd)
            self._notify_fd = None
            self.fast.stop()
            self._fast_totals = self.fast.stats()
            self.fast.close()
            self.fast = None

    async def serve_forever(self) -> None:
        await asyncio.Event().wait()

    def _tick(self) -> None:
        assert self._loop is not None
        self.now = now = time.time()
        if self.fast is not None:
            self.fast.set_now(now)
            if self._fast_allocates:
                self._check_fast_users()
        try:
            self.run_actions(self.engine.tick(now), None, None)
            if now - self._summary_at >= _SUMMARY_EVERY:
                self._log_summary(now)
        except Exception:
            self.log_bug("tick", ("", 0))
        self._ticker = self._loop.call_later(_TICK, self._tick)

    def _log_summary(self, now: float) -> None:
        """The allocation lifecycle at info, batched: one line per period with changes (each
        allocation's own events are at debug, off the Allocate path)."""
        s = self.engine.stats
        counts = (s.allocations_created, s.allocations_deleted, s.allocations_expired)
        self._summary_at = now
        if counts == self._summary_counts:
            return
        last = self._summary_counts
        self._summary_counts = counts
        log.info(
            "event=allocations created=%d deleted=%d expired=%d active=%d relay_sockets=%d",
            counts[0] - last[0],
            counts[1] - last[1],
            counts[2] - last[2],
            self.engine.counts()["allocations"],
            len(self._relays),
        )

    # -- listeners --------------------------------------------------------------------------

    def _udp_socket(self, ip: str, port: int) -> socket.socket:
        sock = socket.socket(_af(_family(ip)), socket.SOCK_DGRAM)
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _RCVBUF)
            sock.bind((ip, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _stream_socket(self, ip: str, port: int) -> socket.socket:
        sock = socket.socket(_af(_family(ip)), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((ip, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _listen_udp(self, ip: str, port: int) -> None:
        assert self._loop is not None
        tries = _ANY_PORT_TRIES if port == 0 and self.tcp else 1
        for left in range(tries - 1, -1, -1):
            try:
                sock = self._udp_socket(ip, port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on udp {_fmt((ip, port))}: {exc.strerror or exc}; "
                    "pick another address or stop what holds it",
                    param="listen",
                ) from None
            if tries == 1:
                break
            taken = sock.getsockname()[:2]
            try:  # its TCP twin now, while the port number is ours on UDP
                self._held_tcp[taken] = self._stream_socket(ip, taken[1])
                break
            except OSError:
                sock.close()
                if not left:
                    raise ConfigError(
                        f"cannot listen on udp and tcp {ip} at one port number in "
                        f"{_ANY_PORT_TRIES} tries; give a port (--listen {ip}:PORT)",
                        param="listen",
                    ) from None
        listener = UdpListener(self, sock)
        self._udp.append(listener)
        if self.fast is not None:
            self.fast.watch(listener.fd, 0)
        else:
            self._loop.add_reader(sock.fileno(), listener.readable)
        self._listeners[listener.fd] = listener
        self.addresses.append(("udp", listener.address))

    async def _listen_streams(self) -> None:
        assert self._loop is not None
        plan: list[tuple[str, Address]] = []
        if self.tcp:
            plan += [("tcp", a) for a in self.addresses_of("udp")]
        if self._ssl is not None:
            plan += [("tls", (ip, self.tls_port)) for ip, _ in self.listen]
        for transport, (ip, port) in plan:
            held = self._held_tcp.pop((ip, port), None) if transport == "tcp" else None
            try:
                sock = held or self._stream_socket(ip, port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {transport} {_fmt((ip, port))}: {exc.strerror or exc}; "
                    "pick another address/port or stop what holds it",
                    param="tls_port" if transport == "tls" else "listen",
                ) from None

            def factory(
                name: str = transport, tls: ssl.SSLContext | None = self._ssl
            ) -> StreamClient:
                return StreamClient(self, name, self.guard, tls if name == "tls" else None)

            # TLS is the protocol's own (natkit/server/_tls.py), so failures can be named
            server = await self._loop.create_server(factory, sock=sock, backlog=1024)
            self._servers.append(server)
            self.addresses.append((transport, sock.getsockname()[:2]))

    def stream_closed(self, stream: StreamClient) -> None:
        self.run_actions(self.engine.client_gone(stream, stream.addr, time.time()), None, None)

    # -- actions ----------------------------------------------------------------------------

    def run_actions(self, actions: list[Action], client: Any, addr: Address | None) -> None:
        for action in actions:
            if isinstance(action, Reply):
                if client is not None and addr is not None:
                    client.send(action.data, addr)
            elif isinstance(action, SendToPeer):
                action.handle.sendto(action.data, action.peer)
            elif isinstance(action, SendToClient):
                action.client.send(action.data, action.addr)
            elif isinstance(action, CloseRelay):
                self.forget_relay(action.handle)
            elif isinstance(action, BindRelays):
                self.run_actions(self._bind(action), client, addr)
            elif self.fast is not None:
                self._offload(action)

    # -- the C data path ----------------------------------------------------------------------

    def _drain_fast(self) -> None:
        """The table's thread left datagrams for the engine: handle them, and send the
        replies of the whole batch in one sendmmsg per listener."""
        table = self.fast
        if table is None:
            return
        records = table.take()
        if not records:
            return
        listeners, relays, streams = self._listeners, self._relays, self.streams
        udp = self._udp
        for each in udp:
            each.batch = bytearray()
        stream_kind, closed = _turn_fast.KIND_STREAM, _turn_fast.REC_CLOSED
        made_kind = _turn_fast.REC_MADE
        made: tuple[int, bytes, Address] | None = None
        frames: list[bytes] = []
        stream: StreamClient | None = None
        try:
            for fd, kind, data, addr in records:
                if kind == stream_kind:  # a TCP client's frames, in order, a run at a time
                    client = streams.get(fd)
                    if client is not stream and stream is not None and frames:
                        stream.fast_frames(frames)
                        frames = []
                    stream = client
                    if client is not None:
                        frames.append(data)
                    continue
                if stream is not None and frames:
                    stream.fast_frames(frames)
                    frames, stream = [], None
                if kind == made_kind:  # an allocation the thread made: fields, then reply
                    if made is None:
                        made = (fd, data, addr)
                    else:
                        self._adopt(made[0], made[1], made[2], data)
                        made = None
                    continue
                if kind == closed:
                    client = streams.get(fd)
                    if client is not None:
                        reasons = _turn_fast.CLOSE_REASONS
                        client.fast_closed(reasons[addr[1]] if addr[1] < len(reasons) else "error")
                    continue
                listener = listeners.get(fd)
                if listener is not None:
                    listener.handle(data, addr)
                    continue
                relay = relays.get(fd)
                if relay is not None:
                    relay.handle(data, addr)
            if stream is not None and frames:
                stream.fast_frames(frames)
        finally:
            self._send_batches(table)
            for each in udp:
                each.batch = None
            credited = self.engine.responses.credited
            if credited:  # the thread answers these sources' next challenges
                table.credit(credited)
                credited.clear()
            if self._fast_allocates:
                self._refill_spares()

    def _send_batches(self, table: FastTable) -> None:
        """What the Python path answered in this round, one sendmmsg per listener."""
        for listener in self._udp:
            batch = listener.batch
            if batch:
                self.send_errors += table.send(listener.fd, bytes(batch))
                batch.clear()

    def _offload(
        self, event: OffloadAllocation | OffloadPermission | OffloadChannel | OffloadWithdraw
    ) -> None:
        """Mirror one forwarding entry of the engine into the C table (natkit.turn.actions
        says what each means; the table forwards while now < until, as the engine would)."""
        table = self.fast
        assert table is not None
        if isinstance(event, OffloadWithdraw):
            for k in self._fast_keys.pop(event.key, ()):
                table.delete(k)
            client, addr = event.key
            if type(client) is UdpListener:  # (its allocation entry is in no key set)
                table.delete(_turn_fast.key(client.fd, addr, _turn_fast.KIND_ALLOC))
            return
        client, addr = event.key
        if type(client) is StreamClient:
            client_fd = client.fast_key_fd()  # the table's own fd of the connection
            if client_fd is None:
                return  # a stream the table cannot read (TLS): the engine forwards it all
        else:
            client_fd = client.fd
        if isinstance(event, OffloadAllocation):
            fds = {r.family: r.handle.fd for r in event.relays}
            k = _turn_fast.key(client_fd, addr, _turn_fast.KIND_ALLOC)
            table.put_allocation(k, fds.get(4, -1), fds.get(6, -1))
            if type(client) is not UdpListener:
                # a UDP allocation's entry is found again from its key (withdraw above): an
                # idle allocation costs no key set here
                self._fast_keys.setdefault(event.key, set()).add(k)
            return
        keys = self._fast_keys.setdefault(event.key, set())
        if isinstance(event, OffloadPermission):
            k = _turn_fast.key(event.relay.handle.fd, (event.ip, 0), _turn_fast.KIND_PERM)
            if event.until is None:
                table.delete(k)
                keys.discard(k)
            else:
                table.put(k, client_fd, addr, 0, event.until)
                keys.add(k)
        else:
            relay_fd = event.relay.handle.fd
            to_peer = _turn_fast.key(client_fd, addr, event.number)
            to_client = _turn_fast.key(relay_fd, event.peer)
            if event.until is None:
                for k in (to_peer, to_client):
                    table.delete(k)
                    keys.discard(k)
            else:
                if event.target is not None:  # relay-to-relay: straight to its client
                    table.put_internal(
                        to_peer, event.target.handle.fd, event.relay.advertised, event.until
                    )
                else:
                    table.put(to_peer, relay_fd, event.peer, 0, event.until)
                table.put(to_client, client_fd, addr, event.number, event.until)
                keys.update((to_peer, to_client))

    def _reclaim_spares(self) -> bool:
        """Take the spare relay sockets back from the thread and close them (their ports are
        needed); True when there were any."""
        if self.fast is None or not self._spares:
            return False
        for fd in self.fast.take_spares():
            spare = self._spares.pop(fd, None)
            if spare is not None:
                self.forget_relay(spare)
        return True

    def _bind(self, pending: BindRelays) -> list[Action]:
        relays = self._bind_relays(pending)
        if not relays and self._reclaim_spares():
            relays = self._bind_relays(pending)  # again, with the spares' ports free
        reserved = self._reserved
        self._reserved = None
        return self.engine.complete_allocate(pending, relays, time.time(), reserved=reserved)

    def _bind_relays(self, pending: BindRelays) -> list[Relay]:
        relays: list[Relay] = []
        reserved: Relay | None = None
        for i, family in enumerate(pending.families):
            ips = self.relay_pool.get(family)
            if not ips:
                continue
            first = i == 0
            got = None
            # round robin over the family's relay IPs, the next one when one is full
            start = self._next_ip[family]
            self._next_ip[family] = (start + 1) % len(ips)
            for n in range(len(ips)):
                got = self._open_relay(
                    ips[(start + n) % len(ips)],
                    even=first and pending.even_port,
                    pair=first and pending.reserve_next,
                )
                if got is not None:
                    break
            if got is None:
                if first:
                    break
                continue
            relay_sock, spare = got
            relay = Relay(
                family, relay_sock.address, self._advertised(relay_sock.address), relay_sock
            )
            relay_sock.relay = relay
            if pending.dont_fragment:
                self._dont_fragment(relay_sock)
            relays.append(relay)
            if spare is not None:
                reserved = Relay(family, spare.address, self._advertised(spare.address), spare)
                spare.relay = reserved
        self._reserved = reserved
        return relays

    def _advertised(self, address: Address) -> Address:
        external = self.external_ips.get(_family(address[0]))
        return (external, address[1]) if external else address

    @staticmethod
    def _dont_fragment(relay: RelaySocket) -> None:
        with contextlib.suppress(OSError, AttributeError):
            if relay.v6:
                relay.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DO)
            else:
                relay.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)

    def _open_relay(
        self, ip: str, *, even: bool, pair: bool
    ) -> tuple[RelaySocket, RelaySocket | None] | None:
        """Bind a relay socket (an even port, and the next one too with ``pair``)."""
        pool = self.port_pools[ip]
        if pool.ephemeral:
            for _ in range(64):
                first = self._bind_port(ip, 0)
                if first is None:
                    return None
                port = first.address[1]
                if even and port % 2:
                    self.forget_relay(first)
                    continue
                if not pair:
                    return first, None
                second = self._bind_port(ip, port + 1) if port < 65535 else None
                if second is not None:
                    return first, second
                self.forget_relay(first)
            return None
        for port in pool.candidates(even=even, pair=pair):
            first = self._bind_port(ip, port)
            if first is None:
                continue
            if not pair:
                return first, None
            second = self._bind_port(ip, port + 1)
            if second is not None:
                return first, second
            self.forget_relay(first)
        return None

    def _bind_port(self, ip: str, port: int) -> RelaySocket | None:
        assert self._loop is not None
        v6 = ":" in ip
        sock = socket.socket(
            socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
        )
        try:
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Room for bursts from peers while the server is busy or descheduled: with the
            # kernel default (~200 KB, ~150 small datagrams) a short stall lost whole windows.
            # A limit, not a reservation: an idle relay socket holds no buffer memory.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RELAY_RCVBUF)
            sock.bind((ip, port))
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                log.warning("event=relay_bind_failed ip=%s port=%d error=%r", ip, port, exc)
            return None
        relay = RelaySocket(self, sock, (ip, port) if port else None)
        self._relays[sock.fileno()] = relay
        pool = self.port_pools[ip]
        if not pool.ephemeral:
            pool.take(port)
        if self.fast is not None:
            self.fast.watch(relay.fd, 1)
        else:
            self._loop.add_reader(relay.fd, relay.readable)
        return relay

    def forget_relay(self, relay: RelaySocket) -> None:
        """Close a relay socket (idempotent)."""
        fd = relay.sock.fileno()
        if fd < 0 or self._relays.get(fd) is not relay:
            return
        del self._relays[fd]
        if self.fast is not None:
            self.fast.unwatch(fd)
        elif self._loop is not None:
            self._loop.remove_reader(fd)
        pool = self.port_pools.get(relay.address[0])
        if pool is not None and not pool.ephemeral:
            pool.release(relay.address[1])
        relay.sock.close()
        relay.relay = None

    def log_bug(self, where: str, addr: Address) -> None:
        self.bugs += 1
        log.exception(
            "event=internal_error where=%s client=%s", where, _fmt(addr) if addr[0] else "-"
        )
