"""Orchestration: run a topology's probes and cases on agents that an engine has put in place.

This is the one API both engines drive. An engine builds the lab, starts one agent per node
(``"srv"`` for the servers' node, the peer's id for each peer, as in the topology's
:class:`~natkit.lab.topology.Plan`) and hands the connected sockets to::

    result = await orchestrate(topo, plan, cases, agents, turn_engine="natkit")

which starts the servers in the ``srv`` agent, runs ``natkit probe`` inside every NAT, runs
every case (each side in the agent of its peer, with the stack the case names), stops the
servers and returns an :class:`Orchestration` of typed results (no packet evidence yet: that
is the engine's capture, judged afterwards by :func:`natkit.lab.runner.finish`).

Scheduling: cases expected to fail idle until their deadline and need no CPU, so they all
start at once (up to IDLE_LIMIT); cases expected to connect are CPU-bound (DTLS) and run at most ``parallel`` at a
time (default: 4 per CPU), the light stacks' first. Cases of a heavy stack (a browser) also
count against the stack's own ``parallel``; its browsers are started (``prepare``) in every node
that needs them after the probes, one per CPU at a time while the other stacks' cases run,
and a browser case starts once its own nodes' browsers are up. When one side of a case has failed, the other gets
a second to report, then is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from natkit.errors import PrerequisiteError
from natkit.lab import stacks
from natkit.lab.agents import AgentClient
from natkit.lab.evidence import claimed_route
from natkit.lab.expect import Expectation, expected_probe
from natkit.lab.labca import LabCA, make_lab_ca
from natkit.lab.nats import NatBehaviour
from natkit.lab.results import CaseResult, ProbeResult
from natkit.lab.retry import restarts, shows_a_browser_fault
from natkit.lab.servers import WEB_PORT, ServersSpec
from natkit.lab.stacks import PeerConfig, PeerResult
from natkit.lab.stacks.capabilities import Capabilities
from natkit.lab.topology import LAB_ZONE, Case, PeerPlan, Plan, RouterPlan, Topology

__all__ = [
    "Orchestration",
    "Progress",
    "Tally",
    "case_report",
    "case_result",
    "check_stacks",
    "cpu_limit",
    "expectation_of",
    "orchestrate",
]

PROBE_TIMEOUT = 1.5  # s per probe transaction: answers take ms in the lab
RESULT_MARGIN = 6.0  # s an agent may take beyond a peer's own bound to report
SERVERS_START_TIMEOUT = 15.0
SERVERS_STOP_TIMEOUT = 12.0  # s for the servers to stop (coturn: SIGTERM, after 5 s SIGKILL)
FAILED_PEER_GRACE_S = 1.0  # once one side failed, how long the other may take to say so too
# NATs whose UDP mapping lifetime (udp_timeout_s) is this short or shorter get it measured
# during the cases (RFC 5780 §4.6: checkpoints just before and just after it); longer ones
# would hold the run past its budget.
LIFETIME_MEASURE_MAX_S = 30
LIFETIME_BRACKET_S = 5.0  # the checkpoints: this much before and after the claimed lifetime
PROBE_TRIES = 2  # an inconclusive probe is asked again once
PROBES_AT_ONCE = 6  # probes judge by timed silences: a few at a time keep them exact
LONGEVITY_MARGIN_S = 5  # a longevity case idles this much past the mapping lifetime
START_GATE_S = 1.0  # an expected failure of a costly stack holds a start slot this long
# Expected failures at once: they mostly wait for their deadline, but each still gathers
# (STUN, TURN allocations) and sends checks; thousands at once (--full) would swamp the lab.
IDLE_LIMIT = 48
# Browser windows connecting at once, per CPU, over every browser stack (a case of two
# browsers opens two): a window's ICE, DTLS and renderer start are CPU-bound, and more at once
# made connecting browser cases miss their deadline on two loaded cores (--full).
WINDOWS_PER_CPU = 2
# Of the expected failures at once, how many may hold browser windows (each still gathers
# and checks in its renderer until its deadline).
HEAVY_IDLE_LIMIT = 12
# A case expected to connect that failed runs once more after every other case, a few at a
# time (RETRY_PER_CPU), in a room of its own: on a loaded machine (--full: thousands of cases,
# dozens of processes and browsers) a connection can miss its deadline for want of CPU. Its
# report keeps both: ``attempts`` and the first attempt's error. A real failure fails twice.
# A browser that a failed attempt showed at fault (it gathered nothing, or did not answer:
# natkit.lab.retry) is started again in its node before the second attempts (``restarted``),
# and the expected failures it took part in run again after it: their verdict was its fault's.
RETRIES = 1
RETRY_PER_CPU = 2

# Progress events: ("stage", {"text", ...}), ("probe", {"probe": ProbeResult}),
# ("case", {"case": CaseResult, "done": int, "total": int, "tally": Tally}).
Progress = Callable[[str, dict[str, Any]], None]


@dataclass
class Tally:
    """Cases so far by outcome against the expectation (before the packet evidence)."""

    connected: int = 0  # connected, as expected
    failed_as_expected: int = 0
    unexpected: int = 0

    def add(self, case: CaseResult) -> None:
        if not case.as_expected:
            self.unexpected += 1
        elif case.observed == "connected":
            self.connected += 1
        else:
            self.failed_as_expected += 1


@dataclass
class Orchestration:
    """What :func:`orchestrate` returns: results in the order of the cases given.

    :meth:`to_json` / :meth:`from_json` carry it from one process to another (the Compose
    engine's runner container to the host, which owns the capture and judges): only what the
    agents reported travels; expectations and routes are derived again from the topology.
    """

    cases: list[CaseResult]
    probes: list[ProbeResult]
    errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": [case_report(c) for c in self.cases],
            "probes": [p.to_json() for p in self.probes],
            "errors": list(self.errors),
            "timings": dict(self.timings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], topo: Topology, plan: Plan, cases: Sequence[Case]) -> Orchestration:
        """The orchestration of ``cases`` from :meth:`to_json`; a case it lacks is a failed one
        with that error (ValueError when ``data`` is not such a document)."""
        try:
            reports = {str(c["id"]): c for c in data["cases"]}
            probes = [ProbeResult.from_json(p) for p in data["probes"]]
            errors = [str(e) for e in data.get("errors", [])]
            timings = {str(k): float(v) for k, v in dict(data.get("timings", {})).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an orchestration document: {exc}") from None
        missing = {"error": "no result from the lab's runner"}
        out = []
        for case in cases:
            rep = reports.get(case.id, {})
            result = case_result(topo, plan, case, rep.get("caller", missing), rep.get("callee", missing))
            result.attempts = int(rep.get("attempts", 1))
            result.first_error = rep.get("first_error")
            result.restarted = [str(n) for n in rep.get("restarted") or []]
            out.append(result)
        return cls(out, probes, errors, timings)


def case_report(c: CaseResult) -> dict[str, Any]:
    """What the agents reported of one case (the part of a case that :func:`case_result` needs)."""
    out: dict[str, Any] = {"id": c.case.id, "caller": c.caller.to_json(), "callee": c.callee.to_json()}
    if c.attempts > 1:
        out.update(attempts=c.attempts, first_error=c.first_error)
        if c.restarted:
            out["restarted"] = list(c.restarted)
    return out


def case_result(
    topo: Topology, plan: Plan, case: Case, caller: Mapping[str, Any], callee: Mapping[str, Any],
    exp: Expectation | None = None,
) -> CaseResult:
    """The typed result of ``case`` from both sides' reports (agent JSON)."""
    (ra, _), (rb, _) = plan.peers_of(case)
    a, b = case.stacks
    result = CaseResult(
        case, exp or expectation_of(topo, plan, case),
        PeerResult.from_json(dict(caller), role="caller", path=case.path, stack=a),
        PeerResult.from_json(dict(callee), role="callee", path=case.path, stack=b),
        (ra.id, rb.id),
    )
    if result.observed == "connected":
        # over IPv6 the peers' own LAN is its IPv6 prefix (two peers of one dual-stack LAN)
        lan = ra.lan_net6 if case.family == "ipv6" and ra.lan_net6 else ra.peer_lan
        result.route = claimed_route(result.caller.selected, lan, ra.public_ip, result.callee.selected)
    return result


class Windows:
    """A limit on browser windows at once, taken ``n`` at a time (a case of two browsers
    takes two): one taker gathers its units at a time, so two takers never deadlock each
    holding part of what they need."""

    def __init__(self, total: int) -> None:
        self.total = max(2, total)  # a case of two browsers must fit
        self._sem = asyncio.Semaphore(self.total)
        self._taking = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def take(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.total)
        got = 0
        try:
            async with self._taking:
                for _ in range(n):
                    await self._sem.acquire()
                    got += 1
            yield
        finally:
            for _ in range(got):
                self._sem.release()


def cpu_limit(parallel: int | None, topo: Topology) -> int:
    """Cases expected to connect that run at once."""
    if parallel:
        return parallel
    if topo.parallel:
        return topo.parallel
    return max(4, 4 * (os.cpu_count() or 1))


def path_transports(topo: Topology, path: str) -> tuple[str, ...]:
    """The TURN transports the ICE servers of ``path`` name (the lab gives the relay path its
    UDP and TCP URLs, relay-tls its one ``turns:`` URL)."""
    if path == "relay-tls":
        return ("tls",) if topo.servers.turn_tls_port else ()
    return topo.servers.turn_transports


def expectation_of(topo: Topology, plan: Plan, case: Case) -> Expectation:
    """What ``case`` should do: its NATs' behaviours played with what its stacks do."""
    from natkit.lab.stack_expect import expect_stacks

    (ra, _), (rb, _) = plan.peers_of(case)
    return expect_stacks(
        ra.nat.behaviour, rb.nat.behaviour, case.path, same_lan=case.same_lan,
        turn_transports=path_transports(topo, case.path), family=case.family, stacks=case.stacks,
        # NAT64 cases reach the servers by name, and an IPv4 case names the TURN/TLS server
        # for a stack that needs a name (tls_by_name); the lab zone has no IPv6 names
        turn_is_ip=case.family == "ipv6",
        capabilities=(stacks.capabilities_of(case.stacks[0]), stacks.capabilities_of(case.stacks[1])),
    )


def idle_s(case: Case, plan: Plan) -> float:
    """How long a longevity case idles: past the shortest UDP mapping lifetime on its way."""
    if case.path != "longevity":
        return 0.0
    (ra, _), (rb, _) = plan.peers_of(case)
    chain = [ra.nat.behaviour, rb.nat.behaviour]
    chain += [b.inner for b in chain if b.inner is not None]
    return float(max(b.udp_timeout for b in chain) + LONGEVITY_MARGIN_S)


def tls_by_name(caps: Capabilities) -> bool:
    """Whether a stack gets its ``turns:`` URL with the TURN server's name (and the lab
    zone's names to resolve it): one that drops a ``turns:`` URL with an IP address."""
    return caps.turn_tls_ip_literal is False


def side_config(topo: Topology, case: Case, router: RouterPlan, peer: PeerPlan, deadline: float,
                ca_pem: str | None, idle: float, *, tls_name: bool = False) -> PeerConfig:
    """What one side of ``case`` gets: the ICE servers and signaling address of its family
    (an IPv6-only side in a nat64 case: the lab's names, through its router's DNS64), the
    lab zone's names, and with ``tls_name`` a ``turns:`` URL that names the TURN server."""
    srv = topo.servers
    v6_only = not router.nat.behaviour.ipv4
    fam = case.family
    if fam == "nat64":
        fam = "nat64" if v6_only else "ipv4"
    sig_host = srv.signaling_address6 if (fam == "ipv6" or v6_only) and srv.signaling_address6 else srv.signaling_address
    resolver = (router.lan_ip6, 53) if fam == "nat64" and router.lan_ip6 else None
    egress = router.nat.behaviour.egress_tcp_ports
    sig_port = WEB_PORT if egress is not None and srv.signaling_port not in egress else srv.signaling_port
    return PeerConfig(case.id, case.path, (sig_host, sig_port), srv.ice_servers(case.path, fam, tls_name=tls_name),
                      deadline + idle, case.family, resolver, ca_pem, idle, srv.names())


def lab_ca(topo: Topology) -> LabCA | None:
    """A fresh CA and TURN/TLS certificate when the topology has TURN over TLS."""
    srv = topo.servers
    if not srv.turn_tls_port:
        return None
    from natkit.lab.dns64 import synthesize

    ips = [srv.turn_address, synthesize(srv.turn_address), *((srv.turn_address6,) if srv.turn_address6 else ())]
    return make_lab_ca(ips, [f"turn.{LAB_ZONE}"])


def check_stacks(cases: Sequence[Case], *, on_this_host: bool = True) -> None:
    """Every stack the cases name exists, can take its role and (``on_this_host``: the
    engine runs them here, not in an image of its own) can run on this host."""
    from natkit.errors import ConfigError

    for name in sorted({s for c in cases for s in c.stacks}):
        stack = stacks.get(name)
        if on_this_host:
            stack.check()
    for c in cases:
        for role, name in zip(stacks.ROLES, c.stacks, strict=True):
            if role not in stacks.get(name).roles:
                raise ConfigError(f"case {c.id}: the {name} stack cannot be the {role}", param="stacks")


async def orchestrate(
    topo: Topology,
    plan: Plan,
    cases: Sequence[Case],
    agents: Mapping[str, socket.socket],
    *,
    turn_engine: str,
    parallel: int | None = None,
    progress: Progress | None = None,
    retries: int = RETRIES,
) -> Orchestration:
    """Run the probes and ``cases`` of ``topo`` on ``agents`` (agent name -> connected socket;
    see the module docstring); the servers run in agent ``srv``. ``retries``: how many more
    attempts a case expected to connect gets when it failed (after all the others)."""
    notify = progress or (lambda kind, info: None)
    t0 = time.monotonic()
    out = Orchestration([], [])
    clients = {name: AgentClient(name, sock) for name, sock in agents.items()}
    for c in clients.values():
        await c.start()
    try:
        await _run(topo, plan, list(cases), clients, turn_engine, parallel, notify, out, t0, retries)
    finally:
        for c in clients.values():
            await c.close()
    return out


async def _run(
    topo: Topology,
    plan: Plan,
    cases: list[Case],
    agents: dict[str, AgentClient],
    turn_engine: str,
    parallel: int | None,
    notify: Progress,
    out: Orchestration,
    t0: float,
    retries: int = RETRIES,
) -> None:
    srv = topo.servers
    servers = agents["srv"]
    ca = lab_ca(topo)
    spec = ServersSpec.of(topo, plan, turn_engine, (ca.chain_pem, ca.key_pem) if ca else None)
    servers_result = asyncio.ensure_future(servers.call(3600, op="servers", spec=spec.to_json()))
    first_up: list[asyncio.Future[Any]] = [servers.ready, servers_result]
    await asyncio.wait(first_up, timeout=SERVERS_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if not servers.ready.done() or not servers.ready.result():
        detail = servers_result.result() if servers_result.done() else {"error": f"no answer in {SERVERS_START_TIMEOUT:g} s"}
        servers_result.cancel()
        raise PrerequisiteError(
            f"the lab's servers did not start: {detail.get('error', detail)}; "
            "check the TURN engine (coturn installed?) and that no other lab uses the addresses"
        )
    out.timings["servers_s"] = time.monotonic() - t0
    total = len(cases)
    done = {"n": 0}
    tally = Tally()

    async def run_probe(nat_name: str) -> ProbeResult:
        router = plan.router(f"{nat_name}-1")
        v6 = not router.nat.behaviour.ipv4 and srv.stun_addresses6 is not None
        server = f"stun:[{srv.stun_addresses6[0]}]:{srv.stun_port}" if v6 and srv.stun_addresses6 else \
            f"stun:{srv.stun_addresses[0]}:{srv.stun_port}"
        if router.nat.behaviour.egress_tcp_ports is not None:
            server = f"stun:{srv.stun_addresses[0]}:{WEB_PORT}"  # the only port TCP may reach
        want = expected_probe(router.nat.behaviour)
        for _ in range(PROBE_TRIES):
            res = await agents[router.peers[0].id].call(
                30, op="probe", server=server, timeout=PROBE_TIMEOUT, families=[6 if v6 else 4],
            )
            if not probe_inconclusive(want, res):
                break
        observed = {k: res.get(k) for k in ("nat_type", "mapping", "filtering", "public", "port_allocation",
                                             "port_preservation", "nat_layers", "hairpinning")}
        ok = "error" not in res and all(observed.get(k) == v for k, v in want.items())
        probe = ProbeResult(router.nat.name, router.nat.type, want, observed, ok, res.get("error"))
        notify("probe", {"probe": probe})
        return probe

    async def measure_lifetime(nat_name: str) -> dict[str, Any]:
        """The NAT's idle UDP mapping lifetime, bracketed around what the topology claims."""
        router = plan.router(f"{nat_name}-1")
        t = router.nat.behaviour.udp_timeout
        schedule = [max(1.0, t - LIFETIME_BRACKET_S), t + LIFETIME_BRACKET_S]
        res = await agents[router.peers[0].id].call(
            t + 3 * LIFETIME_BRACKET_S, op="lifetime", server=[srv.stun_addresses[0], srv.stun_port], schedule=schedule,
        )
        return res

    async def run_case(
        case: Case, exp: Expectation, sems: Sequence[Any], gate: asyncio.Semaphore | None = None, attempt: int = 1,
    ) -> CaseResult:
        (ra, pa), (rb, pb) = plan.peers_of(case)
        a, b = (stacks.get(n) for n in case.stacks)
        idle = idle_s(case, plan)
        pem = ca.ca_pem if ca else None
        # Each side waits for the other's start-up on top of the case's deadline (a browser
        # started before the cases only opens a window).
        wait_a = getattr(a, "ready_s", a.start_s) if (pa.id, a.name) in prepared else a.start_s
        wait_b = getattr(b, "ready_s", b.start_s) if (pb.id, b.name) in prepared else b.start_s
        cfg_a = side_config(topo, case, ra, pa, topo.case_deadline_s + wait_b, pem, idle,
                            tls_name=tls_by_name(stacks.capabilities_of(a.name)))
        cfg_b = side_config(topo, case, rb, pb, topo.case_deadline_s + wait_a, pem, idle,
                            tls_name=tls_by_name(stacks.capabilities_of(b.name)))
        if attempt > 1:  # a room of its own: nothing of the first attempt can reach it
            cfg_a.room = cfg_b.room = f"{case.id}~{attempt}"
        async with contextlib.AsyncExitStack() as held:
            for sem in sems:
                await held.enter_async_context(sem)
            if gate is not None:
                await gate.acquire()
            pairing = asyncio.ensure_future(_pair(
                (agents[pa.id], a.name, "caller", cfg_a, a.max_duration_s(cfg_a) + RESULT_MARGIN),
                (agents[pb.id], b.name, "callee", cfg_b, b.max_duration_s(cfg_b) + RESULT_MARGIN),
            ))
            if gate is not None:
                # An expected failure of a stack that starts a process or a window costs CPU
                # while it starts: such cases start a few per second, not all at once.
                await asyncio.wait([pairing], timeout=START_GATE_S)
                gate.release()
            ra_res, rb_res = await pairing
        result = case_result(topo, plan, case, ra_res, rb_res, exp)
        result.attempts = attempt
        if attempt == 1:
            done["n"] += 1
            tally.add(result)
            notify("case", {"case": result, "done": done["n"], "total": total, "tally": tally})
        return result

    light = [c for c in cases if not any(stacks.get(s).heavy for s in c.stacks)]
    heavy = [c for c in cases if c not in light]
    prepared: set[tuple[str, str]] = set()  # (peer id, stack) started before its cases
    ready: dict[tuple[str, str], asyncio.Future[None]] = {}  # done once that start is over
    tls: set[tuple[str, str]] = set()  # (peer id, stack) with a relay-tls case
    for c in heavy:
        for (_, peer), name in zip(plan.peers_of(c), c.stacks, strict=True):
            if c.path == "relay-tls":
                tls.add((peer.id, name))

    def start_config(peer_id: str, name: str) -> PeerConfig:
        """What a heavy stack is started with in one node (before its cases, or again)."""
        # A stack that reaches TURN/TLS by name gets the lab's names and CA only where it
        # has a relay-tls case: Firefox starts slower with them (a private mount
        # namespace, an enterprise policy), 10-20 s more over a default run's nodes.
        by_name = tls_by_name(stacks.capabilities_of(name))
        named = not by_name or (peer_id, name) in tls
        return PeerConfig("prepare", "host", (srv.signaling_address, srv.signaling_port), [], topo.case_deadline_s,
                          ca_pem=ca.ca_pem if ca and named else None, hosts=srv.names() if named else {})

    def start_browsers(cases: Sequence[Case], at_once: int) -> asyncio.Future[Any] | None:
        """Start every heavy stack in every node its cases need, ``at_once`` at a time; each
        node's start settles its entry in ``ready`` (a case waits for its own nodes only)."""
        needed = []
        for c in cases:
            for (_, peer), name in zip(plan.peers_of(c), c.stacks, strict=True):
                if stacks.get(name).heavy and (peer.id, name) not in needed:
                    needed.append((peer.id, name))
        if not needed:
            return None
        notify("stage", {"text": f"starting {len(needed)} browsers"})
        loop = asyncio.get_running_loop()
        for key in needed:
            ready[key] = loop.create_future()
        gate = asyncio.Semaphore(at_once)
        t = time.monotonic()

        async def one(peer_id: str, name: str) -> None:
            peer = stacks.get(name)
            try:
                async with gate:
                    res = await agents[peer_id].call(
                        peer.start_s + 30, op="prepare", stack=name, config=start_config(peer_id, name).to_json(),
                    )
                if "error" not in res:
                    prepared.add((peer_id, name))
            finally:
                if not ready[(peer_id, name)].done():  # cancelled already when the run is stopped
                    ready[(peer_id, name)].set_result(None)

        async def all_of() -> None:
            await asyncio.gather(*(one(p, n) for p, n in needed))
            out.timings["prepare_s"] = time.monotonic() - t

        return asyncio.ensure_future(all_of())

    async def started(c: Case) -> None:
        """Wait until the heavy stacks of ``c`` are started in its nodes."""
        keys = [(peer.id, name) for (_, peer), name in zip(plan.peers_of(c), c.stacks, strict=True)]
        waits = [ready[k] for k in keys if k in ready]
        if waits:
            await asyncio.gather(*waits)

    exps = {c: expectation_of(topo, plan, c) for c in cases}
    sem = asyncio.Semaphore(cpu_limit(parallel, topo))
    # A heavy stack (a browser) has a limit of its own on connecting cases at once, shared by
    # its browsers in every namespace; a case of two heavy stacks takes both, in name order.
    heavy_sems = {
        name: asyncio.Semaphore(max(1, stacks.get(name).parallel))
        for name in sorted({s for c in heavy for s in c.stacks if stacks.get(s).heavy})
    }

    idle = asyncio.Semaphore(IDLE_LIMIT)
    heavy_idle = asyncio.Semaphore(HEAVY_IDLE_LIMIT)
    windows = Windows(WINDOWS_PER_CPU * (os.cpu_count() or 1))

    def limits(c: Case) -> list[Any]:
        if c.path == "longevity":
            return []  # they idle longest, and start first: none waits for another's slot
        n = sum(1 for s in c.stacks if s in heavy_sems)
        if not exps[c].connected:
            # expected failures idle until their deadline: many at once (fewer with browsers)
            return [heavy_idle, idle] if n else [idle]
        # Every connecting case takes the CPU-aware limit (the heavy ones after their stack's
        # own limit and their windows, so that a waiting browser case does not hold a CPU slot).
        return [heavy_sems[s] for s in sorted(set(c.stacks)) if s in heavy_sems] + ([windows.take(n)] if n else []) + [sem]

    # Longevity cases first (they idle longest), then the expected failures (they idle until
    # the deadline), then the CPU-bound connections; the heavy stacks' cases run beside the
    # others (their own limits bound them).
    def first(c: Case) -> tuple[bool, bool]:
        return c.path != "longevity", exps[c].connected

    order = sorted(light, key=first) + sorted(heavy, key=first)
    names = [n.name for n in topo.nats]
    probe_names = sorted({n for c in cases for n in c.nats}, key=names.index)
    notify("stage", {"text": f"probing {len(probe_names)} NATs and running {total} cases"})
    # The probes first, alone (their negative results are timed silences, which a loaded CPU
    # would turn into wrong verdicts), a few at a time. Then the browsers start in every node
    # that needs them, one per CPU at a time, while the other stacks' cases run; a browser
    # case starts once its own nodes' browsers are up (a browser's start is seconds of CPU).
    probe_sem = asyncio.Semaphore(PROBES_AT_ONCE)

    async def bounded_probe(n: str) -> ProbeResult:
        async with probe_sem:
            return await run_probe(n)

    out.probes = list(await asyncio.gather(*(bounded_probe(n) for n in probe_names)))
    t1 = time.monotonic()
    # The lab measures the mapping lifetime it claims, beside the cases (fresh sockets of
    # their own: no case's mapping is touched), where it is short enough to wait for.
    timed = [p for p in out.probes if _lifetime_measurable(plan.router(f"{p.nat}-1").nat.behaviour)]
    lifetime_tasks = {p.nat: asyncio.ensure_future(measure_lifetime(p.nat)) for p in timed}
    browsers = start_browsers(heavy, max(2, os.cpu_count() or 1))
    gate = asyncio.Semaphore(2 * (os.cpu_count() or 1))

    def gate_of(c: Case) -> asyncio.Semaphore | None:
        costly = any(stacks.get(s).start_s > 0 for s in c.stacks)
        return gate if costly and not exps[c].connected else None

    async def after_start(c: Case) -> CaseResult:
        await started(c)
        return await run_case(c, exps[c], limits(c), gate_of(c))

    case_tasks = {c: asyncio.ensure_future(after_start(c)) for c in order}
    results = {c: await case_tasks[c] for c in light}
    out.timings["cases_s"] = time.monotonic() - t1
    if heavy:
        for c in heavy:
            results[c] = await case_tasks[c]
        if browsers is not None:
            await browsers
        out.timings["browser_s"] = time.monotonic() - t1
        out.timings["cases_s"] = max(out.timings["cases_s"], out.timings["browser_s"])

    async def restart_browsers(again: Sequence[Case]) -> dict[tuple[str, str], str]:
        """Start again, before the second attempts, every browser that a failed attempt showed
        at fault (:func:`natkit.lab.retry.restarts`): (node, stack) -> what the reports say."""
        sides = []
        for c in again:
            (_, pa), (_, pb) = plan.peers_of(c)
            sides.append([(pa.id, c.stacks[0], results[c].caller), (pb.id, c.stacks[1], results[c].callee)])
        todo = restarts(sides, lambda name: stacks.get(name).heavy)
        if not todo:
            return {}
        notify("stage", {"text": f"starting {len(todo)} browsers again before the second attempts"})
        t = time.monotonic()
        gate = asyncio.Semaphore(max(2, os.cpu_count() or 1))

        async def one(node: str, name: str, why: str) -> str:
            async with gate:
                res = await agents[node].call(stacks.get(name).start_s + 30, op="restart", stack=name,
                                              config=start_config(node, name).to_json())
            if "error" in res:
                prepared.discard((node, name))
                return f"{name} in {node}: {why}; starting it again failed: {res['error']}"
            prepared.add((node, name))
            before = f"; {res['before']}" if res.get("before") else ""
            return f"{name} in {node} started again ({res.get('seconds', 0):g} s) before this attempt: {why}{before}"

        notes = await asyncio.gather(*(one(node, name, why) for (node, name), why in todo.items()))
        out.timings["restart_s"] = out.timings.get("restart_s", 0.0) + time.monotonic() - t
        return dict(zip(todo, notes, strict=True))

    def browsers_of(c: Case) -> tuple[tuple[str, str], tuple[str, str]]:
        (_, pa), (_, pb) = plan.peers_of(c)
        return (pa.id, c.stacks[0]), (pb.id, c.stacks[1])

    for attempt in range(2, 2 + max(0, retries)):
        again = [c for c in cases if exps[c].connected and results[c].observed != "connected"]
        # Expected failures of the first round whose browser was at fault prove nothing: they
        # run again once that browser is started again (natkit.lab.retry).
        doubtful = [c for c in cases if not exps[c].connected and results[c].observed != "connected"] \
            if attempt == 2 else []
        fresh = await restart_browsers(again + [c for c in doubtful if shows_a_browser_fault(c.path)])
        redo = [c for c in doubtful if any(k in fresh for k in browsers_of(c))]
        if not again and not redo:
            break
        what = [f"{len(again)} cases expected to connect failed"] if again else []
        what += [f"{len(redo)} expected failures met a browser at fault"] if redo else []
        again += redo
        notify("stage", {"text": f"{' and '.join(what)}: running them again, "
                                 f"{RETRY_PER_CPU * (os.cpu_count() or 1)} at a time"})
        t2 = time.monotonic()
        retry_sem = asyncio.Semaphore(max(1, RETRY_PER_CPU * (os.cpu_count() or 1)))

        async def retry(c: Case, n: int, retry_sem: asyncio.Semaphore = retry_sem) -> CaseResult:
            async with retry_sem:
                return await run_case(c, exps[c], limits(c), None, attempt=n)

        for c, redone in zip(again, await asyncio.gather(*(retry(c, attempt) for c in again)), strict=True):
            redone.first_error = results[c].first_error or results[c].error or "not connected"
            redone.restarted = [fresh[k] for k in browsers_of(c) if k in fresh]
            results[c] = redone
            notify("retry", {"case": redone})
        out.timings["retry_s"] = out.timings.get("retry_s", 0.0) + time.monotonic() - t2
    out.cases = [results[c] for c in cases]
    for probe in timed:
        res = await lifetime_tasks[probe.nat]
        measured = {"min": res.get("min"), "max": res.get("max")} if "error" not in res else None
        if measured is None:
            probe.error = f"mapping lifetime: {res['error']}"
        claimed = plan.router(f"{probe.nat}-1").nat.behaviour.udp_timeout
        probe.expected["udp_lifetime_s"] = claimed
        probe.observed["udp_lifetime_s"] = measured
        probe.passed = probe.passed and lifetime_agrees(claimed, measured)
    # Stop the servers while the nodes stand, and wait for it (bounded).
    servers.send(op="stop-servers")
    try:
        stopped = await asyncio.wait_for(asyncio.shield(servers_result), SERVERS_STOP_TIMEOUT)
    except TimeoutError:
        stopped = {"error": f"no answer within {SERVERS_STOP_TIMEOUT:g} s"}
    if not stopped.get("stopped"):
        out.errors.append(f"the lab's servers did not stop cleanly: {stopped.get('error', stopped)}")


def probe_inconclusive(want: Mapping[str, Any], got: Mapping[str, Any]) -> bool:
    """An inconclusive probe: a test that got no answer in time on a loaded box (mapping or
    filtering "unknown", hairpinning not decided) where the NAT's kind names a verdict. Such a
    probe is asked once more; a verdict, right or wrong, stands."""
    if any(k in want and got.get(k) == "unknown" and want[k] != "unknown" for k in ("mapping", "filtering")):
        return True
    return isinstance(want.get("hairpinning"), bool) and got.get("hairpinning") is None


def _lifetime_measurable(b: NatBehaviour) -> bool:
    return b.ipv4 and not b.block_udp and b.udp_timeout <= LIFETIME_MEASURE_MAX_S


def lifetime_agrees(claimed: float, measured: dict[str, float | None] | None) -> bool:
    """Whether a measured lifetime bracket (the mapping answered at ``min``, not at ``max``)
    holds the ``claimed`` one."""
    if not measured or measured.get("min") is None or measured.get("max") is None:
        return False
    lo, hi = measured["min"], measured["max"]
    assert lo is not None and hi is not None
    return lo < claimed <= hi


Side = tuple[AgentClient, str, str, PeerConfig, float]  # agent, stack, role, config, time limit


async def _pair(a: Side, b: Side) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides of one case at once; once one has failed, the other gets
    :data:`FAILED_PEER_GRACE_S` to report before it is cancelled. A ``--peer`` command gets
    until its own limit: its report (exit status, stderr, notes) is what its author needs,
    and a cancelled command says nothing."""
    tasks = []
    deadlines: list[float] = []  # how long each side may still report once the other failed
    start = time.monotonic()
    for agent, stack, role, cfg, limit in (a, b):
        extra = {}
        command_peer = not stacks.STACKS.get(stack, "").startswith("natkit.")
        deadlines.append(start + limit if command_peer else 0.0)
        if command_peer:
            # A --peer command: an agent in another process tree (a container) learns it here.
            spec = getattr(stacks.get(stack), "spec", None)
            if spec:
                extra["peer"] = spec
        cid, fut = agent.submit(op="case", stack=stack, role=role, config=cfg.to_json(), **extra)
        tasks.append((agent, cid, asyncio.ensure_future(agent.answer(cid, fut, limit))))
    done, _ = await asyncio.wait([t for _, _, t in tasks], return_when=asyncio.FIRST_COMPLETED)
    first = done.pop()
    if first.result().get("outcome") != "connected":
        for (agent, cid, task), until in zip(tasks, deadlines):
            if task is not first and not task.done():
                grace = max(FAILED_PEER_GRACE_S, until - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), grace)
                if not task.done():
                    agent.cancel(cid)
    return await tasks[0][2], await tasks[1][2]
