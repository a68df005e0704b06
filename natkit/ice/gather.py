"""Gather ICE candidates like a browser, but say which server gave what, and why not.

Host candidates come from aioice's interface list (the port is that of a UDP socket bound on
the address while gathering). Each STUN and TURN URL (all of them, not
just the first of each kind; stun, turn, turns; UDP and TCP) is then asked on its own, in
parallel: a srflx candidate from a Binding over UDP, a relay candidate from an Allocate. Every
candidate carries the URL that produced it and the time since the start, and every failure is
reported like the browser's ``icecandidateerror`` (url, local address, code, text; 701 when the
server could not be reached at all). A srflx candidate's base is the local address the kernel
uses toward that server; a stuns: URL is checked for reachability only (a mapping seen over TLS
says nothing about UDP). Like a browser, a URL whose name resolves to several addresses is
asked at its first address (A records before AAAA); ``natkit check`` is the tool that
tries every address of a round-robin fleet.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
from aioice.ice import get_host_addresses

from natkit._sync import run_sync
from natkit.client.turn import (
    TurnClient,
    TurnClientError,
    TurnError,
    TurnTlsError,
)
from natkit.ice.candidates import Candidate
from natkit.ice.classify import NON_ROUTABLE, TYPE_PREFERENCE, address_scope, encode_priority
from natkit.ice.config import IceConfig, IceServer, IceUrl, coerce_config
from natkit.ice.diagnose import Finding, diagnose
from natkit.ice.dns import ResolveError, resolve_url
from natkit.ice.tls import insecure_context, verifying_context

SCHEMA_VERSION = 1
UNREACHABLE = 701  # the browser's code for "no host candidate could reach the server"
# libwebrtc's relay type preferences by client-to-server transport.
RELAY_PREFERENCE = {"udp": 2, "tcp": 1, "tls": 0}


@dataclass
class GatherError:
    url: str
    address: str | None  # local address used toward the server (None if not known)
    port: int | None
    error_code: int
    error_text: str
    elapsed_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "address": self.address, "port": self.port,
                "error_code": self.error_code, "error_text": self.error_text,
                "at_s": round(self.elapsed_ms / 1000, 4)}


@dataclass
class Gathered:
    candidate: Candidate
    elapsed_ms: float

    def as_dict(self) -> dict[str, Any]:
        out = self.candidate.as_dict()
        out["at_s"] = round(self.elapsed_ms / 1000, 4)
        return out


@dataclass
class GatherResult:
    candidates: list[Gathered] = field(default_factory=list)
    errors: list[GatherError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0
    private_servers: set[str] = field(default_factory=set)  # URLs at non-routable addresses

    @property
    def ok(self) -> bool:
        return not self.errors

    def diagnosis(self) -> list[Finding]:
        return diagnose([g.candidate for g in self.candidates],
                        private_servers=self.private_servers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "gather",
            "pass": self.ok,
            "duration_s": round(self.elapsed_ms / 1000, 4),
            "candidates": [g.as_dict() for g in self.candidates],
            "errors": [e.as_dict() for e in self.errors],
            "notes": list(self.notes),
            "diagnosis": [f.as_dict() for f in self.diagnosis()],
        }


Event = Gathered | GatherError


async def gather(
    config: IceConfig | str | os.PathLike[str] | dict[str, Any] | list[Any],
    *,
    policy: str = "all",
    families: tuple[int, ...] = (4, 6),
    timeout: float = 5.0,
    insecure: bool = False,
    ca_file: str | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
    host_addresses: list[str] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> GatherResult:
    """Gather host, srflx and relay candidates from every URL of ``config``.

    ``policy`` is "all" or "relay" (RTCIceTransportPolicy); ``host_addresses`` overrides the
    interface list (aioice's by default). Each URL costs at most ``timeout`` seconds."""
    from natkit.errors import ConfigError

    if policy not in ("all", "relay"):
        raise ConfigError(f"expected 'all' or 'relay', not {policy!r}", param="policy")
    if not 0 < timeout <= 600:
        raise ConfigError(f"expected seconds between 0 and 600, got {timeout:g}", param="timeout")
    config = coerce_config(config)
    if ca_file is not None:
        verifying_context(ca_file)  # a bad CA file is the user's mistake: say so up front
    result = GatherResult()
    start = time.monotonic()

    def emit(event: Event) -> None:
        if isinstance(event, Gathered):
            result.candidates.append(event)
        else:
            result.errors.append(event)
        if on_event is not None:
            on_event(event)

    def elapsed() -> float:
        return (time.monotonic() - start) * 1000

    if policy == "all":
        if host_addresses is None:
            host_addresses = get_host_addresses(use_ipv4=4 in families, use_ipv6=6 in families)
        for index, address in enumerate(host_addresses):
            port = _free_udp_port(address)
            if port is None:
                continue
            cand = _candidate("host", address, port, None, None, local_preference=65535 - index)
            emit(Gathered(cand, elapsed()))
    ctx = _Context(policy, families, timeout, insecure, ca_file, resolver, emit, elapsed,
                   result.notes, result.private_servers)
    await asyncio.gather(*(_gather_url(ctx, server, url) for server, url in config.urls()))
    result.elapsed_ms = elapsed()
    return result


def gather_sync(config: Any, **kw: Any) -> GatherResult:
    """:func:`gather` for callers without a running event loop."""
    return run_sync("gather", gather, config, **kw)


@dataclass
class _Context:
    policy: str
    families: tuple[int, ...]
    timeout: float
    insecure: bool
    ca_file: str | None
    resolver: dns.asyncresolver.Resolver | None
    emit: Callable[[Event], None]
    elapsed: Callable[[], float]
    notes: list[str]
    private_servers: set[str]


async def _gather_url(ctx: _Context, server: IceServer, url: IceUrl) -> None:
    if not url.is_turn and ctx.policy == "relay":
        return
    local: tuple[str, int] | None = None
    try:
        async with asyncio.timeout(ctx.timeout):
            try:
                resolution = await resolve_url(url, timeout=ctx.timeout, resolver=ctx.resolver,
                                               families=ctx.families)
            except ResolveError as exc:
                ctx.emit(GatherError(url.url, None, None, UNREACHABLE, str(exc), ctx.elapsed()))
                return
            dest = resolution.addresses[0]
            if address_scope(dest[0]) in NON_ROUTABLE:
                ctx.private_servers.add(url.url)
            ssl_context = None
            if url.secure:
                ssl_context = insecure_context() if ctx.insecure else verifying_context(
                    ctx.ca_file)
            client = TurnClient(dest, url.protocol, server.username, server.credential,
                                ssl_context=ssl_context, server_hostname=url.host,
                                timeout=ctx.timeout)
            try:
                await client.open()
                local = client.local_address
                if url.is_turn:
                    allocation = await client.allocate()
                    raddr = allocation.mapped or local
                    assert raddr is not None
                    cand = _candidate("relay", allocation.relayed[0], allocation.relayed[1],
                                      raddr, url, relay_protocol=url.protocol)
                    ctx.emit(Gathered(cand, ctx.elapsed()))
                elif url.secure:
                    # A mapping seen over TLS says nothing about UDP: no candidate, a note.
                    mapped = await client.binding()
                    ctx.notes.append(f"{url.url}: reachable over TLS, mapped address "
                                     f"{mapped[0]}:{mapped[1]}; browsers gather no UDP srflx "
                                     "from stuns: URLs")
                else:
                    mapped = await client.binding()
                    assert local is not None
                    if mapped == local:
                        ctx.notes.append(f"{url.url}: mapped address equals the host address "
                                         f"{mapped[0]}:{mapped[1]} (no NAT); no srflx needed")
                    else:
                        cand = _candidate("srflx", mapped[0], mapped[1], local, url)
                        ctx.emit(Gathered(cand, ctx.elapsed()))
            finally:
                await client.close()
    except TurnError as exc:
        ctx.emit(_error(url, local, exc.code, exc.reason, ctx))
    except TurnTlsError as exc:
        ctx.emit(_error(url, local, UNREACHABLE, f"TLS: {exc}", ctx))
    except (TurnClientError, TimeoutError, OSError) as exc:
        text = str(exc) or f"no answer within {ctx.timeout:g} s"
        ctx.emit(_error(url, local, UNREACHABLE, text, ctx))


def _error(url: IceUrl, local: tuple[str, int] | None, code: int, text: str,
           ctx: _Context) -> GatherError:
    return GatherError(url.url, local[0] if local else None, local[1] if local else None,
                       code, text, ctx.elapsed())


def _candidate(kind: str, address: str, port: int, related: tuple[str, int] | None,
               url: IceUrl | None, *, relay_protocol: str | None = None,
               local_preference: int = 65535) -> Candidate:
    type_pref = (RELAY_PREFERENCE.get(relay_protocol or "udp", 0) if kind == "relay"
                 else TYPE_PREFERENCE[kind])
    base = related[0] if related else address
    foundation = str(zlib.crc32(f"{kind}|{base}|udp|{url.url if url else ''}".encode()))
    cand = Candidate(
        foundation=foundation,
        component=1,
        transport="udp",
        priority=encode_priority(type_pref, local_preference, 1),
        address=address,
        port=port,
        type=kind,
        related_address=related[0] if related else None,
        related_port=related[1] if related else None,
    )
    cand.relay_protocol = relay_protocol
    cand.url = url.url if url else None
    return cand


def _free_udp_port(address: str) -> int | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
            return int(sock.getsockname()[1])
    except OSError:
        return None
