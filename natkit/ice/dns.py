"""Resolve a STUN/TURN URL to addresses to try: SRV (RFC 5928, 7064, 7065) when the URL has no
port, then A/AAAA; all with dnspython. IP literals need no lookup."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from natkit.ice.config import DEFAULT_PORT, IceUrl
from natkit.nat.servers import dns_timeout_message, hosts_file_addresses, nameserver_label


class ResolveError(Exception):
    """The name did not resolve; the message says what was asked and what came back.

    ``kind`` tells why: "timeout" (the DNS server did not answer: the server is unreachable,
    which says nothing about the name), "nxdomain"/"nodata" (the name has no such record),
    "error" (SERVFAIL, refused, a broken answer)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Resolution:
    addresses: list[tuple[str, int]]  # in the order to try
    srv: list[str] = field(default_factory=list)  # "_turn._udp.example.com -> host:3478"
    how: str = ""  # "IP literal", "SRV", "A/AAAA", "hosts file"

    @property
    def detail(self) -> str:
        shown = ", ".join(_fmt(a) for a in self.addresses[:4])
        more = f" (+{len(self.addresses) - 4})" if len(self.addresses) > 4 else ""
        return f"{self.how}: {shown}{more}"


def srv_name(url: IceUrl) -> str:
    service = {
        ("stun", "udp"): "_stun._udp",
        ("stun", "tcp"): "_stun._tcp",
        ("stuns", "tcp"): "_stuns._tcp",
        ("turn", "udp"): "_turn._udp",
        ("turn", "tcp"): "_turn._tcp",
        ("turns", "tcp"): "_turns._tcp",
        ("turns", "udp"): "_turns._tcp",
    }[(url.scheme, url.transport)]
    return f"{service}.{url.host.rstrip('.')}"


async def resolve_url(
    url: IceUrl,
    *,
    timeout: float = 3.0,
    resolver: dns.asyncresolver.Resolver | None = None,
    families: tuple[int, ...] = (4, 6),
) -> Resolution:
    if url.host_is_ip:
        return Resolution([(url.host, url.effective_port)], how="IP literal")
    host = url.host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: never sent to DNS
        addrs = [a for a, fam in (("127.0.0.1", 4), ("::1", 6)) if fam in families]
        return Resolution([(a, url.effective_port) for a in addrs], how="localhost")
    if resolver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            return await _system(url, families, timeout)
    resolver.lifetime = timeout
    if url.port is None:
        # SRV and the name's own A/AAAA at once: a dead DNS server costs one timeout, not two.
        srv_task = asyncio.ensure_future(_srv(resolver, url))
        own_task = asyncio.ensure_future(_addresses(resolver, host, families))
        try:
            targets = await srv_task
        except BaseException:
            own_task.cancel()
            await asyncio.gather(own_task, return_exceptions=True)
            raise
        if targets:
            own_task.cancel()
            await asyncio.gather(own_task, return_exceptions=True)
            out: list[tuple[str, int]] = []
            notes: list[str] = []
            for target, port in targets:
                for ip in await _addresses(resolver, target, families):
                    out.append((ip, port))
                notes.append(f"{srv_name(url)} -> {target}:{port}")
            if not out:
                raise ResolveError(
                    f"SRV {srv_name(url)} points to {', '.join(t for t, _ in targets)}, "
                    "which has no A/AAAA record", "nodata"
                )
            return Resolution(out, notes, "SRV")
        ips = await own_task
    else:
        ips = await _addresses(resolver, host, families)
    how = "A/AAAA"
    if not ips:
        ips, how = hosts_file_addresses(host, families), "hosts file"
    if not ips:
        raise ResolveError(f"{url.host} does not resolve (no A/AAAA record)", "nxdomain")
    port = url.effective_port
    return Resolution([(ip, port) for ip in ips], how=how)


async def _srv(resolver: dns.asyncresolver.Resolver, url: IceUrl) -> list[tuple[str, int]]:
    try:
        answer = await resolver.resolve(srv_name(url), "SRV")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
        return []
    except dns.exception.Timeout:
        raise _timeout(resolver, f"SRV {srv_name(url)}") from None
    records = sorted(answer, key=lambda r: (r.priority, -r.weight))
    targets = [(r.target.to_text(omit_final_dot=True), int(r.port)) for r in records]
    # A single SRV record with target "." says the service is not offered (RFC 2782).
    return [(t, p) for t, p in targets if t not in ("", ".")]


async def _addresses(
    resolver: dns.asyncresolver.Resolver, host: str, families: tuple[int, ...]
) -> list[str]:
    kinds = [k for k, fam in (("A", 4), ("AAAA", 6)) if fam in families]
    results = await asyncio.gather(
        *(_query(resolver, host, kind) for kind in kinds), return_exceptions=True
    )
    out: list[str] = []
    for result in results:
        if isinstance(result, BaseException):
            if isinstance(result, ResolveError):
                raise result
            raise ResolveError(f"DNS lookup of {host} failed: {result}")
        out.extend(result)
    return out


def _timeout(resolver: dns.asyncresolver.Resolver, what: str) -> ResolveError:
    return ResolveError(dns_timeout_message(resolver, resolver.lifetime, what), "timeout")


async def _query(resolver: dns.asyncresolver.Resolver, host: str, kind: str) -> list[str]:
    try:
        answer = await resolver.resolve(host, kind)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.NoNameservers:
        raise ResolveError(f"DNS server {nameserver_label(resolver)} failed to answer for "
                           f"{host} ({kind}: SERVFAIL or refused)") from None
    except dns.exception.Timeout:
        raise _timeout(resolver, f"{host} {kind}") from None
    return [r.to_text() for r in answer]


async def _system(url: IceUrl, families: tuple[int, ...], timeout: float) -> Resolution:
    """Without a resolv.conf for dnspython, ask the system resolver."""
    by_families: dict[tuple[int, ...], int] = {(4,): socket.AF_INET, (6,): socket.AF_INET6}
    family = by_families.get(families, socket.AF_UNSPEC)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(url.host, url.effective_port, family=family,
                             type=socket.SOCK_DGRAM),
            timeout,
        )
    except TimeoutError:
        raise ResolveError(f"the system resolver did not answer within {timeout:g} s "
                           f"(looking up {url.host})", "timeout") from None
    except OSError:
        raise ResolveError(f"{url.host} does not resolve (no A/AAAA record)", "nxdomain") from None
    out: list[tuple[str, int]] = []
    for _fam, _t, _p, _c, sockaddr in infos:
        addr = (str(sockaddr[0]), url.effective_port)
        if addr not in out:
            out.append(addr)
    if not out:
        raise ResolveError(f"{url.host} does not resolve (no A/AAAA record)")
    return Resolution(out, how="hosts file")


def default_port(scheme: str) -> int:
    return DEFAULT_PORT[scheme]


def _fmt(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
