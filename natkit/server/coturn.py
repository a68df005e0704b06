"""coturn as an alternative TURN engine: the same options as natkit's TurnServer, run by coturn.

``CoturnServer`` takes a :class:`~natkit.server.service.TurnOptions` (or the same keyword
arguments) and is a :class:`~natkit.server.service.TurnService`, like natkit's TurnServer.
What coturn cannot express is refused with a ConfigError naming the option, never dropped: a
Python ``auth``/``peer_policy``/``quota`` object other than the built-in ones, and the options of
natkit's engine alone (``software``, ``max_permissions``, ``default_lifetime``,
``strict_channels``, ``max_connections``, ``idle_timeout``, ``metrics``, ``fast_path``) unless left
at their defaults.

``CoturnServer`` writes a ``turnserver.conf`` from ``configs/coturn/turnserver.conf.tmpl`` into a
temporary directory, starts ``turnserver -c FILE`` (no CLI, no DTLS, log and pid file in that
directory, optionally pinned to CPUs with taskset), waits until it answers a STUN Binding
request, and stops it with SIGTERM (then SIGKILL) on exit, also when the body raised; coturn
also gets a parent-death signal, so it does not outlive a killed natkit.

What maps how (coturn 4.6.1):

* ``users`` (or ``auth=StaticUsers(...)``) -> ``lt-cred-mech`` + ``user=NAME:PASS`` lines.
* ``auth_secrets`` (or ``auth=RestSecrets(...)``) -> ``use-auth-secret`` + one
  ``static-auth-secret=`` line per secret; coturn 4.6 tries every static secret in turn, so
  rotation works without its database. coturn cannot mix shared secrets with static users (the
  secret wins), so giving both is a ConfigError.
* ``user_quota``/``max_allocations`` (or ``quota=AllocationQuota(per_user, total=...)``) ->
  ``user-quota``/``total-quota``; coturn has no per-source limit.
* peer policy (``allow_peers``/``deny_peers`` or ``peer_policy=DefaultPeerPolicy(...)``) -> ``denied-peer-ip`` / ``allowed-peer-ip`` IP ranges (``a-b``, converted from
  CIDRs), computed so that coturn admits exactly the peers natkit.turn.policy.PeerPolicy admits
  (a test checks the two agree): the default special-purpose ranges come from the same netaddr
  registries; coturn checks its allowed list first, so ``allow_peers`` opens holes in the denied
  ranges and explicit ``deny_peers`` are cut out of the allowed ones so that they still win;
  coturn does not canonicalise peer addresses, so every IPv4 range is also listed in its IPv6
  forms (IPv4-mapped, -translated, -compatible, NAT64 64:ff9b::/96, 6to4); coturn refuses
  loopback peers before reading either list, hence ``allow-loopback-peers`` when an allowed
  range touches loopback.
* the relay's own addresses (listen IPs, every local address for a wildcard listener, relay
  and external IPs) -> ``denied-peer-ip`` too, unless ``allow_peers`` reopens them. coturn
  lists IPs, not ports: where natkit keeps a reopened own IP's listener ports, relay port
  range and live relayed addresses refused, coturn opens every port of it, and it has no rule
  against a request that comes from one of its own relays (a nested allocation).
* ``tls_cert``/``tls_key`` are made absolute (coturn runs in its own directory) and must be
  readable; a transport that does not come up (coturn logs an error and goes on without it)
  stops the start with coturn's reason: no URL is ever given for a listener that is not there.
* ``alternate_ip`` -> a second ``listening-ip`` and ``alt-listening-port``: coturn serves RFC 5780
  (CHANGE-REQUEST, OTHER-ADDRESS) only with two listening IPs of one family.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import resource
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import netaddr  # type: ignore[import-untyped]

from natkit.errors import ConfigError, PrerequisiteError
from natkit.server._local import local_addresses
from natkit.server.service import (
    AuthPlan,
    TurnOptions,
    TurnService,
    as_list,
    bracket,
    build_options,
    check_ip,
    family,
    plan_auth,
)
from natkit.turn.policy import EXTRA_SPECIAL, DefaultPeerPolicy
from natkit.turn.quota import AllocationQuota

Address = tuple[str, int]

# configs/coturn/turnserver.conf.tmpl; the package carries it (a link here, a copy in a wheel).
TEMPLATE = Path(__file__).with_name("turnserver.conf.tmpl").resolve()
INSTALL_HINT = "coturn is not installed: apt-get install coturn"

# IPv6 forms that embed an IPv4 address, which natkit's policy (natkit.turn.policy.canonical_peer)
# judges by the IPv4 address inside: (first address of the form, shift of the IPv4 bits, the
# lowest IPv4 value it applies to). coturn does not canonicalise, so the coturn engine lists the
# embedded forms of every IPv4 range explicitly.
_EMBEDDINGS = (
    (0xFFFF << 32, 0, 0),  # IPv4-mapped ::ffff:a.b.c.d
    (0xFFFF << 48, 0, 0),  # IPv4-translated ::ffff:0:a.b.c.d
    (int(netaddr.IPAddress("64:ff9b::")), 0, 0),  # NAT64 well-known prefix
    (0x2002 << 112, 80, 0),  # 6to4 2002:AABB:CCDD::/48
    (0, 0, 0x10000),  # IPv4-compatible ::a.b.c.d (not :: and ::1)
)


def _embedding_domain() -> netaddr.IPSet:
    return _embed(netaddr.IPSet(["0.0.0.0/0"]))


def _embed(v4: netaddr.IPSet) -> netaddr.IPSet:
    """Every IPv6 form that natkit's policy canonicalises into an address of ``v4``."""
    out = netaddr.IPSet()
    for r in v4.iter_ipranges():
        if r.version != 4:
            continue
        for base, shift, low in _EMBEDDINGS:
            first = max(r.first, low)
            if first <= r.last:
                lo = base | (first << shift)
                hi = base | (r.last << shift) | ((1 << shift) - 1)
                out.add(netaddr.IPRange(netaddr.IPAddress(lo, 6), netaddr.IPAddress(hi, 6)))
    return out


def _v4(ranges: netaddr.IPSet) -> netaddr.IPSet:
    return ranges & netaddr.IPSet(["0.0.0.0/0"])


def special_peers() -> netaddr.IPSet:
    """The addresses natkit's default policy refuses, as one set, raw and embedded forms.

    natkit.turn.policy.is_special is ``not is_global() or is_multicast() or is_reserved()``
    from netaddr's IANA registries; this is the same rule as ranges (a test checks the two
    agree), with IPv6 forms of special IPv4 addresses added and the embedding prefixes
    themselves left to the IPv4 address inside, as natkit canonicalises.
    """
    from netaddr import ip as nip

    v4 = (
        netaddr.IPSet(nip.IPV4_NOT_GLOBALLY_REACHABLE)
        - netaddr.IPSet(nip.IPV4_NOT_GLOBALLY_REACHABLE_EXCEPTIONS)
    ) | netaddr.IPSet([nip.IPV4_MULTICAST, *nip.IPV4_RESERVED])
    v6 = (
        netaddr.IPSet(nip.IPV6_NOT_GLOBALLY_REACHABLE)
        - netaddr.IPSet(nip.IPV6_NOT_GLOBALLY_REACHABLE_EXCEPTIONS)
    ) | netaddr.IPSet([nip.IPV6_MULTICAST, *nip.IPV6_RESERVED])
    v6 |= netaddr.IPSet(EXTRA_SPECIAL.iter_cidrs())
    return v4 | (v6 - _embedding_domain()) | _embed(v4)


def default_denied_peers() -> list[str]:
    """The special-purpose ranges natkit refuses as TURN peers by default, as CIDR strings."""
    return [str(c) for c in special_peers().iter_cidrs()]


def _ipset(cidrs: Iterable[str], param: str) -> netaddr.IPSet:
    out = netaddr.IPSet()
    for text in cidrs:
        try:
            out.add(netaddr.IPNetwork(str(text)))
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise ConfigError(
                f"bad peer range '{text}': expected an IP network like 10.0.0.0/8", param=param
            ) from None
    return out


def _range_lines(key: str, ranges: netaddr.IPSet) -> list[str]:
    lines = []
    for r in ranges.iter_ipranges():
        first, last = netaddr.IPAddress(r.first, r.version), netaddr.IPAddress(r.last, r.version)
        lines.append(f"{key}={first}" if first == last else f"{key}={first}-{last}")
    return lines


def coturn_peer_policy(
    allow_peers: Sequence[str] = (),
    deny_peers: Sequence[str] = (),
    *,
    defaults: bool = True,
    own: Sequence[str] = (),
) -> list[str]:
    """natkit's peer policy as turnserver.conf lines (denied-peer-ip / allowed-peer-ip ranges).

    natkit decides: explicit deny, then explicit allow, then the special-purpose rule, each on
    the raw and the canonical address. coturn checks its allowed list first, then its denied
    list, on the raw address only; so the explicit denies are cut out of the allowed ranges and
    every list carries the embedded IPv6 forms of its IPv4 ranges.
    """
    deny = _ipset(deny_peers, "deny_peers")
    allow = _ipset(allow_peers, "allow_peers")
    deny |= _embed(_v4(deny))
    allow = (allow | _embed(_v4(allow))) - deny
    mine = _ipset([*own, "0.0.0.0/32", "::/128"], "listen")
    mine |= _embed(_v4(mine))
    denied = (special_peers() if defaults else netaddr.IPSet()) | deny | mine
    lines = _range_lines("denied-peer-ip", denied) + _range_lines("allowed-peer-ip", allow)
    # coturn refuses loopback and (with no-multicast-peers) multicast before reading its lists
    if allow & netaddr.IPSet(["127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104"]):
        lines.append("allow-loopback-peers")
    if not allow & netaddr.IPSet(["224.0.0.0/4", "ff00::/8"]):
        lines.append("no-multicast-peers")
    return lines


def _readable(path: str | os.PathLike[str] | None, param: str) -> Path | None:
    """``path`` made absolute (coturn runs in its own directory), or a ConfigError in one line
    when it is not a readable file."""
    if not path:
        return None
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(f"{path}: no such file", param=param)
    if not os.access(resolved, os.R_OK):
        raise ConfigError(f"{path}: not readable by this user", param=param)
    return resolved


def _stream_listening(address: Address, timeout: float, *, tls: bool = False) -> bool:
    """True once a TCP connection to ``address`` (a wildcard: its loopback) is accepted and,
    with ``tls``, completes a TLS handshake (the certificate is not judged here)."""
    import ssl

    ip, port = address
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified:
        ip = "::1" if addr.version == 6 else "127.0.0.1"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=1.0) as sock:
                if tls:
                    with ctx.wrap_socket(sock):
                        pass
                return True
        except (OSError, ssl.SSLError):
            time.sleep(0.2)
    return False


def free_port(host: str = "127.0.0.1", span: int = 1) -> int:
    """A port free for UDP and TCP on ``host`` (and the ``span - 1`` ports after it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            base = int(probe.getsockname()[1])
        if base + span > 65535:
            continue
        if all(_port_free(host, family, base + k) for k in range(span)):
            return base
    raise PrerequisiteError(f"no free port on {host}: free some ports or pick one")


def _port_free(host: str, family: int, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def wait_for_binding(
    address: Address, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> str:
    """Send Binding requests to ``address`` until one is answered: "ok", "exited" or "timeout".

    A wildcard address is asked on loopback. Stops early when ``process`` exits.
    """
    from natkit.stun import Class, Message, Method, StunParseError, decode

    ip, port = address
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified:
        ip = "::1" if addr.version == 6 else "127.0.0.1"
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                return "exited"
            request = Message(Method.BINDING, Class.REQUEST)
            with contextlib.suppress(OSError):
                sock.sendto(request.encode(), (ip, port))
            end = time.monotonic() + 0.1
            while time.monotonic() < end:
                try:
                    data = sock.recv(2048)
                except OSError:  # timeout, or ICMP port unreachable while it starts
                    break
                with contextlib.suppress(StunParseError):
                    answer = decode(data)
                    if (
                        answer.transaction_id == request.transaction_id
                        and answer.cls == Class.SUCCESS
                    ):
                        return "ok"
    return "timeout"


_WORKDIR_PREFIX = "natkit-coturn-"


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _sweep_stale_workdirs(min_age: float = 60.0) -> None:
    """Remove the temp dirs of coturns whose owner was killed before it could clean up.

    A dir is stale when its coturn (pid file) is gone, or when it has no pid file and is
    older than ``min_age`` seconds (a start that never got that far).
    """
    base = Path(tempfile.gettempdir())
    now = time.time()
    for workdir in list(base.glob(_WORKDIR_PREFIX + "*"))[:1000]:
        try:
            if now - workdir.stat().st_mtime < min_age:
                continue
            pid = int((workdir / "turnserver.pid").read_text().strip() or 0)
        except FileNotFoundError:
            pid = 0
        except (OSError, ValueError):
            continue
        if pid and _running(pid):
            continue
        shutil.rmtree(workdir, ignore_errors=True)


#: options of natkit's engine that coturn cannot express (refused unless at their default)
NATKIT_ONLY = (
    "software",
    "max_permissions",
    "max_channels",
    "default_lifetime",
    "strict_channels",
    "rest_max_ttl",
    "max_connections",
    "max_connections_per_source",
    "first_message_timeout",
    "allocate_timeout",
    "idle_timeout",
    "error_rate",
    "error_burst",
    "metrics",
    "fast_path",
    "udp_gro",
    "c_allocate",
)
_DEFAULTS = TurnOptions()


class CoturnServer(TurnService):
    """coturn run with natkit's TurnServer options; the same attributes once started.

    ``with CoturnServer(...)`` / ``async with CoturnServer(...)``, or start() and stop().
    ``listen`` (``"ip:port"`` or tuples; port 0 picks a free one) is served on UDP and TCP;
    coturn has one listening port, so further ports become ``aux-server`` endpoints. The
    keyword arguments after ``options`` are coturn's own; the rest are :class:`TurnOptions`.
    Options coturn lacks are refused with a ConfigError naming them, never dropped.
    """

    engine_name = "coturn"

    def __init__(
        self,
        listen: Sequence[str | Address] | None = None,
        *,
        options: TurnOptions | None = None,
        alternate_ip: str | None = None,
        stun_only: bool = False,
        cpu: str | int | None = None,
        relay_threads: int | None = None,
        extra_config: Sequence[str] = (),
        binary: str = "turnserver",
        start_timeout: float = 10.0,
        template: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> None:
        opts = self.options = build_options(options, listen, overrides)
        for name in NATKIT_ONLY:
            if getattr(opts, name) != getattr(_DEFAULTS, name):
                raise ConfigError(
                    "the coturn engine cannot do this (natkit's engine only): drop it or use "
                    "the natkit engine",
                    param=name,
                )
        self.listen: list[Address] = opts.listen_addresses()
        self.realm = opts.realm
        self.stun_only = stun_only
        self.auth_plan = self._auth(opts, stun_only)
        self.users = self.auth_plan.users
        self.auth_secrets = self.auth_plan.secrets
        self.relay_ips = [check_ip(ip, "relay_ip") for ip in as_list(opts.relay_ip)]
        self.external_ips = [check_ip(ip, "external_ip") for ip in as_list(opts.external_ip)]
        self.min_port, self.max_port = opts.min_port or 49152, opts.max_port or 65535
        self.allow_peers, self.deny_peers, self.peer_defaults = self._peers(opts)
        self.tls_cert = _readable(opts.tls_cert, "tls_cert")
        self.tls_key = _readable(opts.tls_key, "tls_key")
        self.tls_port, self.tcp = opts.tls_port, opts.tcp
        self.user_quota, self.max_allocations = self._quota(
            opts.replace(min_port=self.min_port, max_port=self.max_port), self.auth_plan
        )
        self.bandwidth = opts.bandwidth
        self.max_lifetime, self.nonce_lifetime = opts.max_lifetime, opts.nonce_lifetime
        self.alternate_ip = check_ip(alternate_ip, "alternate_ip") if alternate_ip else None
        self.cpu, self.relay_threads = cpu, relay_threads
        self.extra_config = list(extra_config)
        self.binary, self.start_timeout = binary, start_timeout
        self.template = Path(template) if template else TEMPLATE
        self._validate()
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.addresses: list[tuple[str, Address]] = []
        self.alternate_addresses: list[Address] = []

    # -- configuration ------------------------------------------------------------------

    @staticmethod
    def _auth(opts: TurnOptions, stun_only: bool) -> AuthPlan:
        if (
            stun_only
            and opts.auth is None
            and not (opts.users or opts.users_file or opts.auth_secrets)
        ):
            # STUN only: nothing to authenticate, and no user to generate
            return plan_auth(opts.replace(no_auth=True))
        plan = plan_auth(opts)
        if plan.custom:
            raise ConfigError(
                "coturn cannot run a Python authenticator: give users, users_file or "
                "auth_secrets (or StaticUsers / RestSecrets / NoAuth), or use the natkit engine",
                param="auth",
            )
        if plan.users and plan.secrets and not plan.no_auth:
            raise ConfigError(
                "coturn cannot use static users and REST API shared secrets together (the "
                "secret overrides the users): give one of them, or use the natkit engine",
                param="auth_secrets",
            )
        return plan

    @staticmethod
    def _peers(opts: TurnOptions) -> tuple[list[str], list[str], bool]:
        """(allowed CIDRs, denied CIDRs, whether the special-purpose ranges are denied)."""
        policy = opts.peer_policy
        if policy is None:
            allow, deny = [str(c) for c in opts.allow_peers], [str(c) for c in opts.deny_peers]
            coturn_peer_policy(allow, deny)  # a bad CIDR fails here, naming the option
            return allow, deny, True
        if type(policy) is DefaultPeerPolicy:
            lists = policy.describe()
            return lists["allow"], lists["deny"], not policy.allow_special
        raise ConfigError(
            "coturn cannot run a Python peer policy: give allow_peers/deny_peers (or a "
            "DefaultPeerPolicy), or use the natkit engine",
            param="peer_policy",
        )

    @staticmethod
    def _quota(opts: TurnOptions, plan: AuthPlan) -> tuple[int | None, int | None]:
        quota = opts.quota
        if quota is None:
            return opts.resolved_user_quota(plan), opts.max_allocations
        if type(quota) is AllocationQuota and quota.per_source is None:
            return quota.per_user, quota.total_limit
        raise ConfigError(
            "coturn can limit allocations per user and in total only: give user_quota/"
            "max_allocations (or an AllocationQuota without per_source), or use the natkit engine",
            param="quota",
        )

    def _validate(self) -> None:
        if not self.listen:
            raise ConfigError("nothing to listen on: give at least one address", param="listen")
        if not 0 < self.min_port <= self.max_port <= 65535:
            raise ConfigError(
                f"bad relay port range {self.min_port}-{self.max_port}: "
                "need 1 <= min_port <= max_port <= 65535",
                param="min_port",
            )
        for name, value in self.users.items():
            if ":" in name or any(c in name + value for c in "\n\r"):
                raise ConfigError(
                    f"bad user '{name}': coturn user names cannot hold ':' or newlines",
                    param="users",
                )
        if any(c in self.realm for c in "\n\r"):
            raise ConfigError("the realm cannot hold newlines", param="realm")
        if any(c in value for value in self.auth_secrets for c in "\n\r"):
            raise ConfigError("auth secrets cannot hold newlines", param="auth_secrets")
        if len(self.external_ips) > 1 and len(self.external_ips) != len(self.relay_ips):
            raise ConfigError(
                "several external IPs need as many relay IPs (coturn maps each external IP "
                "to one relay IP): give a relay IP for each external IP",
                param="external_ip",
            )
        if self.alternate_ip:
            primary = self.listen[0][0]
            if family(primary) != family(self.alternate_ip):
                raise ConfigError(
                    f"alternate IP {self.alternate_ip} must be of the same family as {primary}",
                    param="alternate_ip",
                )
            if ipaddress.ip_address(primary).is_unspecified:
                raise ConfigError(
                    "RFC 5780 mode needs a specific listen IP, not a wildcard", param="listen"
                )

    def _resolve_ports(self) -> None:
        """Pick free ports for port 0; coturn has one listening port shared by all its IPs."""
        span = 2 if self.alternate_ip else 1
        port = self.listen[0][1] or free_port(self.listen[0][0], span)
        self.listen = [(ip, p or port) for ip, p in self.listen]
        if self.tls_cert and not self.tls_port:
            self.tls_port = free_port(self.listen[0][0])

    def render_config(self, workdir: Path) -> str:
        """The turnserver.conf text for these options, with files placed in ``workdir``."""
        port = self.listen[0][1]
        listening = [f"listening-port={port}"]
        for ip, p in self.listen:
            listening.append(f"listening-ip={ip}" if p == port else f"aux-server={bracket(ip)}:{p}")
        if self.alternate_ip:
            listening += [f"listening-ip={self.alternate_ip}", f"alt-listening-port={port + 1}"]
        else:
            listening.append("no-rfc5780")
        if not self.tcp:
            listening.append("no-tcp")
        relaying = [f"relay-ip={ip}" for ip in self.relay_ips]
        if len(self.external_ips) == 1 and len(self.relay_ips) <= 1:
            mapped = f"/{self.relay_ips[0]}" if self.relay_ips else ""
            relaying.append(f"external-ip={self.external_ips[0]}{mapped}")
        elif self.external_ips:
            relaying += [f"external-ip={e}/{r}" for e, r in zip(self.external_ips, self.relay_ips)]
        if self.relay_threads is not None:
            relaying.append(f"relay-threads={self.relay_threads}")
        if self.no_auth:
            auth = ["no-auth"]
        elif self.auth_secrets:
            auth = ["use-auth-secret", *(f"static-auth-secret={s}" for s in self.auth_secrets)]
        else:
            auth = ["lt-cred-mech", *(f"user={n}:{p}" for n, p in self.users.items())]
        auth += [f"stale-nonce={self.nonce_lifetime}", f"max-allocate-lifetime={self.max_lifetime}"]
        if self.user_quota is not None:
            auth.append(f"user-quota={self.user_quota}")
        if self.max_allocations is not None:
            auth.append(f"total-quota={self.max_allocations}")
        if self.bandwidth is not None:
            auth.append(f"max-bps={self.bandwidth}")
        if self.tls_cert:
            tls = [
                f"tls-listening-port={self.tls_port}",
                f"cert={self.tls_cert}",
                f"pkey={self.tls_key}",
            ]
        else:
            tls = ["no-tls"]
        mode = ["stun-only"] if self.stun_only else []
        fields = {
            "listening": "\n".join(listening),
            "relaying": "\n".join(relaying),
            "min_port": str(self.min_port),
            "max_port": str(self.max_port),
            "realm": self.realm,
            "auth": "\n".join(auth),
            "peer_policy": "\n".join(
                coturn_peer_policy(
                    self.allow_peers,
                    self.deny_peers,
                    defaults=self.peer_defaults,
                    own=self.own_addresses(),
                )
            ),
            "tls": "\n".join(tls),
            "mode": "\n".join(mode),
            "log_file": str(workdir / "turnserver.log"),
            "pidfile": str(workdir / "turnserver.pid"),
            "userdb": str(workdir / "turndb"),
            "extra": "\n".join(self.extra_config),
        }
        try:
            text = self.template.read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the coturn template {self.template}: {exc.strerror}",
                param="template",
            ) from None
        try:
            return string.Template(text).substitute(fields)
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"bad coturn template {self.template}: unknown or malformed field {exc}",
                param="template",
            ) from None

    def own_addresses(self) -> list[str]:
        """The relay's own IPs (refused as peers): listen IPs, every local address of a family
        served on a wildcard, relay and external IPs."""
        out: list[str] = []
        wildcard = {family(ip) for ip, _ in self.listen if ipaddress.ip_address(ip).is_unspecified}
        if wildcard:
            out += [a for a in local_addresses() if family(a.split("/")[0]) in wildcard]
        out += [ip for ip, _ in self.listen if not ipaddress.ip_address(ip).is_unspecified]
        out += self.relay_ips + self.external_ips
        if self.alternate_ip:
            out.append(self.alternate_ip)
        return out

    # -- what it serves (TurnService gives the URLs, credentials and iceServers entry) ---

    @property
    def relaying(self) -> bool:
        return not self.stun_only

    def _public_ip(self, fam: int) -> str | None:
        same = [a for a in self.external_ips + self.relay_ips if family(a) == fam]
        return same[0] if same else None

    def stats(self) -> dict[str, Any]:
        """What natkit knows of a coturn process (coturn keeps its counters to itself)."""
        proc = self.process
        return {
            "engine": self.engine_name,
            "running": proc is not None and proc.poll() is None,
            "pid": self.pid,
        }

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def config_path(self) -> Path | None:
        return self.workdir / "turnserver.conf" if self.workdir else None

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "turnserver.log" if self.workdir else None

    def log_tail(self, lines: int = 5) -> str:
        """The last log lines of coturn (its log file and its stdout/stderr)."""
        if not self.workdir:
            return ""
        text = ""
        for name in ("turnserver.log", "stdout.log"):
            with contextlib.suppress(OSError):
                text += (self.workdir / name).read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """turnserver -c FILE behind exec wrappers from util-linux, when they are there:
        prlimit (one relay socket per allocation: the soft file limit raised to the hard one), setpriv
        --pdeathsig (coturn dies with the thread that started it, even on SIGKILL) and
        taskset (``cpu`` pinning)."""
        assert self.config_path is not None
        prefix: list[str] = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if shutil.which("prlimit") and soft < hard:  # raising soft to hard needs no privilege
            prefix += ["prlimit", f"--nofile={hard}:{hard}", "--"]
        if shutil.which("setpriv"):
            prefix += ["setpriv", "--pdeathsig", "TERM", "--"]
        if self.cpu is not None:
            prefix += ["taskset", "-c", str(self.cpu)]
        return [*prefix, self.binary, "-c", str(self.config_path)]

    def start(self) -> CoturnServer:
        """Write the config, start coturn, wait for a Binding answer. Raises
        PrerequisiteError when coturn is missing or does not come up."""
        self._spawn()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        if self.process is not None:
            raise RuntimeError("coturn is already running")
        if shutil.which(self.binary) is None:
            raise PrerequisiteError(INSTALL_HINT)
        if self.cpu is not None and shutil.which("taskset") is None:
            raise PrerequisiteError(
                "taskset is not installed (CPU pinning): apt-get install util-linux"
            )
        self._resolve_ports()
        _sweep_stale_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        try:
            self.config_path.write_text(self.render_config(self.workdir))  # type: ignore[union-attr]
            with open(self.workdir / "stdout.log", "wb") as out:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,  # Ctrl-C in a terminal reaches natkit, which stops it
                )
        except BaseException:
            self.stop()
            raise
        self.addresses = [("udp", a) for a in self.listen]
        if self.tcp:
            self.addresses += [("tcp", a) for a in self.listen]
        if self.tls_cert:
            self.addresses += [("tls", (ip, self.tls_port)) for ip, _ in self.listen[:1]]
        if self.alternate_ip:
            port = self.listen[0][1]
            self.alternate_addresses = [
                (self.alternate_ip, port),
                (self.alternate_ip, port + 1),
                (self.listen[0][0], port + 1),
            ]

    def _wait_ready(self) -> None:
        assert self.process is not None
        ip, port = self.listen[0]
        status = wait_for_binding((ip, port), self.start_timeout, self.process)
        if status == "exited":
            raise PrerequisiteError(
                f"coturn exited with status {self.process.returncode} at start: {self._reason()}"
            )
        if status == "timeout":
            raise PrerequisiteError(
                f"coturn did not answer a Binding request on {bracket(ip)}:{port} within "
                f"{self.start_timeout:g} s: {self._reason()}"
            )
        for transport, addr in self.addresses:
            if transport == "udp" and addr != (ip, port):
                up = wait_for_binding(addr, 2.0, self.process) == "ok"
            elif transport in ("tcp", "tls"):
                up = _stream_listening(addr, self.start_timeout, tls=transport == "tls")
            else:
                continue
            if not up:
                raise PrerequisiteError(
                    f"coturn did not come up on {transport} {bracket(addr[0])}:{addr[1]}: "
                    f"{self._reason(transport)}"
                )

    def _reason(self, transport: str = "") -> str:
        tail = self.log_tail(80).splitlines()
        errors = [
            line
            for line in tail
            if "ERROR" in line or "error" in line or "Cannot" in line or "cannot" in line
        ]
        if transport == "tls":
            tls = [line for line in errors if "cert" in line.lower() or "key" in line.lower()]
            errors = tls or errors
        return (errors or tail or ["no log output"])[-1].strip()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; remove the temp dir. Safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> CoturnServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> CoturnServer:
        self._spawn()  # in the loop's thread: coturn's parent-death signal follows this thread
        try:
            await asyncio.to_thread(self._wait_ready)
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
