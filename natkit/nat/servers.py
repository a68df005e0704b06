"""STUN server names for the probe: parse ``stun:``/``stuns:``/``host[:port]`` and resolve them.

Names are resolved with dnspython: the SRV record first (``_stun._udp`` for stun:, ``_stuns._tcp``
for stuns:, RFC 8489 §8 / RFC 7064) when no port is given, then A/AAAA. Names dnspython cannot
answer (``localhost``, /etc/hosts entries, no resolver configured) fall back to the system
resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from natkit.errors import ConfigError, UsageError

Address = tuple[str, int]

STUN_PORT = 3478
STUNS_PORT = 5349


@dataclass(frozen=True)
class ServerSpec:
    """A server as the user wrote it."""

    label: str
    scheme: str  # "stun" | "stuns"
    host: str
    port: int | None  # None: not given (SRV, then the default port)

    @property
    def default_port(self) -> int:
        return STUNS_PORT if self.scheme == "stuns" else STUN_PORT


@dataclass(frozen=True)
class ResolvedServer:
    label: str
    scheme: str
    hostname: str  # for TLS verification
    address: Address

    @property
    def family(self) -> int:
        return 6 if ":" in self.address[0] else 4


def parse_server(text: str) -> ServerSpec:
    """``stun:host[:port]``, ``stuns:host[:port]``, ``host[:port]``, IPv6 as ``[addr]:port``."""
    raw = text.strip()
    if not raw:
        raise UsageError("empty STUN server: expected stun:host[:port] or host[:port]")
    scheme = "stun"
    rest = raw
    lower = raw.lower()
    for prefix in ("stuns:", "stun:"):
        if lower.startswith(prefix):
            scheme, rest = prefix[:-1], raw[len(prefix) :]
            break
    else:
        if lower.startswith(("turn:", "turns:")):
            raise UsageError(f"'{raw}' is a TURN URL: natkit probe takes stun: or stuns: servers")
        if "://" in raw:
            raise UsageError(f"bad STUN server '{raw}': expected stun:host[:port] (no '//')")
    if rest.startswith("//"):
        rest = rest[2:]
    if "?" in rest:
        raise UsageError(f"bad STUN server '{raw}': stun: URLs take no query (RFC 7064)")
    host, port_text = rest, None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise UsageError(f"bad STUN server '{raw}': missing ']' after an IPv6 address")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise UsageError(f"bad STUN server '{raw}': expected [IPv6]:PORT")
            port_text = tail[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"bad STUN server '{raw}': '{host}' is not an IPv6 address") from None
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    elif rest.count(":") > 1:
        try:
            ipaddress.IPv6Address(rest)
        except ValueError:
            raise UsageError(
                f"bad STUN server '{raw}': write IPv6 addresses as [addr]:port"
            ) from None
    if not host:
        raise UsageError(f"bad STUN server '{raw}': no host name")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"bad port in STUN server '{raw}': expected a number 1-65535")
        port = int(port_text)
    return ServerSpec(raw, scheme, host, port)


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class DnsTimeout(Exception):
    """The DNS server did not answer at all (unreachable): nothing is known about the name."""


def nameserver_label(resolver: object) -> str:
    """The DNS server(s) a dnspython resolver asks, as a user would write them."""
    port = int(getattr(resolver, "port", 53))
    servers = [str(ns) for ns in list(getattr(resolver, "nameservers", []))]
    shown = [ns if port == 53 else (f"[{ns}]:{port}" if ":" in ns else f"{ns}:{port}")
             for ns in servers[:2]]
    more = f" (+{len(servers) - 2})" if len(servers) > 2 else ""
    return (", ".join(shown) or "(none configured)") + more


def dns_timeout_message(resolver: object, lifetime: float, what: str) -> str:
    plural = "s" if len(list(getattr(resolver, "nameservers", []))) > 1 else ""
    return (f"DNS server{plural} {nameserver_label(resolver)} did not answer within "
            f"{lifetime:g} s (looking up {what})")


def _resolver() -> object | None:
    import dns.asyncresolver
    import dns.resolver

    try:
        return dns.asyncresolver.Resolver()
    except (dns.resolver.NoResolverConfiguration, OSError):
        return None


async def _dns(name: str, rdtype: str, lifetime: float, resolver: object | None = None
               ) -> list[object]:
    """The records; empty for no such name or record; DnsTimeout when no server answered."""
    import dns.exception

    resolver = resolver if resolver is not None else _resolver()
    if resolver is None:
        return []
    resolver.lifetime = lifetime  # type: ignore[attr-defined]
    try:
        answer = await resolver.resolve(name, rdtype)  # type: ignore[attr-defined]
    except dns.exception.Timeout:
        raise DnsTimeout(dns_timeout_message(resolver, lifetime, f"{name} {rdtype}")) from None
    except (dns.exception.DNSException, OSError):
        return []
    return list(answer)


def hosts_file_addresses(host: str, families: set[int] | tuple[int, ...],
                         path: str = "/etc/hosts") -> list[str]:
    """Addresses /etc/hosts gives ``host`` (dnspython does not read it; the system resolver
    would look here first)."""
    out: list[str] = []
    want = host.lower().rstrip(".")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) < 2 or want not in (n.lower().rstrip(".") for n in fields[1:]):
                    continue
                fam = 6 if ":" in fields[0] else 4
                if fam in families and fields[0] not in out:
                    out.append(fields[0])
    except OSError:
        return []
    return out


async def _addresses(host: str, families: set[int], lifetime: float,
                     resolver: object | None = None) -> list[str]:
    local = hosts_file_addresses(host, families)
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        # RFC 6761: never asked of DNS.
        return local or [a for a, fam in (("127.0.0.1", 4), ("::1", 6)) if fam in families]
    if local:
        return local
    kinds = [(family, rdtype) for family, rdtype in ((4, "A"), (6, "AAAA")) if family in families]
    results = await asyncio.gather(*[_dns(host, rdtype, lifetime, resolver) for _, rdtype in kinds],
                                   return_exceptions=True)
    out: list[str] = []
    timeouts = [r for r in results if isinstance(r, DnsTimeout)]
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, DnsTimeout):
            raise r
        if isinstance(r, list):
            out += [rec.address for rec in r]  # type: ignore[attr-defined]
    if out:
        return out
    if timeouts:
        raise timeouts[0]
    # No DNS answer with addresses: the system resolver (nsswitch, a local cache) may know.
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM), lifetime
        )
    except (OSError, TimeoutError):
        return []
    for fam, *_, sockaddr in infos:
        ip = str(sockaddr[0])
        if (
            (fam == socket.AF_INET and 4 in families) or (fam == socket.AF_INET6 and 6 in families)
        ) and ip not in out:
            out.append(ip)
    return out


async def resolve(
    spec: ServerSpec, families: set[int], lifetime: float = 2.0, resolver: object | None = None
) -> list[ResolvedServer]:
    """Every address of a server, in the order to try; empty when the name does not resolve.
    Raises :class:`DnsTimeout` when the DNS server did not answer within ``lifetime``."""
    literal = _literal(spec.host)
    if literal is not None:
        fam = 6 if ":" in literal else 4
        if fam not in families:
            return []
        return [
            ResolvedServer(
                spec.label, spec.scheme, spec.host, (literal, spec.port or spec.default_port)
            )
        ]
    targets: list[tuple[str, int]] = []
    direct: asyncio.Future[list[str]] | None = None
    if spec.port is None:
        srv_name = (
            f"_stuns._tcp.{spec.host}" if spec.scheme == "stuns" else f"_stun._udp.{spec.host}"
        )
        # The name's own addresses at the same time: a dead DNS server costs one timeout.
        direct = asyncio.ensure_future(_addresses(spec.host, families, lifetime, resolver))
        try:
            records = await _dns(srv_name, "SRV", lifetime, resolver)
        except BaseException:
            direct.cancel()
            await asyncio.gather(direct, return_exceptions=True)
            raise
        # Lowest priority first, then highest weight (a stable order, not a random draw).
        records.sort(key=lambda r: (r.priority, -r.weight))  # type: ignore[attr-defined]
        targets = [(str(r.target).rstrip("."), int(r.port)) for r in records]  # type: ignore[attr-defined]
    if not targets:
        targets = [(spec.host, spec.port or spec.default_port)]
    elif direct is not None:
        direct.cancel()
        await asyncio.gather(direct, return_exceptions=True)
        direct = None
    out: list[ResolvedServer] = []
    for name, port in targets:
        if direct is not None and name == spec.host:
            ips = await direct
        else:
            ips = await _addresses(name, families, lifetime, resolver)
        for ip in ips:
            server = ResolvedServer(spec.label, spec.scheme, spec.host, (ip, port))
            if server not in out:
                out.append(server)
    return out


def default_servers(path: str | Path | None = None) -> list[str]:
    """The default public STUN servers (configs/stun-servers.toml, or the packaged copy)."""
    text: str | None = None
    candidates = (
        [Path(path)]
        if path
        else [
            Path(__file__).resolve().parents[2] / "configs" / "stun-servers.toml",
        ]
    )
    for p in candidates:
        if p.is_file():
            text = p.read_text()
            break
    if text is None:
        try:
            text = resources.files("natkit.nat").joinpath("stun-servers.toml").read_text()
        except (FileNotFoundError, ModuleNotFoundError):
            raise ConfigError(
                "no STUN server given and no default list found: give one, e.g. stun:HOST[:PORT]",
                param="server",
            ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{exc}: fix the file or give a STUN server", where="stun-servers.toml") from None
    servers = data.get("servers")
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise UsageError("stun-servers.toml: 'servers' must be a list of stun: URLs")
    return list(servers)
