"""`natkit.probe()`: the public address and the NAT's behaviour, per address family.

``await probe(["stun:stun.example.org"])`` (or :func:`probe_sync`) resolves the servers, runs
:func:`natkit.nat.discovery.discover` for IPv4 and IPv6 concurrently and returns a
:class:`ProbeResult`; ``result.to_json()`` gives the stable keys of ``natkit probe --json``:

``public``        {ip, port} the servers saw (over TCP/TLS when UDP is blocked), or null
``local``         {ip, port} of the probe's primary socket (the routed address, not 0.0.0.0)
``mapping``       none | endpoint-independent | address-dependent | address-and-port-dependent
                  | unknown
``filtering``     endpoint-independent | address-dependent | address-and-port-dependent | unknown
``hairpinning``   true | false | null (not tested)
``nat_type``      open | full-cone | restricted-cone | port-restricted-cone | symmetric
                  | symmetric-firewall | udp-blocked | unknown
``reason``        why nat_type is unknown (e.g. "server does not support RFC 5780"), or null
``alg``           true when MAPPED-ADDRESS differs from XOR-MAPPED-ADDRESS
``udp_blocked``   true when no UDP answer came but TCP/TLS did
``mappings_agree`` whether several servers saw the same mapping (null with one server)
``lifetime_s``    {min, max} idle binding lifetime bracket with --lifetime, else null
``port_preservation``  true when every mapping kept the local port, false when not, null
``port_allocation``  preserved | sequential | random | changed (another port, one mapping) | null
``nat_layers``    NATs between the host and the server (0: none; 2: e.g. a home NAT behind a
                  carrier NAT), from TTL-limited Bindings and the routers' ICMP; null: unknown
``ice``           {direct_with, turn_needed_with, summary}: what the type means for peers
``servers``       per server: url, address, transport, rtt_s (UDP), mapped, rfc5780,
                  other_address, response_origin, stream {transport, answered, mapped, rtt_s}
``tests``         per test: name, local, sent_to, change_request, expected_from, answered,
                  answered_from, response_origin, mapped, error, attempts, rtt_s
``notes``         observations behind the verdict (guards that fired, disagreements)
``family``        ipv4 | ipv6: the family the keys above describe (IPv4 when it answered)
``families``      the same keys for every family probed, by "ipv4"/"ipv6"
``errors``        servers that did not resolve (or whose DNS server did not answer),
                  families without a route
``duration_s``    wall time of the whole probe
``schema_version``, ``kind`` ("probe"), ``pass`` (a server answered): as every natkit report

The whole probe ends within ``timeout`` (DNS included; ``--lifetime`` adds its own search).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from natkit._sync import run_sync
from natkit.nat.classify import (
    UNKNOWN,
    Address,
    Exchange,
    ice_advice,
    usable_other,
)
from natkit.nat.discovery import FamilyReport, ProbeOptions, discover
from natkit.nat.servers import (
    DnsTimeout,
    ResolvedServer,
    ServerSpec,
    default_servers,
    parse_server,
    resolve,
)

__all__ = ["SCHEMA_VERSION", "ProbeOptions", "ProbeResult", "probe", "probe_sync"]

SCHEMA_VERSION = 1


def _addr(a: Address | None) -> dict[str, Any] | None:
    return None if a is None else {"ip": a[0], "port": a[1]}


def _hostport(a: Address) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def _s(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _test_json(ex: Exchange) -> dict[str, Any]:
    r = ex.reply
    return {
        "name": ex.name,
        "local": _addr(ex.local),
        "sent_to": _hostport(ex.dest),
        "change_request": ex.change,
        "expected_from": _hostport(ex.expect),
        "answered": r is not None,
        "answered_from": _hostport(r.source) if r else None,
        "response_origin": _addr(r.origin) if r else None,
        "mapped": _addr(r.mapped) if r else None,
        "error": r.error if r else None,
        "attempts": ex.attempts,
        "rtt_s": _s(r.rtt) if r else None,
    }


def _family_json(rep: FamilyReport) -> dict[str, Any]:
    v, obs = rep.verdict, rep.observations
    servers = []
    for s in obs.servers:
        udp = s.udp.reply if s.udp else None
        servers.append(
            {
                "url": s.label,
                "address": _hostport(s.address),
                "transport": "udp" if s.udp is not None else s.stream_transport,
                "rtt_s": _s(udp.rtt) if udp else None,
                "mapped": _addr(udp.mapped) if udp else None,
                "rfc5780": usable_other(s) is not None,
                "other_address": _addr(udp.other) if udp else None,
                "response_origin": _addr(udp.origin) if udp else None,
                "stream": None
                if s.stream_transport is None
                else {
                    "transport": s.stream_transport,
                    "answered": s.stream is not None,
                    "mapped": _addr(s.stream.mapped) if s.stream else None,
                    "rtt_s": _s(s.stream.rtt) if s.stream else None,
                },
            }
        )
    return {
        "family": f"ipv{rep.family}",
        "public": _addr(v.public),
        "local": _addr(obs.local),
        "mapping": v.mapping,
        "filtering": v.filtering,
        "hairpinning": v.hairpinning,
        "nat_type": v.nat_type,
        "reason": v.reason,
        "alg": v.alg,
        "udp_blocked": v.udp_blocked,
        "mappings_agree": v.mappings_agree,
        "lifetime_s": rep.lifetime_s,
        "port_preservation": rep.ports[0],
        "port_allocation": rep.ports[1],
        "nat_layers": rep.nat_layers,
        "ice": ice_advice(v.nat_type),
        "servers": servers,
        "tests": [_test_json(t) for t in rep.tests],
        "notes": v.notes,
        "duration_s": round(rep.duration_s, 4),
    }


@dataclass
class ProbeResult:
    """Per-family reports; the first one (IPv4 when probed and answered) is the headline."""

    reports: list[FamilyReport]
    duration_s: float
    errors: list[str] = field(default_factory=list)

    @property
    def primary(self) -> FamilyReport | None:
        for rep in self.reports:
            if rep.verdict.reachable:
                return rep
        return self.reports[0] if self.reports else None

    @property
    def answered(self) -> bool:
        return any(rep.verdict.reachable for rep in self.reports)

    @property
    def exit_code(self) -> int:
        """0: classified (udp-blocked included); 1: no server answered at all."""
        return 0 if self.answered else 1

    def to_json(self) -> dict[str, Any]:
        head = self.primary
        out: dict[str, Any]
        if head is None:
            out = {
                "family": None,
                "public": None,
                "local": None,
                "mapping": UNKNOWN,
                "filtering": UNKNOWN,
                "hairpinning": None,
                "nat_type": UNKNOWN,
                "reason": "no server to ask",
                "alg": False,
                "udp_blocked": False,
                "mappings_agree": None,
                "lifetime_s": None,
                "port_preservation": None,
                "port_allocation": None,
                "nat_layers": None,
                "ice": ice_advice(UNKNOWN),
                "servers": [],
                "tests": [],
                "notes": [],
            }
        else:
            out = _family_json(head)
        out["families"] = {f"ipv{r.family}": _family_json(r) for r in self.reports}
        out["errors"] = self.errors
        out["duration_s"] = round(self.duration_s, 4)
        return {"schema_version": SCHEMA_VERSION, "kind": "probe", "pass": self.answered,
                **out}


async def probe(
    servers: Sequence[str] | None = None,
    *,
    timeout: float = 3.0,
    local: Address | None = None,
    families: Sequence[int] | None = None,
    behaviour: bool = True,
    lifetime: bool = False,
    lifetime_max: float = 60.0,
    options: ProbeOptions | None = None,
    resolver: Any = None,
    ssl_context: Any = None,
) -> ProbeResult:
    """Find the public address and classify the NAT, within ``timeout`` seconds in all.

    ``servers``: ``stun:``/``stuns:`` URLs or ``host[:port]`` (default: configs/stun-servers.toml).
    ``families``: (4,), (6,) or both (default: every family a server resolves to and the host
    can route). ``local``: bind the primary socket to this (ip, port). ``resolver``: a
    dnspython resolver (default: the system's configuration). ``ssl_context``: for stuns:
    servers. Raises ConfigError for bad parameters; an unreachable server is a result
    (``exit_code`` 1), not an exception."""
    from natkit.errors import ConfigError

    start = time.monotonic()
    if not 0 < timeout <= 600:
        raise ConfigError(f"expected seconds between 0 and 600, got {timeout:g}", param="timeout")
    if families is not None and (not families or not set(families) <= {4, 6}):
        raise ConfigError(f"expected (4,), (6,) or (4, 6), got {families!r}", param="families")
    specs = [parse_server(s) for s in (servers or default_servers())]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wanted = set(families or (4, 6))
    if local is not None:
        wanted &= {6 if ":" in local[0] else 4}
    # Names get at most 40 % of the budget (and 2 s): the tests need the rest.
    dns_budget = min(2.0, timeout * 0.4)

    async def lookup(spec: ServerSpec) -> list[ResolvedServer] | str:
        try:
            return await resolve(spec, wanted, dns_budget, resolver)
        except DnsTimeout as exc:
            return str(exc)

    looked_up = await asyncio.gather(*[lookup(s) for s in specs])
    errors: list[str] = []
    resolved_lists: list[list[ResolvedServer]] = []
    for spec, found in zip(specs, looked_up):
        if isinstance(found, str):
            errors.append(f"{spec.label}: {found}")
            resolved_lists.append([])
        else:
            if not found:
                errors.append(f"{spec.label}: does not resolve"
                              + (" to an address of the family asked for" if families else ""))
            resolved_lists.append(found)
    by_family: dict[int, list[ResolvedServer]] = {}
    for lst in resolved_lists:
        for r in lst:
            by_family.setdefault(r.family, []).append(r)
    if options is None:
        options = ProbeOptions()
    options.local = local
    options.behaviour = behaviour
    options.lifetime = lifetime
    options.lifetime_max = lifetime_max
    options.deadline = deadline
    options.timeout = max(0.05, min(timeout, deadline - loop.time()))
    if ssl_context is not None:
        options.ssl_context = ssl_context
    order = [f for f in (4, 6) if f in by_family]
    reports = await asyncio.gather(*[discover(by_family[f], f, options) for f in order])
    # A family with no route at all (no IPv6 on this host) is dropped when another answered.
    kept = [r for r in reports if r.verdict.reachable or r.observations.local is not None]
    for rep in reports:
        errors += rep.errors
    return ProbeResult(kept or list(reports), time.monotonic() - start, errors)


def probe_sync(servers: Sequence[str] | None = None, **kwargs: Any) -> ProbeResult:
    """:func:`probe` for callers without a running event loop (a script, a REPL)."""
    return run_sync("probe", probe, servers, **kwargs)
