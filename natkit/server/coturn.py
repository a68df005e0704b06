"""coturn as an alternative TURN engine: the same options as natkit's TurnServer, run by coturn.

``CoturnServer`` writes a ``turnserver.conf`` from ``configs/coturn/turnserver.conf.tmpl`` into a
temporary directory, starts ``turnserver -c FILE`` (no CLI, no DTLS, log and pid file in that
directory, optionally pinned to CPUs with taskset), waits until it answers a STUN Binding
request, and stops it with SIGTERM (then SIGKILL) on exit, also when the body raised; coturn
also gets a parent-death signal, so it does not outlive a killed natkit.

What maps how (coturn 4.6.1):

* ``users`` -> ``lt-cred-mech`` + ``user=NAME:PASS`` lines.
* ``auth_secrets`` -> ``use-auth-secret`` + one ``static-auth-secret=`` line per secret; coturn
  4.6 tries every static secret in turn, so rotation works without its database. coturn cannot
  mix shared secrets with static users (the secret wins), so giving both is a UsageError.
* peer policy -> ``denied-peer-ip`` / ``allowed-peer-ip`` IP ranges (``a-b``, converted from
  CIDRs), computed so that coturn admits exactly the peers natkit.turn.policy.PeerPolicy admits
  (a test checks the two agree): the default special-purpose ranges come from the same netaddr
  registries; coturn checks its allowed list first, so ``allow_peers`` opens holes in the denied
  ranges and explicit ``deny_peers`` are cut out of the allowed ones so that they still win;
  coturn does not canonicalise peer addresses, so every IPv4 range is also listed in its IPv6
  forms (IPv4-mapped, -translated, -compatible, NAT64 64:ff9b::/96, 6to4); coturn refuses
  loopback peers before reading either list, hence ``allow-loopback-peers`` when an allowed
  range touches loopback.
* ``alternate_ip`` -> a second ``listening-ip`` and ``alt-listening-port``: coturn serves RFC 5780
  (CHANGE-REQUEST, OTHER-ADDRESS) only with two listening IPs of one family.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import resource
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import netaddr  # type: ignore[import-untyped]

from natkit.errors import NatkitError, UsageError
from natkit.server.stun import DEFAULT_PORT, DEFAULT_TLS_PORT, parse_listen

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
    return v4 | (v6 - _embedding_domain()) | _embed(v4)


def default_denied_peers() -> list[str]:
    """The special-purpose ranges natkit refuses as TURN peers by default, as CIDR strings."""
    return [str(c) for c in special_peers().iter_cidrs()]


def _ipset(cidrs: Iterable[str], what: str) -> netaddr.IPSet:
    out = netaddr.IPSet()
    for text in cidrs:
        try:
            out.add(netaddr.IPNetwork(str(text)))
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise UsageError(
                f"bad {what} '{text}': expected an IP network like 10.0.0.0/8"
            ) from None
    return out


def _range_lines(key: str, ranges: netaddr.IPSet) -> list[str]:
    lines = []
    for r in ranges.iter_ipranges():
        first, last = netaddr.IPAddress(r.first, r.version), netaddr.IPAddress(r.last, r.version)
        lines.append(f"{key}={first}" if first == last else f"{key}={first}-{last}")
    return lines


def coturn_peer_policy(
    allow_peers: Sequence[str] = (), deny_peers: Sequence[str] = (), *, defaults: bool = True
) -> list[str]:
    """natkit's peer policy as turnserver.conf lines (denied-peer-ip / allowed-peer-ip ranges).

    natkit decides: explicit deny, then explicit allow, then the special-purpose rule, each on
    the raw and the canonical address. coturn checks its allowed list first, then its denied
    list, on the raw address only; so the explicit denies are cut out of the allowed ranges and
    every list carries the embedded IPv6 forms of its IPv4 ranges.
    """
    deny = _ipset(deny_peers, "deny-peer range")
    allow = _ipset(allow_peers, "allow-peer range")
    deny |= _embed(_v4(deny))
    allow = (allow | _embed(_v4(allow))) - deny
    denied = (special_peers() if defaults else netaddr.IPSet()) | deny
    lines = _range_lines("denied-peer-ip", denied) + _range_lines("allowed-peer-ip", allow)
    # coturn refuses loopback and (with no-multicast-peers) multicast before reading its lists
    if allow & netaddr.IPSet(["127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104"]):
        lines.append("allow-loopback-peers")
    if not allow & netaddr.IPSet(["224.0.0.0/4", "ff00::/8"]):
        lines.append("no-multicast-peers")
    return lines


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
    raise NatkitError(f"no free port on {host}")


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


def _check_ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"bad {what} '{text}': not an IP address") from None


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


def _bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class CoturnServer:
    """coturn run with natkit's TurnServer options; the same attributes once started.

    ``with CoturnServer(...)`` / ``async with CoturnServer(...)``, or start() and stop().
    ``listen`` (``"ip:port"`` or tuples; port 0 picks a free one) is served on UDP and TCP;
    coturn has one listening port, so further ports become ``aux-server`` endpoints.
    Options natkit has and coturn lacks are refused with a UsageError, never dropped.
    """

    def __init__(
        self,
        listen: Sequence[str | Address] | None = None,
        *,
        realm: str = "natkit",
        users: Mapping[str, str] | None = None,
        users_file: str | os.PathLike[str] | None = None,
        auth_secrets: Sequence[str] = (),
        relay_ip: str | Sequence[str] | None = None,
        external_ip: str | Sequence[str] | None = None,
        min_port: int = 0,
        max_port: int = 0,
        allow_peers: Iterable[str] = (),
        deny_peers: Iterable[str] = (),
        no_auth: bool = False,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_port: int = DEFAULT_TLS_PORT,
        tcp: bool = True,
        user_quota: int | None = None,
        max_allocations: int | None = None,
        bandwidth: int | None = None,
        max_lifetime: int = 3600,
        nonce_lifetime: int = 600,
        alternate_ip: str | None = None,
        stun_only: bool = False,
        cpu: str | int | None = None,
        relay_threads: int | None = None,
        extra_config: Sequence[str] = (),
        binary: str = "turnserver",
        start_timeout: float = 10.0,
        template: str | os.PathLike[str] | None = None,
    ) -> None:
        specs = listen if listen is not None else [("0.0.0.0", DEFAULT_PORT)]
        self.listen: list[Address] = [parse_listen(s) for s in specs]
        self.realm = realm
        self.users: dict[str, str] = {}
        if users_file:
            from natkit.server.turn import load_users_file

            self.users.update(load_users_file(users_file))
        self.users.update(users or {})
        self.auth_secrets = list(auth_secrets)
        self.relay_ips = [_check_ip(ip, "relay IP") for ip in _as_list(relay_ip)]
        self.external_ips = [_check_ip(ip, "external IP") for ip in _as_list(external_ip)]
        self.min_port, self.max_port = min_port or 49152, max_port or 65535
        self.allow_peers, self.deny_peers = list(allow_peers), list(deny_peers)
        self.no_auth, self.stun_only = no_auth, stun_only
        self.tls_cert, self.tls_key, self.tls_port, self.tcp = tls_cert, tls_key, tls_port, tcp
        self.user_quota, self.max_allocations, self.bandwidth = (
            user_quota,
            max_allocations,
            bandwidth,
        )
        self.max_lifetime, self.nonce_lifetime = max_lifetime, nonce_lifetime
        self.alternate_ip = _check_ip(alternate_ip, "alternate IP") if alternate_ip else None
        self.cpu, self.relay_threads = cpu, relay_threads
        self.extra_config = list(extra_config)
        self.binary, self.start_timeout = binary, start_timeout
        self.template = Path(template) if template else TEMPLATE
        if not (self.users or self.auth_secrets or self.no_auth or self.stun_only):
            # like TurnServer: a generated user rather than an open relay
            self.users = {"natkit": secrets.token_urlsafe(12)}
        self._validate()
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.addresses: list[tuple[str, Address]] = []
        self.alternate_addresses: list[Address] = []

    # -- configuration ------------------------------------------------------------------

    def _validate(self) -> None:
        if not self.listen:
            raise UsageError("nothing to listen on: give at least one --listen ADDR:PORT")
        if not 0 < self.min_port <= self.max_port <= 65535:
            raise UsageError(
                f"bad relay port range {self.min_port}-{self.max_port}: "
                "need 1 <= min-port <= max-port <= 65535"
            )
        if self.users and self.auth_secrets:
            raise UsageError(
                "coturn cannot use static users and REST API shared secrets together (the secret "
                "overrides the users): give one of them, or use --engine natkit"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UsageError("TLS needs both a certificate and a key (--tls-cert F --tls-key F)")
        for name, value in self.users.items():
            if ":" in name or any(c in name + value for c in "\n\r"):
                raise UsageError(
                    f"bad user '{name}': coturn user names cannot hold ':' or newlines"
                )
        for value in [self.realm, *self.auth_secrets]:
            if any(c in value for c in "\n\r"):
                raise UsageError("realm and auth secrets cannot hold newlines")
        if len(self.external_ips) > 1 and len(self.external_ips) != len(self.relay_ips):
            raise UsageError(
                "several external IPs need as many relay IPs (coturn maps each external IP "
                "to one relay IP): give --relay-ip for each --external-ip"
            )
        if self.alternate_ip:
            primary = self.listen[0][0]
            if _family(primary) != _family(self.alternate_ip):
                raise UsageError(
                    f"alternate IP {self.alternate_ip} must be of the same family as {primary}"
                )
            if ipaddress.ip_address(primary).is_unspecified:
                raise UsageError("RFC 5780 mode needs a specific listen IP, not a wildcard")

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
            listening.append(
                f"listening-ip={ip}" if p == port else f"aux-server={_bracket(ip)}:{p}"
            )
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
            "peer_policy": "\n".join(coturn_peer_policy(self.allow_peers, self.deny_peers)),
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
            raise UsageError(
                f"cannot read the coturn template {self.template}: {exc.strerror}"
            ) from None
        try:
            return string.Template(text).substitute(fields)
        except (KeyError, ValueError) as exc:
            raise UsageError(
                f"bad coturn template {self.template}: unknown or malformed field {exc}"
            ) from None

    # -- what it serves (the same attributes as natkit's TurnServer) ----------------------

    def addresses_of(self, transport: str) -> list[Address]:
        return [a for t, a in self.addresses if t == transport]

    def _url_host(self, addr: Address) -> str:
        ip = addr[0]
        if ipaddress.ip_address(ip).is_unspecified:
            same = [a for a in self.external_ips + self.relay_ips if _family(a) == _family(ip)]
            ip = same[0] if same else ("::1" if _family(ip) == 6 else "127.0.0.1")
        return _bracket(ip)

    @property
    def urls(self) -> list[str]:
        """turn:/turns: URLs for an iceServers entry, one per transport and address."""
        if self.stun_only:
            return []
        scheme = {"udp": "turn:{}?transport=udp", "tcp": "turn:{}?transport=tcp"}
        scheme["tls"] = "turns:{}?transport=tcp"
        return [scheme[t].format(f"{self._url_host(a)}:{a[1]}") for t, a in self.addresses]

    @property
    def stun_urls(self) -> list[str]:
        return [f"stun:{self._url_host(a)}:{a[1]}" for a in self.addresses_of("udp")]

    def credentials(self, ttl: float = 86400) -> tuple[str, str]:
        """(username, password) for clients: a static user, else REST credentials."""
        if self.users:
            name = next(iter(self.users))
            return name, self.users[name]
        if self.auth_secrets:
            from natkit.turn.auth import rest_credentials

            return rest_credentials(self.auth_secrets[0], ttl, time.time(), "natkit")
        return "", ""

    @property
    def username(self) -> str:
        return self.credentials()[0]

    @property
    def password(self) -> str:
        return self.credentials()[1]

    def ice_server(self) -> dict[str, Any]:
        """One RTCIceServer dictionary: urls, username, credential."""
        entry: dict[str, Any] = {"urls": self.urls or self.stun_urls}
        if not (self.no_auth or self.stun_only):
            entry["username"], entry["credential"] = self.credentials()
        return entry

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
        """Write the config, start coturn, wait for a Binding answer. Raises UsageError."""
        self._spawn()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        if self.process is not None:
            raise NatkitError("coturn is already running")
        if shutil.which(self.binary) is None:
            raise UsageError(INSTALL_HINT)
        if self.cpu is not None and shutil.which("taskset") is None:
            raise UsageError("taskset is not installed (CPU pinning): apt-get install util-linux")
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
            raise UsageError(
                f"coturn exited with status {self.process.returncode} at start: {self._reason()}"
            )
        if status == "timeout":
            raise UsageError(
                f"coturn did not answer a Binding request on {_bracket(ip)}:{port} within "
                f"{self.start_timeout:g} s: {self._reason()}"
            )

    def _reason(self) -> str:
        tail = self.log_tail(40).splitlines()
        errors = [line for line in tail if "ERROR" in line or "error" in line or "Cannot" in line]
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
