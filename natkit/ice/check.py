"""Validate an ICE server configuration: statically (as a browser would) and live, per URL.

``await check(config)`` (or ``check_sync``) returns a :class:`CheckReport`. A configuration a
browser would reject raises :class:`natkit.ice.config.ConfigError` before anything is sent.
Every URL is checked concurrently and within ``timeout`` seconds, whatever happens:

* stun:/stuns: — DNS (SRV, A/AAAA), TCP/TLS handshake and certificate, Binding and its RTT.
* turn:/turns: — DNS, TCP/TLS, an unauthenticated Allocate that must be challenged with 401
  REALM/NONCE (else: open relay), the authenticated Allocate (relay address; a private one from
  a public server is flagged), CreatePermission, a datagram relayed to a local peer socket and
  back (Send/Data indications), and the same through a ChannelBind'ed channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncresolver

from natkit.client.turn import (
    Allocation,
    TurnClient,
    TurnClientError,
    TurnConnectionError,
    TurnError,
    TurnIntegrityError,
    TurnTimeout,
    TurnTlsError,
)
from natkit.ice import hints
from natkit.ice.classify import NON_ROUTABLE, address_scope
from natkit.ice.config import IceConfig, IceServer, IceUrl, config_from_data, load_config
from natkit.ice.dns import ResolveError, resolve_url
from natkit.ice.tls import describe_certificate, insecure_context, verifying_context
from natkit.stun import Attr, Class, Message, Method, decode

Address = tuple[str, int]


@dataclass
class Step:
    name: str
    ok: bool
    ms: float | None
    detail: str
    code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "ok": self.ok,
            "ms": None if self.ms is None else round(self.ms, 1),
            "detail": self.detail,
        }
        if self.code is not None:
            out["code"] = self.code
        return out


@dataclass
class ServerResult:
    url: str
    path: str
    scheme: str
    protocol: str  # udp | tcp | tls
    host: str
    port: int | None = None
    address: str | None = None  # the resolved address checked
    checks: list[Step] = field(default_factory=list)
    hint: str | None = None
    relayed_address: str | None = None
    mapped_address: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(step.ok for step in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "path": self.path,
            "ok": self.ok,
            "scheme": self.scheme,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "mapped_address": self.mapped_address,
            "relayed_address": self.relayed_address,
            "checks": [step.as_dict() for step in self.checks],
            "hint": self.hint,
        }


@dataclass
class CheckReport:
    source: str
    servers: list[ServerResult]
    warnings: list[str]
    insecure: bool
    timeout: float
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return all(server.ok for server in self.servers)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "insecure": self.insecure,
            "timeout": self.timeout,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "warnings": list(self.warnings),
            "servers": [server.as_dict() for server in self.servers],
        }


@dataclass
class _Options:
    timeout: float
    insecure: bool
    ca_file: str | None
    resolver: dns.asyncresolver.Resolver | None
    families: tuple[int, ...]


class _Failed(Exception):
    """Stop checking this URL (the step was recorded)."""


class _Run:
    """Checks of one URL: timed steps, a hint from the first failure."""

    def __init__(self, result: ServerResult, url: IceUrl, server: IceServer, opts: _Options):
        self.result = result
        self.url = url
        self.server = server
        self.opts = opts
        self.current = "dns"
        self.started = time.monotonic()
        self.client: TurnClient | None = None

    def begin(self, name: str) -> None:
        self.current = name
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return (time.monotonic() - self.started) * 1000

    def ok(self, detail: str) -> None:
        self.result.checks.append(Step(self.current, True, self.elapsed(), detail))

    def fail(self, detail: str, hint: str | None, code: int | None = None,
             *, stop: bool = True) -> None:
        self.result.checks.append(Step(self.current, False, self.elapsed(), detail, code))
        if self.result.hint is None:
            self.result.hint = hint
        if stop:
            raise _Failed

    def fail_client(self, exc: TurnClientError, port: int) -> None:
        if isinstance(exc, TurnError):
            self.fail(f"{exc.code} {exc.reason}".strip(),
                      hints.hint_for_error(exc.code, self.url, self.server.username, self.current),
                      exc.code)
        if isinstance(exc, TurnTlsError):
            self.fail(str(exc), hints.hint_for_tls(exc.verify_error, self.url))
        if isinstance(exc, TurnTimeout):
            self.fail(str(exc), hints.hint_for_timeout(self.url, self.current, port))
        if isinstance(exc, TurnConnectionError) and "refused" in str(exc):
            self.fail(str(exc), hints.hint_for_refused(self.url, port))
        if isinstance(exc, TurnIntegrityError):
            self.fail(str(exc), hints.INTEGRITY)
        self.fail(str(exc), None)


async def check(
    config: IceConfig | str | os.PathLike[str] | dict[str, Any] | list[Any],
    *,
    timeout: float = 5.0,
    insecure: bool = False,
    ca_file: str | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
    families: tuple[int, ...] = (4, 6),
    progress: Callable[[ServerResult], None] | None = None,
) -> CheckReport:
    """Check every URL of ``config`` (an :class:`IceConfig`, a file path, or decoded JSON).
    Raises ConfigError/UsageError for a configuration a browser would reject."""
    if timeout <= 0:
        from natkit.errors import UsageError

        raise UsageError(f"timeout must be positive, got {timeout}")
    if isinstance(config, (str, Path, os.PathLike)):
        config = load_config(os.fspath(config))
    elif not isinstance(config, IceConfig):
        config = config_from_data(config)
    if ca_file is not None:
        verifying_context(ca_file)  # a bad CA file is the user's mistake: say so up front
    opts = _Options(timeout, insecure, ca_file, resolver, families)
    start = time.monotonic()

    async def one(server: IceServer, url: IceUrl) -> ServerResult:
        result = await _check_url(server, url, opts)
        if progress is not None:
            progress(result)
        return result

    results = await asyncio.gather(*(one(server, url) for server, url in config.urls()))
    warnings = list(config.warnings)
    if insecure:
        warnings.append("--insecure: TLS certificates were not required to be valid")
    return CheckReport(config.source, list(results), warnings, insecure, timeout,
                       (time.monotonic() - start) * 1000)


def check_sync(config: Any, **kw: Any) -> CheckReport:
    """:func:`check` for callers without an event loop."""
    return asyncio.run(check(config, **kw))


async def _check_url(server: IceServer, url: IceUrl, opts: _Options) -> ServerResult:
    result = ServerResult(url.url, url.path, url.scheme, url.protocol, url.host, url.port)
    run = _Run(result, url, server, opts)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.timeout
    try:
        async with asyncio.timeout_at(deadline):
            await _steps(run)
    except _Failed:
        pass
    except TimeoutError:
        port = result.port or url.effective_port
        run.fail(f"no answer within the {opts.timeout:g} s budget",
                 hints.hint_for_timeout(url, run.current, port), stop=False)
    finally:
        if run.client is not None:
            # Release the allocation with what is left of the budget, never more; a server
            # that cannot be told expires it after its lifetime anyway.
            await run.client.close(release_timeout=min(1.0, max(0.0, deadline - loop.time())))
    return result


async def _steps(run: _Run) -> None:
    url, opts, result = run.url, run.opts, run.result
    run.begin("dns")
    try:
        resolution = await resolve_url(url, timeout=opts.timeout, resolver=opts.resolver,
                                       families=opts.families)
    except ResolveError as exc:
        run.fail(str(exc), "check the host name; without a port in the URL, publish SRV "
                 "records or A/AAAA records for it")
    dest = resolution.addresses[0]
    result.address, result.port = dest[0], dest[1]
    run.ok(resolution.detail)
    client = TurnClient(dest, url.protocol, run.server.username, run.server.credential,
                        server_hostname=url.host, timeout=opts.timeout,
                        ssl_context=verifying_context(opts.ca_file) if url.secure else None)
    run.client = client  # closed by _check_url, also on failure and timeout
    await _connect(run, client, dest)
    if url.is_turn:
        await _turn_steps(run, client, dest)
    else:
        run.begin("binding")
        try:
            mapped = await client.binding()
        except TurnClientError as exc:
            run.fail_client(exc, dest[1])
        result.mapped_address = _fmt(mapped)
        run.ok(f"mapped address {_fmt(mapped)}")


async def _connect(run: _Run, client: TurnClient, dest: Address) -> None:
    url = run.url
    if url.protocol == "udp":
        await client.open()
        return
    run.begin("tls" if url.secure else "connect")
    try:
        await client.open()
    except TurnTlsError as exc:
        if not (exc.verify_error and run.opts.insecure):
            run.fail_client(exc, dest[1])
        client.ssl_context = insecure_context()
        try:
            await client.open()
        except TurnClientError as exc2:
            run.fail_client(exc2, dest[1])
        run.ok(f"NOT verified (--insecure): {_short(str(exc))}; "
               f"{client.tls_version}, {describe_certificate(client.peer_certificate)}")
        return
    except TurnClientError as exc:
        run.fail_client(exc, dest[1])
    if url.secure:
        run.ok(f"{client.tls_version}, verified for {url.host}, "
               f"{describe_certificate(client.peer_certificate)}")
    else:
        run.ok(f"TCP connected from {_fmt(client.local_address or ('?', 0))}")


async def _turn_steps(run: _Run, client: TurnClient, dest: Address) -> None:
    result = run.result
    # 1. Without credentials, a TURN server must challenge: 401 with REALM and NONCE.
    run.begin("auth-challenge")
    try:
        resp = await client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)],
                                    authenticate=False)
    except TurnClientError as exc:
        run.fail_client(exc, dest[1])
    code = resp.error_code
    open_relay = False
    if resp.cls == Class.SUCCESS:
        open_relay = True
        run.fail("Allocate without credentials succeeded", hints.OPEN_RELAY, stop=False)
        # Release it (unauthenticated Refresh with LIFETIME 0) and go on with credentials:
        # the rest tells whether relaying works at all.
        with contextlib.suppress(TurnClientError):
            await client.request(Method.REFRESH, [(Attr.LIFETIME, 0)], authenticate=False)
        await client.close(release=False)
        await client.open()
    elif code is not None and code.code == 401:
        if resp.get(Attr.REALM) is None or resp.get(Attr.NONCE) is None:
            run.fail(f"401 without {'REALM' if resp.get(Attr.REALM) is None else 'NONCE'}",
                     hints.NO_CHALLENGE, 401)
        client.learn(resp)  # saves the authenticated Allocate a round trip
        run.ok(f"401 with realm \"{resp.get(Attr.REALM)}\"")
    else:
        number = code.code if code else 0
        run.fail(f"expected 401, got {number} {code.reason if code else ''}".strip(),
                 hints.hint_for_error(number, run.url, run.server.username, "auth-challenge"),
                 number)

    # 2. Authenticated Allocate.
    run.begin("allocate")
    family_note = ""
    try:
        try:
            allocation = await client.allocate()
        except TurnError as exc:
            # The default relay family is IPv4 (RFC 8656 §7.1); a server relaying only IPv6
            # answers 440, and a client asking for IPv6 gets one.
            if exc.code != 440 or ":" not in dest[0]:
                raise
            allocation = await client.allocate(family=2)
            family_note = " (IPv4 relay refused with 440; IPv6 granted on request)"
    except TurnClientError as exc:
        run.fail_client(exc, dest[1])
    result.relayed_address = _fmt(allocation.relayed)
    if allocation.mapped:
        result.mapped_address = _fmt(allocation.mapped)
    run.ok(f"relay {_fmt(allocation.relayed)}, mapped "
           f"{_fmt(allocation.mapped) if allocation.mapped else '?'}, "
           f"lifetime {allocation.lifetime} s{family_note}"
           + (" (no credentials needed)" if open_relay else ""))
    run.begin("relay-address")
    relay_ok, detail = relay_address_verdict(allocation.relayed[0], dest[0])
    if relay_ok:
        run.ok(detail)
    else:
        run.fail(detail, hints.PRIVATE_RELAY)

    # 3. Permission, then a datagram to a local peer through the relay and back.
    peer = await _Peer.open(dest[0])
    try:
        peer_ip = await _peer_ip(run, peer, dest, allocation)
        run.begin("permission")
        try:
            await client.create_permission(peer_ip)
        except TurnClientError as exc:
            run.fail_client(exc, dest[1])
        run.ok(f"peer {peer_ip}")
        run.begin("relay-echo")
        try:
            peer_seen = await _echo(client, peer, allocation, channel=None)
        except TurnClientError as exc:
            run.fail_client(exc, dest[1])
        run.ok(f"peer {_fmt(peer_seen)} <-> relay {_fmt(allocation.relayed)} "
               "(Send/Data indications)")
        run.begin("channel")
        try:
            channel = await client.channel_bind(peer_seen)
            await _echo(client, peer, allocation, channel=channel, peer_addr=peer_seen)
        except TurnClientError as exc:
            run.fail_client(exc, dest[1])
        run.ok(f"channel 0x{channel:04x} <-> peer {_fmt(peer_seen)} (ChannelData)")
    finally:
        peer.close()


def relay_address_verdict(relayed_ip: str, server_ip: str) -> tuple[bool, str]:
    """A private relay address is the classic coturn mistake (no external-ip) when the server
    itself is reached at a public address; from a private server (a LAN, a lab) it is normal."""
    relay_scope = address_scope(relayed_ip)
    server_scope = address_scope(server_ip)
    if relay_scope in NON_ROUTABLE and server_scope not in NON_ROUTABLE:
        return False, (f"relay address {relayed_ip} is {relay_scope} while the server "
                       f"{server_ip} is {server_scope}")
    if relay_scope in NON_ROUTABLE:
        return True, f"{relayed_ip} is {relay_scope}, like the server ({server_scope})"
    return True, f"{relayed_ip} is {relay_scope}"


async def _peer_ip(run: _Run, peer: _Peer, dest: Address, allocation: Allocation) -> str:
    """The address the relay will see our test peer at."""
    if address_scope(dest[0]) == "loopback":
        return peer.local[0]
    # Ask the server (it answers Binding on its UDP port too) what the peer looks like;
    # else assume the peer leaves through the same NAT as the client.
    with contextlib.suppress(TimeoutError, OSError):
        mapped = await asyncio.wait_for(peer.binding((dest[0], dest[1])),
                                        min(1.0, run.opts.timeout / 4))
        if mapped is not None:
            return mapped[0]
    if allocation.mapped is not None:
        return allocation.mapped[0]
    return peer.local[0]


async def _echo(client: TurnClient, peer: _Peer, allocation: Allocation, *,
                channel: int | None, peer_addr: Address | None = None) -> Address:
    """Peer -> relay -> client, then client -> relay -> peer. Returns the peer's address as the
    relay saw it. Retransmits every 200 ms (UDP may drop); bounded by the caller's timeout."""
    token = os.urandom(8).hex()
    inbound, outbound = f"natkit-in-{token}".encode(), f"natkit-out-{token}".encode()
    seen: Address | None = None
    for _ in range(50):
        peer.send(inbound, allocation.relayed)
        try:
            got = await client.receive(0.2)
        except TurnTimeout:
            continue
        if got.data != inbound:
            continue
        if channel is not None and got.channel != channel:
            raise TurnClientError(f"data came back as a Data indication, not on channel "
                                  f"0x{channel:04x}")
        seen = got.peer or peer_addr
        break
    if seen is None:
        raise TurnTimeout("the datagram sent to the relay address never reached the client")
    for _ in range(50):
        if channel is not None:
            client.send_channel(channel, outbound)
        else:
            client.send_to(seen, outbound)
        data, source = await peer.receive(0.2)
        if data == outbound and source is not None:
            if source != allocation.relayed:
                raise TurnClientError(
                    f"the relayed datagram came from {_fmt(source)}, not from the advertised "
                    f"relay address {_fmt(allocation.relayed)}")
            return seen
    raise TurnTimeout("data sent through the relay never reached the peer")


class _PeerProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(maxsize=256)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))


class _Peer:
    """A UDP socket standing in for the remote peer of a relay."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _PeerProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        sock = transport.get_extra_info("sockname")
        self.local: Address = (str(sock[0]), int(sock[1]))

    @classmethod
    async def open(cls, server_ip: str) -> _Peer:
        v6 = ":" in server_ip
        wildcard = "::" if v6 else "0.0.0.0"
        bind = server_ip if address_scope(server_ip) == "loopback" else wildcard
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _PeerProtocol, local_addr=(bind, 0),
            family=socket.AF_INET6 if v6 else socket.AF_INET)
        return cls(transport, protocol)

    def send(self, data: bytes, dest: Address) -> None:
        self.transport.sendto(data, dest)

    async def receive(self, timeout: float) -> tuple[bytes | None, Address | None]:
        try:
            return await asyncio.wait_for(self.protocol.queue.get(), timeout)
        except TimeoutError:
            return None, None

    async def binding(self, server: Address) -> Address | None:
        msg = Message(Method.BINDING, Class.REQUEST)
        data = msg.encode(fingerprint=True)
        for _ in range(5):
            self.send(data, server)
            reply, _src = await self.receive(0.2)
            if reply is None:
                continue
            with contextlib.suppress(Exception):
                resp = decode(reply)
                if resp.transaction_id == msg.transaction_id:
                    mapped = resp.get(Attr.XOR_MAPPED_ADDRESS)
                    return (str(mapped[0]), int(mapped[1])) if mapped else None
        return None

    def close(self) -> None:
        self.transport.close()


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _short(text: str) -> str:
    return text.split(": ", 1)[-1] if ": " in text else text
