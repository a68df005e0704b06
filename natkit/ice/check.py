"""Validate an ICE server configuration: statically (as a browser would) and live, per URL and
per address.

``await check(config)`` (or :func:`check_sync` outside an event loop) returns a
:class:`CheckReport`. A configuration a browser would reject raises
:class:`natkit.ice.config.ConfigError` before anything is sent. Every URL is resolved (SRV, then
A *and* AAAA) and **every** address it resolves to is checked on its own, concurrently: a DNS
round-robin fleet with one dead node shows that node. All of it ends within ``timeout``
seconds per URL, whatever happens; the budget is split between the steps so that each one
ends with its own message inside it (a step that finishes early leaves its time to the next).

* stun:/stuns: — DNS, TCP/TLS handshake and certificate, Binding and its RTT.
* turn:/turns: — DNS, TCP/TLS, an unauthenticated Allocate that must be challenged with 401
  REALM/NONCE (else: open relay), the authenticated Allocate (relay address; a private one from
  a public server is flagged), CreatePermission, a datagram relayed to a local peer socket and
  back (Send/Data indications), and the same through a ChannelBind'ed channel. The data comes
  back over the client's own transport (a TCP allocation's over TCP). When this host cannot
  send UDP at all (an office firewall), the peer is a second allocation on the same server
  instead, or the step is reported as not testable from here: never as a failure.

A target's ``status`` is "pass", "fail" or "untestable" (an address of a family this host has
no route for, a relay that cannot be exercised from here); only "fail" fails the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.asyncresolver

from natkit._sync import run_sync
from natkit.client.stun import local_address_toward
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
from natkit.errors import ConfigError
from natkit.ice import browsers as browser_registry
from natkit.ice import hints
from natkit.ice.browsers.knowledge import BrowserNote, browser_notes
from natkit.ice.classify import NON_ROUTABLE, address_scope
from natkit.ice.config import IceConfig, IceServer, IceUrl, coerce_config
from natkit.ice.dns import Resolution, ResolveError, resolve_url
from natkit.ice.tls import describe_certificate, insecure_context, verifying_context
from natkit.stun import Attr, Class, Message, Method, decode

__all__ = [
    "SCHEMA_VERSION",
    "CheckReport",
    "ServerResult",
    "Step",
    "UrlSummary",
    "check",
    "check_sync",
    "relay_address_verdict",
]

Address = tuple[str, int]
SCHEMA_VERSION = 2
PASS, FAIL, UNTESTABLE = "pass", "fail", "untestable"
# Share of the budget each step may take, relative to the steps still ahead of it.
LOCAL_FIREWALL = "a local firewall refuses to send it (EPERM)"
WEIGHTS = {
    "dns": 2.0, "route": 0.0, "connect": 1.0, "tls": 1.0, "binding": 2.0,
    "auth-challenge": 1.0, "allocate": 1.5, "relay-address": 0.0, "permission": 1.0,
    "relay-echo": 2.0, "channel": 2.0,
}
# The first exchange with the server (a TCP connect or the first Binding) may take at least this
# long, or half of what is left if that is less: nothing after it can happen without it, and one
# lost SYN or request costs a retransmission (TCP's first one comes after 1 s).
FIRST_CONTACT = ("connect", "binding")
FIRST_CONTACT_FLOOR_S = 1.2


@dataclass
class Step:
    """One timed step of one target. ``status``: pass, fail or skip (not testable here)."""

    name: str
    status: str
    duration_s: float | None
    detail: str
    code: int | None = None

    @property
    def ok(self) -> bool:
        """True unless the step failed (a skipped step is no failure)."""
        return self.status != "fail"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "pass": self.passed,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 4),
            "detail": self.detail,
        }
        if self.code is not None:
            out["code"] = self.code
        return out


@dataclass
class ServerResult:
    """One URL checked at one of its addresses (a "target")."""

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
    def family(self) -> int | None:
        return None if self.address is None else (6 if ":" in self.address else 4)

    @property
    def status(self) -> str:
        if not self.checks or any(s.status == "fail" for s in self.checks):
            return FAIL
        if any(s.status == "skip" for s in self.checks):
            return UNTESTABLE
        return PASS

    @property
    def ok(self) -> bool:
        """True unless the target failed (untestable is no failure)."""
        return self.status != FAIL

    def step(self, name: str) -> Step | None:
        return next((s for s in self.checks if s.name == name), None)

    @property
    def rtt_s(self) -> float | None:
        """The round trip of the first request answered (Binding, or the challenged
        Allocate)."""
        for name in ("binding", "auth-challenge"):
            step = self.step(name)
            if step is not None and step.passed:
                return step.duration_s
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "path": self.path,
            "status": self.status,
            "pass": self.status == PASS,
            "scheme": self.scheme,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "family": self.family,
            "mapped_address": self.mapped_address,
            "relayed_address": self.relayed_address,
            "rtt_s": None if self.rtt_s is None else round(self.rtt_s, 4),
            "checks": [step.as_dict() for step in self.checks],
            "hint": self.hint,
        }


@dataclass
class UrlSummary:
    """A URL over all the addresses it resolved to."""

    url: str
    path: str
    host: str
    targets: list[ServerResult]

    @property
    def status(self) -> str:
        statuses = {t.status for t in self.targets}
        if FAIL in statuses or not statuses:
            return FAIL
        return UNTESTABLE if statuses == {UNTESTABLE} else PASS

    @property
    def failing_addresses(self) -> list[str]:
        return [t.address for t in self.targets if t.status == FAIL and t.address]

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "path": self.path,
            "host": self.host,
            "status": self.status,
            "pass": self.status == PASS,
            "addresses": [t.address for t in self.targets if t.address],
            "failing_addresses": self.failing_addresses,
            "untestable_addresses": [t.address for t in self.targets
                                     if t.status == UNTESTABLE and t.address],
        }


@dataclass
class CheckReport:
    source: str
    servers: list[ServerResult]  # one per (URL, address), in configuration order
    warnings: list[str]
    insecure: bool
    timeout: float
    duration_s: float
    browser_notes: list[BrowserNote] = field(default_factory=list)
    browsers: list[Any] = field(default_factory=list)  # BrowserGathering, with --browser

    @property
    def urls(self) -> list[UrlSummary]:
        grouped: dict[str, UrlSummary] = {}
        for target in self.servers:
            summary = grouped.get(target.path)
            if summary is None:
                summary = grouped[target.path] = UrlSummary(target.url, target.path,
                                                            target.host, [])
            summary.targets.append(target)
        return list(grouped.values())

    @property
    def ok(self) -> bool:
        """No target failed (untestable ones do not fail the check)."""
        return all(server.ok for server in self.servers)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "check",
            "pass": self.ok,
            "source": self.source,
            "insecure": self.insecure,
            "timeout_s": self.timeout,
            "duration_s": round(self.duration_s, 4),
            "warnings": list(self.warnings),
            "browser_notes": [n.as_dict() for n in self.browser_notes],
            "urls": [u.as_dict() for u in self.urls],
            "servers": [server.as_dict() for server in self.servers],
        }
        if self.browsers:
            out["browsers"] = [b.as_dict() for b in self.browsers]
        return out


@dataclass
class _Options:
    timeout: float
    insecure: bool
    ca_file: str | None
    resolver: dns.asyncresolver.Resolver | None
    families: tuple[int, ...]


class _Failed(Exception):
    """Stop checking this target (the step was recorded)."""


class _Budget:
    """Deadlines for a sequence of weighted steps inside one overall deadline: each step gets
    its weight's share of what is left, so a fast step leaves its time to the next ones."""

    def __init__(self, deadline: float, plan: Sequence[str], margin: float = 0.0) -> None:
        # Steps end ``margin`` before the hard deadline, so that their own messages, not the
        # safety net's, are what the report says.
        self.deadline = deadline - margin
        self.plan = list(plan)
        self.first_contact = next((n for n in self.plan if n in FIRST_CONTACT), None)

    def share(self, name: str, now: float) -> float:
        left = max(0.0, self.deadline - now)
        ahead = self.plan[self.plan.index(name):] if name in self.plan else [name]
        total = sum(WEIGHTS.get(n, 1.0) for n in ahead) or 1.0
        share = left * WEIGHTS.get(name, 1.0) / total
        if name == self.first_contact:
            share = max(share, min(left / 2, FIRST_CONTACT_FLOOR_S))
        return share


class _Run:
    """Checks of one target: timed steps, a hint from the first failure."""

    def __init__(self, result: ServerResult, url: IceUrl, server: IceServer, opts: _Options,
                 budget: _Budget) -> None:
        self.result = result
        self.url = url
        self.server = server
        self.opts = opts
        self.budget = budget
        self.current = "dns"
        self.started = time.monotonic()
        self.step_deadline = budget.deadline
        self.client: TurnClient | None = None
        self.extra: list[TurnClient] = []  # a second allocation, when one was needed
        self.passed: set[str] = set()

    def begin(self, name: str) -> float:
        """Start step ``name``; returns the seconds it may take."""
        loop = asyncio.get_running_loop()
        self.current = name
        self.started = time.monotonic()
        share = self.budget.share(name, loop.time())
        self.step_deadline = loop.time() + share
        for client in (self.client, *self.extra):
            if client is not None:
                client.timeout = max(share, 0.05)
        return share

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def ok(self, detail: str) -> None:
        self.result.checks.append(Step(self.current, "pass", self.elapsed(), detail))
        self.passed.add(self.current)

    def skip(self, detail: str, hint: str | None = None) -> None:
        self.result.checks.append(Step(self.current, "skip", self.elapsed(),
                                       f"not testable from here: {detail}"))
        if self.result.hint is None:
            self.result.hint = hint

    def fail(self, detail: str, hint: str | None, code: int | None = None,
             *, stop: bool = True) -> None:
        self.result.checks.append(Step(self.current, "fail", self.elapsed(), detail, code))
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
        if isinstance(exc, EchoTimeout):
            self.fail(str(exc), hints.hint_for_echo(self.current, exc.direction, self.passed))
        if isinstance(exc, TurnTimeout):
            self.fail(str(exc), hints.hint_for_timeout(self.url, self.current, port,
                                                       self.passed))
        if isinstance(exc, TurnConnectionError) and "(EPERM)" in str(exc):
            self.fail(str(exc), hints.LOCAL_UDP_BLOCKED)
        if isinstance(exc, TurnConnectionError) and "refused" in str(exc):
            self.fail(str(exc), hints.hint_for_refused(self.url, port))
        if isinstance(exc, TurnIntegrityError):
            self.fail(str(exc), hints.INTEGRITY)
        if isinstance(exc, TurnConnectionError) and self.current == "tls":
            self.fail(str(exc), hints.hint_for_tls(False, self.url))  # reset mid-handshake
        self.fail(str(exc), None)


class EchoTimeout(TurnTimeout):
    """Relayed data did not arrive: ``direction`` "inbound" (peer → relay → client) or
    "outbound" (client → relay → peer)."""

    def __init__(self, message: str, direction: str) -> None:
        super().__init__(message)
        self.direction = direction


async def check(
    config: IceConfig | str | os.PathLike[str] | dict[str, Any] | list[Any],
    *,
    timeout: float = 5.0,
    insecure: bool = False,
    ca_file: str | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
    families: tuple[int, ...] = (4, 6),
    progress: Callable[[ServerResult], None] | None = None,
    concurrency: int | None = None,
    browsers: Sequence[str] = (),
) -> CheckReport:
    """Check every URL of ``config`` (an :class:`IceConfig`, a file path, or decoded JSON) at
    every address it resolves to. ``families``: (4,), (6,) or both. ``timeout``: seconds per
    URL, all URLs in parallel (at most ``concurrency`` URLs at once when given).
    ``browsers`` ("chromium"): also gather from every URL in that real browser, at the same
    time (:attr:`CheckReport.browsers`). Raises ConfigError for a configuration a browser
    would reject and for bad parameters."""
    if not 0 < timeout <= 600:
        raise ConfigError(f"expected seconds between 0 and 600, got {timeout:g}", param="timeout")
    if not families or not set(families) <= {4, 6}:
        raise ConfigError(f"expected (4,), (6,) or (4, 6), got {families!r}", param="families")
    config = coerce_config(config)
    if ca_file is not None:
        verifying_context(ca_file)  # a bad CA file is the user's mistake: say so up front
    opts = _Options(timeout, insecure, ca_file, resolver, tuple(families))
    start = time.monotonic()
    gate = asyncio.Semaphore(concurrency) if concurrency else None

    async def one(server: IceServer, url: IceUrl) -> list[ServerResult]:
        if gate is None:
            results = await _check_url(server, url, opts)
        else:
            async with gate:
                results = await _check_url(server, url, opts)
        if progress is not None:
            for result in results:
                progress(result)
        return results

    drivers = [browser_registry.get(name) for name in browsers]
    live = asyncio.gather(*(one(server, url) for server, url in config.urls()))
    in_browsers = asyncio.gather(*(_in_browser(driver, config, timeout) for driver in drivers))
    grouped, gatherings = await asyncio.gather(live, in_browsers)
    warnings = list(config.warnings)
    targets = [r for group in grouped for r in group]
    for url in {t.path: t for t in targets if t.checks and "SRV" in t.checks[0].detail}.values():
        warnings.append(f"{url.path}: '{url.url}' has no port, so natkit followed its SRV "
                        "record; browsers look up no SRV record and use the default port")
    if insecure:
        warnings.append("--insecure: TLS certificates were not required to be valid")
    return CheckReport(config.source, targets, warnings, insecure, timeout,
                       time.monotonic() - start, browser_notes(config), list(gatherings))


async def _in_browser(driver: Any, config: IceConfig, timeout: float) -> Any:
    from natkit.ice.browsers.base import BrowserServer

    servers = [BrowserServer(url.url, url.path, server.username, server.credential)
               for server, url in config.urls()]
    whole = []
    for server in config.servers:
        entry: dict[str, Any] = {"urls": [u.url for u in server.urls]}
        if server.username is not None:
            entry["username"] = server.username
        if server.credential is not None:
            entry["credential"] = server.credential
        whole.append(entry)
    return await driver.gather(servers, whole, timeout=timeout)


def check_sync(config: Any, **kw: Any) -> CheckReport:
    """:func:`check` for callers without a running event loop (a script, a REPL)."""
    return run_sync("check", check, config, **kw)


def _new_result(url: IceUrl, address: Address | None = None) -> ServerResult:
    result = ServerResult(url.url, url.path, url.scheme, url.protocol, url.host, url.port)
    if address is not None:
        result.address, result.port = address
    return result


def _plan(url: IceUrl) -> list[str]:
    steps = ["dns", "route"]
    if url.protocol != "udp":
        steps.append("tls" if url.secure else "connect")
    if url.is_turn:
        steps += ["auth-challenge", "allocate", "relay-address", "permission", "relay-echo",
                  "channel"]
    else:
        steps.append("binding")
    return steps


async def _check_url(server: IceServer, url: IceUrl, opts: _Options) -> list[ServerResult]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.timeout
    plan = _plan(url)
    dns_result = _new_result(url)
    margin = min(0.3, opts.timeout * 0.05)
    dns_run = _Run(dns_result, url, server, opts, _Budget(deadline, plan, margin))
    share = dns_run.begin("dns")
    try:
        resolution = await resolve_url(url, timeout=max(share, 0.05), resolver=opts.resolver,
                                       families=opts.families)
    except ResolveError as exc:
        hint = (hints.DNS_UNREACHABLE if exc.kind == "timeout" else
                "check the host name; without a port in the URL, publish SRV records or "
                "A/AAAA records for it")
        with contextlib.suppress(_Failed):
            dns_run.fail(str(exc), hint)
        return [dns_result]
    dns_step = Step("dns", "pass", dns_run.elapsed(), resolution.detail)
    wanted = [a for a in resolution.addresses if (6 if ":" in a[0] else 4) in opts.families]
    if not wanted:  # an IP literal of the other family
        only = "IPv4" if opts.families == (4,) else "IPv6"
        dns_result.checks.append(Step("dns", "skip", dns_run.elapsed(),
                                      f"not testable from here: {url.host} is not {only}, and "
                                      f"only {only} was asked for"))
        return [dns_result]
    targets = [_new_result(url, address) for address in wanted]
    for result in targets:
        result.checks.append(dns_step)
    await asyncio.gather(*(_check_target(result, resolution, server, url, opts, deadline, plan)
                           for result in targets))
    return targets


async def _check_target(result: ServerResult, resolution: Resolution, server: IceServer,
                        url: IceUrl, opts: _Options, deadline: float, plan: list[str]) -> None:
    assert result.address is not None and result.port is not None
    dest = (result.address, result.port)
    run = _Run(result, url, server, opts,
               _Budget(deadline, plan, min(0.3, opts.timeout * 0.05)))
    run.passed.add("dns")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(deadline):
            await _steps(run, dest)
    except _Failed:
        pass
    except TimeoutError:
        # The steps keep to their shares; this is the safety net.
        run.fail(f"no answer within the {opts.timeout:g} s budget",
                 hints.hint_for_timeout(url, run.current, dest[1], run.passed), stop=False)
    finally:
        for client in (run.client, *run.extra):
            if client is not None:
                # Release allocations with what is left of the budget, never more; a server
                # that cannot be told expires them after their lifetime anyway.
                await client.close(release_timeout=min(1.0, max(0.0, deadline - loop.time())))


async def _steps(run: _Run, dest: Address) -> None:
    url, opts, result = run.url, run.opts, run.result
    run.begin("route")
    if local_address_toward(dest) is None:
        family = 6 if ":" in dest[0] else 4
        run.skip(f"this host has no IPv{family} route to {dest[0]}",
                 f"run the check from a host with IPv{family} to test this address")
        return
    secure_ctx = verifying_context(opts.ca_file) if url.secure else None
    client = TurnClient(dest, url.protocol, run.server.username, run.server.credential,
                        server_hostname=url.host, timeout=opts.timeout, ssl_context=secure_ctx)
    run.client = client  # closed by _check_target, also on failure and timeout
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
        try:
            await client.open()
        except (TurnClientError, OSError) as exc:
            run.current = "route"
            run.fail(f"cannot open a UDP socket toward {_fmt(dest)}: {exc}", None)
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
    local = await _UdpPeer.open(dest[0], allocation.relayed[0])
    try:
        await _relay_steps(run, client, dest, allocation, local)
    finally:
        local.close()


async def _relay_steps(run: _Run, client: TurnClient, dest: Address, allocation: Allocation,
                       local: _UdpPeer) -> None:
    peer_ip = await _peer_ip(run, local, dest, allocation)
    run.begin("permission")
    try:
        await client.create_permission(peer_ip)
    except TurnClientError as exc:
        run.fail_client(exc, dest[1])
    run.ok(f"peer {peer_ip}")

    share = run.begin("relay-echo")
    loop = asyncio.get_running_loop()
    peer: _EchoPeer = local
    via = "Send/Data indications"
    try:
        if run.url.protocol == "udp":
            peer_seen = await _echo(client, local, allocation, run.step_deadline)
        else:
            # Over TCP/TLS the datagram from our UDP peer may be what cannot get through: try
            # it with part of the step's time, and learn meanwhile whether UDP leaves this host.
            inbound_until = loop.time() + share * 0.45
            reach = asyncio.ensure_future(local.binding(dest, until=inbound_until))
            try:
                peer_seen = await _echo(client, local, allocation, run.step_deadline,
                                        inbound_deadline=inbound_until)
            except EchoTimeout as exc:
                if exc.direction != "inbound":
                    raise
                udp_answer = await reach
                if udp_answer is not None and local.send_error is None:
                    raise  # UDP works from here: the relay itself is at fault
                why = (f"this host cannot send UDP: {local.send_error}" if local.send_error
                       else f"no UDP answer from {_fmt(dest)}, so UDP seems blocked here")
                second = await _second_allocation(run, dest, allocation, why)
                if second is None:
                    return
                peer, peer_seen = second, second.relayed
                peer_seen = await _echo(client, second, allocation, run.step_deadline)
                via = f"Send/Data indications; the peer is a second allocation, as {why}"
            finally:
                if not reach.done():
                    reach.cancel()
                await asyncio.gather(reach, return_exceptions=True)
    except TurnClientError as exc:
        run.fail_client(exc, dest[1])
    run.ok(f"peer {_fmt(peer_seen)} <-> relay {_fmt(allocation.relayed)} ({via})")

    run.begin("channel")
    try:
        channel = await client.channel_bind(peer_seen)
        await _echo(client, peer, allocation, run.step_deadline, channel=channel,
                    peer_addr=peer_seen)
    except TurnClientError as exc:
        run.fail_client(exc, dest[1])
    run.ok(f"channel 0x{channel:04x} <-> peer {_fmt(peer_seen)} (ChannelData)")


async def _second_allocation(run: _Run, dest: Address, allocation: Allocation,
                             why: str) -> _AllocationPeer | None:
    """A second allocation on the same server over the same transport, as the echo's peer.
    None (the step recorded as not testable) when the server will not relay between them."""
    assert run.client is not None
    first = run.client
    second = TurnClient(dest, first.protocol, run.server.username, run.server.credential,
                        server_hostname=first.server_hostname, ssl_context=first.ssl_context,
                        timeout=first.timeout)
    run.extra.append(second)
    try:
        await second.open()
        other = await second.allocate()
        # whole transport addresses (servers ignore the port of a permission, but one that
        # refuses its own relayed addresses, as natkit does, can say so at once)
        await first.create_permission(other.relayed)
        await second.create_permission(allocation.relayed)
    except TurnError as exc:
        run.skip(f"{why}, and the server refused relaying between two of its own allocations "
                 f"({exc.code} {exc.reason}); the {first.protocol.upper()} allocation itself "
                 "works", hints.UDP_BLOCKED_HERE)
        return None
    except TurnClientError as exc:
        run.skip(f"{why}, and a second allocation failed: {exc}", hints.UDP_BLOCKED_HERE)
        return None
    return _AllocationPeer(second, other.relayed)


async def _peer_ip(run: _Run, peer: _UdpPeer, dest: Address, allocation: Allocation) -> str:
    """The address the relay will see our test peer at."""
    if address_scope(dest[0]) == "loopback":
        return peer.local[0]
    # Ask the server (it answers Binding on its UDP port too) what the peer looks like;
    # else assume the peer leaves through the same NAT as the client.
    loop = asyncio.get_running_loop()
    until = loop.time() + min(1.0, max(0.05, (run.budget.deadline - loop.time()) / 6))
    mapped = await peer.binding(dest, until=until)
    if mapped is not None:
        return mapped[0]
    if allocation.mapped is not None:
        return allocation.mapped[0]
    return peer.local[0]


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


# -- the echo ---------------------------------------------------------------------------------


class _EchoPeer(Protocol):
    def send(self, data: bytes, dest: Address) -> None: ...

    def receive(self, timeout: float) -> Awaitable[tuple[bytes | None, Address | None]]: ...


async def _echo(client: TurnClient, peer: _EchoPeer, allocation: Allocation, deadline: float,
                *, channel: int | None = None, peer_addr: Address | None = None,
                inbound_deadline: float | None = None) -> Address:
    """Peer -> relay -> client, then client -> relay -> peer, within ``deadline`` (loop time):
    the first direction gets half of the time (or until ``inbound_deadline``), the second the
    rest, so each failure has its own message. Returns the peer's address as the relay saw
    it. Retransmits every 200 ms (UDP may drop)."""
    loop = asyncio.get_running_loop()
    token = os.urandom(8).hex()
    inbound, outbound = f"natkit-in-{token}".encode(), f"natkit-out-{token}".encode()
    first_until = inbound_deadline or loop.time() + (deadline - loop.time()) / 2
    seen: Address | None = None
    wrong_channel = False
    while seen is None and loop.time() < first_until:
        if getattr(peer, "send_error", None):
            break  # the peer cannot send at all: no use waiting
        peer.send(inbound, allocation.relayed)
        wait = max(0.01, min(0.2, first_until - loop.time()))
        try:
            got = await client.receive(wait)
        except TurnTimeout:
            continue
        if got.data != inbound:
            continue
        if channel is not None and got.channel != channel:
            wrong_channel = True
            continue
        seen = got.peer or peer_addr
    if seen is None:
        if wrong_channel:
            raise TurnClientError(f"data came back as a Data indication, not on channel "
                                  f"0x{channel:04x}")
        how = " on the channel" if channel is not None else ""
        raise EchoTimeout(f"the datagram sent to the relay address {_fmt(allocation.relayed)} "
                          f"never reached the client{how}", "inbound")
    while loop.time() < deadline:
        if channel is not None:
            client.send_channel(channel, outbound)
        else:
            client.send_to(seen, outbound)
        data, source = await peer.receive(max(0.01, min(0.2, deadline - loop.time())))
        if data == outbound and source is not None:
            if source != allocation.relayed:
                raise TurnClientError(
                    f"the relayed datagram came from {_fmt(source)}, not from the advertised "
                    f"relay address {_fmt(allocation.relayed)}")
            return seen
    how = " (ChannelData)" if channel is not None else ""
    raise EchoTimeout(f"data sent through the relay{how} never reached the peer", "outbound")


class _PeerProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(maxsize=256)
        self.send_error: str | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        # EPERM on send: a local firewall (nftables/iptables output rule) drops UDP.
        if isinstance(exc, PermissionError):
            self.send_error = LOCAL_FIREWALL


class _UdpPeer:
    """A UDP socket standing in for the remote peer of a relay."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _PeerProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        sock = transport.get_extra_info("sockname")
        self.local: Address = (str(sock[0]), int(sock[1]))

    @property
    def send_error(self) -> str | None:
        return self.protocol.send_error

    @classmethod
    async def open(cls, server_ip: str, relayed_ip: str | None = None) -> _UdpPeer:
        v6 = ":" in (relayed_ip or server_ip)
        wildcard = "::" if v6 else "0.0.0.0"
        target = relayed_ip or server_ip
        bind = wildcard
        if address_scope(target) == "loopback":
            # Another loopback address than the relay's own, which a relay may refuse as a
            # peer (it owns it); IPv6 has only ::1.
            bind = "::1" if v6 else ("127.0.0.2" if target == "127.0.0.1" else "127.0.0.1")
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _PeerProtocol, local_addr=(bind, 0),
            family=socket.AF_INET6 if v6 else socket.AF_INET)
        return cls(transport, protocol)

    def send(self, data: bytes, dest: Address) -> None:
        try:
            self.transport.sendto(data, dest)
        except PermissionError:
            self.protocol.send_error = LOCAL_FIREWALL
        except OSError:
            pass  # a lost transmission

    async def receive(self, timeout: float) -> tuple[bytes | None, Address | None]:
        try:
            return await asyncio.wait_for(self.protocol.queue.get(), timeout)
        except TimeoutError:
            return None, None

    async def binding(self, server: Address, *, until: float) -> Address | None:
        """Our mapped address as ``server`` sees it over UDP, or None by loop time ``until``."""
        if (":" in server[0]) != (":" in self.local[0]):
            return None
        loop = asyncio.get_running_loop()
        msg = Message(Method.BINDING, Class.REQUEST)
        data = msg.encode(fingerprint=True)
        while loop.time() < until and self.send_error is None:
            self.send(data, server)
            reply, _src = await self.receive(max(0.01, min(0.2, until - loop.time())))
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


class _AllocationPeer:
    """A second allocation as the relay's peer: what it sends leaves from ``relayed``."""

    def __init__(self, client: TurnClient, relayed: Address) -> None:
        self.client = client
        self.relayed = relayed

    def send(self, data: bytes, dest: Address) -> None:
        self.client.send_to(dest, data)

    async def receive(self, timeout: float) -> tuple[bytes | None, Address | None]:
        try:
            got = await self.client.receive(timeout)
        except TurnTimeout:
            return None, None
        return got.data, got.peer


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _short(text: str) -> str:
    return text.split(": ", 1)[-1] if ": " in text else text

