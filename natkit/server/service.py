"""What both TURN engines share: one options type and one service shape.

:class:`TurnOptions` holds every option of a TURN relay; natkit's :class:`TurnServer` and the
coturn engine (:class:`~natkit.server.coturn.CoturnServer`) take the same object (or the same
keyword arguments) and are both a :class:`TurnService`: addresses, URLs, credentials and an
``iceServers`` entry once started, ``async with`` to run, ``stats()``.

Who may authenticate, which peers are reachable and how many allocations may exist are either
the plain options (``users``/``users_file``/``auth_secrets``/``no_auth``, ``allow_peers``/
``deny_peers``, ``user_quota``/``max_allocations``) or objects passed in (``auth``,
``peer_policy``, ``quota``; see :mod:`natkit.turn`), never both. The coturn engine runs the
built-in ones and refuses a Python object it cannot express with a ConfigError naming it.
"""

from __future__ import annotations

import abc
import dataclasses
import ipaddress
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal

from natkit.errors import ConfigError, UsageError
from natkit.server.stun import DEFAULT_PORT, DEFAULT_TLS_PORT, parse_listen
from natkit.turn.auth import (
    Authenticator,
    FirstOf,
    NoAuth,
    RestSecrets,
    StaticUsers,
    rest_credentials,
)
from natkit.turn.policy import PeerPolicy
from natkit.turn.quota import Quota

Address = tuple[str, int]


@dataclass(frozen=True, kw_only=True)
class TurnOptions:
    """Every option of a TURN relay, for either engine. Times in seconds.

    ``listen``: client-facing addresses (``"ip:port"`` or tuples; port 0 picks one), served on
    UDP and TCP; default 0.0.0.0:3478. ``users`` (name -> password), ``users_file``
    (``NAME:PASSWORD`` lines) and ``auth_secrets`` (TURN REST API, several for rotation) give
    credentials; with none of them a random user is generated; ``no_auth`` makes an open
    relay; ``auth`` replaces all of these with an :class:`~natkit.turn.auth.Authenticator`.
    ``relay_ip``: the address(es) relay sockets bind to (default: the listen address, or this
    host's primary address); several of one family spread the allocations over them, each
    IP holding one allocation per port of the relay range (so more than ~64,000 allocations
    per family need several); ``external_ip``: what XOR-RELAYED-ADDRESS says
    behind a 1:1 NAT. ``min_port``/``max_port``: the relay port range (default: ports the
    kernel picks). ``allow_peers``/``deny_peers``: CIDRs opened / closed on top of the default
    peer policy, or ``peer_policy``: a :class:`~natkit.turn.policy.PeerPolicy` of your own.
    ``relay_to_relay``: accept this relay's live relayed addresses as peers (two clients it
    relays reaching each other, as WebRTC does when both sides are relayed by one server; on
    by default, loops stay impossible: docs/security.md).
    ``user_quota``/``max_allocations`` or ``quota``: how many allocations may exist
    (``user_quota="auto"``, the default: no user may hold more than half of the relay's ports
    once it knows several users; see :meth:`resolved_user_quota`). ``max_channels``: channel
    bindings per allocation. ``rest_max_ttl``: REST credentials whose expiry lies further
    ahead are refused. ``error_rate``/``error_burst``: error responses per second (and burst)
    to one unauthenticated UDP source (None: no limit). Stream limits (TCP/TLS):
    ``max_connections`` in total, ``max_connections_per_source``, ``first_message_timeout``,
    ``allocate_timeout`` (the first successful Allocate), ``idle_timeout`` (between complete
    messages, for connections without an allocation). docs/security.md says why each default.
    ``udp_gro``: the C data path asks the kernel for UDP GRO on its sockets (datagrams of one
    source that arrive together are read as one and split again; natkit's engine only).
    ``c_allocate``: the C data path's thread answers a static user's plain UDP Allocate itself
    (on by default; docs/turn-server.md, "The control fast path"; natkit's engine only).
    """

    listen: Sequence[str | Address] | None = None
    realm: str = "natkit"
    # who may use the relay
    users: Mapping[str, str] | None = None
    users_file: str | os.PathLike[str] | None = None
    auth_secrets: Sequence[str] = ()
    no_auth: bool = False
    auth: Authenticator | None = None
    # where it relays from
    relay_ip: str | Sequence[str] | None = None
    external_ip: str | Sequence[str] | None = None
    min_port: int = 0
    max_port: int = 0
    # which peers
    allow_peers: Sequence[str] = ()
    deny_peers: Sequence[str] = ()
    peer_policy: PeerPolicy | None = None
    relay_to_relay: bool = True
    # transports
    tls_cert: str | os.PathLike[str] | None = None
    tls_key: str | os.PathLike[str] | None = None
    tls_port: int = DEFAULT_TLS_PORT
    tcp: bool = True
    # limits
    user_quota: int | Literal["auto"] | None = "auto"
    max_allocations: int | None = None
    quota: Quota | None = None
    max_permissions: int = 1000
    max_channels: int = 500
    bandwidth: int | None = None
    rest_max_ttl: int | None = 86400
    default_lifetime: int = 600
    max_lifetime: int = 3600
    nonce_lifetime: int = 600
    # protocol
    software: str | None = None
    strict_channels: bool = False
    # natkit's engine only (the coturn engine refuses them unless left at the default)
    max_connections: int = 10_000
    max_connections_per_source: int = 256
    first_message_timeout: float = 10.0
    allocate_timeout: float = 30.0
    idle_timeout: float = 60.0
    error_rate: float | None = 50.0
    error_burst: int = 100
    metrics: str | Address | None = None
    fast_path: bool | None = None
    udp_gro: bool = True
    c_allocate: bool = True

    def replace(self, **changes: Any) -> TurnOptions:
        """A copy with ``changes`` (TypeError for a name that is not an option)."""
        unknown = sorted(set(changes) - OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown TURN option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Raise ConfigError (naming the option) for values no engine can run with."""
        if self.listen is not None and not list(self.listen):
            raise ConfigError("nothing to listen on: give at least one address", param="listen")
        if (self.min_port or self.max_port) and not (1 <= self.min_port <= self.max_port <= 65535):
            raise ConfigError(
                f"bad relay port range {self.min_port}-{self.max_port}: "
                "need 1 <= min <= max <= 65535",
                param="min_port",
            )
        if self.user_quota != "auto":
            _at_least_one(self.user_quota, "user_quota")
        for name in ("max_allocations", "bandwidth", "rest_max_ttl", "error_rate"):
            _at_least_one(getattr(self, name), name)
        for name in (
            "max_permissions",
            "max_channels",
            "default_lifetime",
            "max_lifetime",
            "nonce_lifetime",
            "max_connections",
            "max_connections_per_source",
            "error_burst",
        ):
            _at_least_one(getattr(self, name), name)
        for name in ("first_message_timeout", "allocate_timeout", "idle_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"must be a number of seconds above 0, not {value!r}", param=name)
        if not 0 <= self.tls_port <= 65535:
            raise ConfigError(f"bad TLS port {self.tls_port}", param="tls_port")
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ConfigError("TLS needs both a certificate and a key", param=missing)
        if self.auth is not None:
            given = [
                n for n in ("users", "users_file", "auth_secrets", "no_auth") if getattr(self, n)
            ]
            if given:
                raise ConfigError(
                    f"give an authenticator or {', '.join(given)}, not both", param="auth"
                )
        if self.peer_policy is not None and (self.allow_peers or self.deny_peers):
            raise ConfigError(
                "give a peer policy or allow_peers/deny_peers, not both", param="peer_policy"
            )
        if self.quota is not None and (
            self.user_quota not in (None, "auto") or self.max_allocations is not None
        ):
            raise ConfigError("give a quota or user_quota/max_allocations, not both", param="quota")

    def resolved_user_quota(self, plan: AuthPlan) -> int | None:
        """Allocations one user may hold at once: the option, or for "auto" half the relay's
        capacity (its port range, else the kernel's ephemeral range, capped by
        max_allocations) when the relay knows more than one user (REST secrets, several
        users, a custom authenticator); with a single user (or none) there is no one else to
        protect and no per-user limit."""
        if self.user_quota != "auto":
            return self.user_quota
        if plan.no_auth or (len(plan.users) <= 1 and not plan.secrets and not plan.custom):
            return None
        if self.min_port:
            capacity = self.max_port - self.min_port + 1
        else:
            low, high = ephemeral_ports()
            capacity = high - low + 1
        ips = as_list(self.relay_ip)
        capacity *= max([1, *(sum(1 for ip in ips if family(ip) == f) for f in (4, 6))])
        if self.max_allocations is not None:
            capacity = min(capacity, self.max_allocations)
        return max(1, capacity // 2)

    def listen_addresses(self) -> list[Address]:
        specs = self.listen if self.listen is not None else [("0.0.0.0", DEFAULT_PORT)]
        out = []
        for spec in specs:
            try:
                out.append(parse_listen(spec))
            except UsageError as exc:
                raise ConfigError(str(exc), param="listen") from None
        return out


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(TurnOptions))


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's ephemeral port range (where relay sockets bound to port 0 land)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _at_least_one(value: object, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise ConfigError(f"must be at least 1, not {value!r}", param=name)


def build_options(
    options: TurnOptions | None,
    listen: Sequence[str | Address] | None,
    overrides: Mapping[str, Any],
) -> TurnOptions:
    """``options`` (or the defaults) with ``listen`` and keyword ``overrides`` applied, checked."""
    opts = options if options is not None else TurnOptions()
    changes = dict(overrides)
    if listen is not None:
        changes["listen"] = listen
    if changes:
        opts = opts.replace(**changes)
    opts.check()
    return opts


def load_users_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``NAME:PASSWORD`` lines ('#' comments, blank lines allowed)."""
    users: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read users file {path}: {why}", param="users_file") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise ConfigError(
                f"expected NAME:PASSWORD, got {line[:40]!r}",
                param="users_file",
                where=f"{path}:{number}",
            )
        users[name] = password
    return users


@dataclass(frozen=True)
class AuthPlan:
    """How a relay authenticates, resolved from the options: the authenticator, and what of
    it is known as plain data (for :meth:`TurnService.credentials` and for coturn)."""

    authenticator: Authenticator
    users: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    no_auth: bool = False
    generated: bool = False
    #: True when ``authenticator`` holds logic that is not users / REST secrets / no-auth
    custom: bool = False


def plan_auth(options: TurnOptions) -> AuthPlan:
    if options.auth is not None:
        known = _known_auth(options.auth)
        if known is None:
            return AuthPlan(options.auth, custom=True)
        users, secret_list, no_auth = known
        return AuthPlan(options.auth, users, secret_list, no_auth)
    users = load_users_file(options.users_file) if options.users_file else {}
    users.update(options.users or {})
    secret_list = [str(s) for s in options.auth_secrets]
    if options.no_auth:
        return AuthPlan(NoAuth(), users, secret_list, no_auth=True)
    generated = not users and not secret_list
    if generated:  # a random user rather than an open relay
        users = {"natkit": secrets.token_urlsafe(12)}
    parts: list[Authenticator] = []
    if users:
        parts.append(StaticUsers(users))
    if secret_list:
        parts.append(RestSecrets(secret_list, max_ttl=options.rest_max_ttl))
    auth = parts[0] if len(parts) == 1 else FirstOf(*parts)
    return AuthPlan(auth, users, secret_list, generated=generated)


def _known_auth(auth: Authenticator) -> tuple[dict[str, str], list[str], bool] | None:
    """(users, secrets, no_auth) of a built-in authenticator (or of FirstOf built-ins)."""
    if type(auth) is NoAuth:
        return {}, [], True
    if type(auth) is StaticUsers:
        return dict(auth.users), [], False
    if type(auth) is RestSecrets and auth.separator == ":":
        return {}, list(auth.secrets), False
    if type(auth) is FirstOf:
        users: dict[str, str] = {}
        secret_list: list[str] = []
        for part in auth.authenticators:
            known = _known_auth(part)
            if known is None or known[2]:
                return None
            for name, password in known[0].items():
                users.setdefault(name, password)
            secret_list += known[1]
        return users, secret_list, False
    return None


def check_ip(value: str, param: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"'{value}' is not an IP address", param=param) from None


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def family(ip: str) -> int:
    return 6 if ":" in ip else 4


class TurnService(abc.ABC):
    """A TURN relay of either engine, as its users see it once started."""

    #: "natkit" or "coturn"
    engine_name: ClassVar[str]
    options: TurnOptions
    auth_plan: AuthPlan
    #: (transport, (ip, port)) served: "udp", "tcp", "tls"
    addresses: list[tuple[str, Address]]

    # -- lifecycle: ``async with service:`` runs it -----------------------------------------

    @abc.abstractmethod
    async def __aenter__(self) -> TurnService: ...

    @abc.abstractmethod
    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters (allocations, relayed packets, ...); "engine" is :attr:`engine_name`."""

    @abc.abstractmethod
    def _public_ip(self, fam: int) -> str | None:
        """The address clients reach for a wildcard listener of family ``fam``."""

    # -- what it serves ---------------------------------------------------------------------

    @property
    def relaying(self) -> bool:
        """False for a STUN-only service (no turn: URLs)."""
        return True

    @property
    def no_auth(self) -> bool:
        return self.auth_plan.no_auth

    @property
    def generated_user(self) -> bool:
        """True when no credentials were given and a random user was made."""
        return self.auth_plan.generated

    def credentials(self, ttl: float = 86400) -> tuple[str, str]:
        """(username, password) for clients: a static user, else REST credentials valid for
        ``ttl`` seconds; ("", "") when only a custom authenticator knows."""
        plan = self.auth_plan
        if plan.users:
            name = next(iter(plan.users))
            return name, plan.users[name]
        if plan.secrets:
            return rest_credentials(plan.secrets[0], ttl, time.time(), "natkit")
        return "", ""

    @property
    def username(self) -> str:
        return self.credentials()[0]

    @property
    def password(self) -> str:
        return self.credentials()[1]

    def addresses_of(self, transport: str) -> list[Address]:
        return [a for t, a in self.addresses if t == transport]

    def _url_host(self, addr: Address) -> str:
        ip = addr[0]
        if ipaddress.ip_address(ip).is_unspecified:
            ip = self._public_ip(family(ip)) or ("::1" if family(ip) == 6 else "127.0.0.1")
        return bracket(ip)

    @property
    def urls(self) -> list[str]:
        """turn:/turns: URLs for an iceServers entry, one per transport and address."""
        if not self.relaying:
            return []
        scheme = {"udp": "turn:{}?transport=udp", "tcp": "turn:{}?transport=tcp"}
        scheme["tls"] = "turns:{}?transport=tcp"
        return [scheme[t].format(f"{self._url_host(a)}:{a[1]}") for t, a in self.addresses]

    @property
    def stun_urls(self) -> list[str]:
        return [f"stun:{self._url_host(a)}:{a[1]}" for a in self.addresses_of("udp")]

    def ice_server(self) -> dict[str, Any]:
        """One RTCIceServer dictionary: urls, and username/credential when they are known."""
        entry: dict[str, Any] = {"urls": self.urls or self.stun_urls}
        if self.relaying and not self.no_auth:
            username, credential = self.credentials()
            if username:
                entry["username"], entry["credential"] = username, credential
        return entry
