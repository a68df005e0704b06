"""RFC 5780 behaviour discovery for one address family, run concurrently on separate sockets.

Schedule (every "wait W" is ``max(floor, rtt_factor · measured RTT)``, not a fixed 3–7 s):

phase 1, at t0, all at once:
  * test I: Binding from the primary socket to every server (mapping agreement, OTHER-ADDRESS);
  * filtering tests toward the first server, each on a *fresh* socket so no earlier traffic can
    have opened its filter: CHANGE-REQUEST change-IP+port (filtering-2) and change-port
    (filtering-3). They go out before OTHER-ADDRESS is known, which saves a round trip; the
    answers are checked against it afterwards;
  * a TCP (or TLS for stuns:) Binding to every server, the control that tells "UDP blocked"
    from "server unreachable" and whose RTT bounds how long a silent UDP is waited for.
  When test I answers, the hairpinning test starts on the primary socket (a Binding sent to its
  own mapped address) and the filtering tests are given until W after that answer.
phase 2, once filtering is decided (so no packet to the server's alternate endpoints can have
  opened a filter early, even on a NAT that keeps filter state per host):
  mapping tests from the primary socket to destination tuples not used before: A2:P1
  (mapping-2), A2:P2 (mapping-3), A1:P2 (mapping-4).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from natkit.client.stun import (
    RtoEstimator,
    StreamStunClient,
    StunTimeout,
    UdpStunClient,
    local_address_toward,
)
from natkit.nat.classify import (
    Exchange,
    Observations,
    Reply,
    ServerAnswer,
    Verdict,
    classify,
    usable_other,
)
from natkit.nat.layers import nat_layers, port_pattern
from natkit.nat.servers import ResolvedServer
from natkit.stun import CHANGE_IP, CHANGE_PORT, Attr, Class, Message, Method

Address = tuple[str, int]
LAYER_TRIES = 2  # rounds of the NAT-layer trace (a lost packet or ICMP error is asked again)


@dataclass
class ProbeOptions:
    timeout: float = 3.0  # longest wait for a first answer from any server
    floor: float = 0.4  # shortest wait before silence counts as a negative result
    rtt_factor: float = 10.0  # negative results wait rtt_factor · RTT when that is longer
    # RTO of test I, before any RTT is known: short, because a probe is a handful of
    # transactions and the lab's silence decisions need a few transmissions in well under 1 s.
    initial_rto: float = 0.1
    min_rto: float = 0.05
    behaviour: bool = True  # run the RFC 5780 tests (False: only the public mapping)
    hairpin: bool = True
    layers: bool = True  # count the NATs on the way (TTL-limited Bindings, natkit.nat.layers)
    stream_control: bool = True  # TCP/TLS Binding alongside UDP
    lifetime: bool = False
    lifetime_max: float = 60.0
    local: Address | None = None  # bind the primary socket here
    ssl_context: Any = None  # for stuns: servers (default: system trust store)
    # Loop time by which every test ends, whatever it found (the command's total budget); the
    # lifetime search, asked for explicitly, runs after it.
    deadline: float | None = None


@dataclass
class FamilyReport:
    family: int
    verdict: Verdict
    observations: Observations
    tests: list[Exchange]
    duration_s: float
    lifetime_s: dict[str, float | None] | None = None
    errors: list[str] = field(default_factory=list)
    ports: tuple[bool | None, str | None] = (None, None)  # (preserved, allocation): natkit.nat.layers
    nat_layers: int | None = None


def _reply(resp: Any) -> Reply:
    msg: Message = resp.message
    code = msg.error_code
    return Reply(
        source=resp.source,
        mapped=msg.get(Attr.XOR_MAPPED_ADDRESS),
        plain_mapped=msg.get(Attr.MAPPED_ADDRESS),
        other=msg.get(Attr.OTHER_ADDRESS),
        origin=msg.get(Attr.RESPONSE_ORIGIN),
        error=code.code
        if msg.cls == Class.ERROR and code is not None
        else (0 if msg.cls == Class.ERROR else None),
        rtt=resp.rtt,
    )


class _Test:
    """One UDP exchange in flight; becomes an :class:`Exchange` when done or cut off."""

    def __init__(
        self,
        name: str,
        client: UdpStunClient,
        dest: Address,
        expect: Address | None,
        change: int,
        rto: float,
        deadline: float,
        registry: list[asyncio.Future[Any]] | None = None,
    ) -> None:
        self.name, self.client, self.dest, self.change = name, client, dest, change
        self.expect = expect
        msg = Message(Method.BINDING, Class.REQUEST)
        if change:
            msg.add(Attr.CHANGE_REQUEST, change)
        self.sent = 0
        self.task: asyncio.Task[Any] = asyncio.ensure_future(
            client.transact(msg, dest, rto=rto, deadline=deadline, on_transmit=self._count)
        )
        if registry is not None:
            registry.append(self.task)

    def _count(self) -> None:
        self.sent += 1

    def exchange(self, expect: Address | None = None) -> Exchange:
        reply, elapsed = None, None
        if self.answered():
            resp = self.task.result()
            reply, elapsed = _reply(resp), resp.elapsed
        target = expect or self.expect or self.dest
        return Exchange(
            self.name,
            self.dest,
            target,
            self.change,
            reply,
            self.sent,
            self.client.local_address,
            elapsed,
        )

    def answered(self) -> bool:
        return self.task.done() and not self.task.cancelled() and self.task.exception() is None

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()


async def _wait(tasks: list[asyncio.Future[Any]], until: float) -> None:
    """Wait for all of ``tasks`` or until the loop time ``until``."""
    pending = [t for t in tasks if not t.done()]
    delay = until - asyncio.get_running_loop().time()
    if pending and delay > 0:
        await asyncio.wait(pending, timeout=delay)


async def _stream_binding(
    server: ResolvedServer, opts: ProbeOptions, family: int
) -> tuple[Reply | None, str]:
    transport = "tls" if server.scheme == "stuns" else "tcp"
    local = None
    if opts.local is not None:
        local = (opts.local[0], 0)
    try:
        client = await StreamStunClient.open(
            server.address,
            tls=transport == "tls",
            server_hostname=server.hostname,
            ssl_context=opts.ssl_context,
            local=local,
            timeout=opts.timeout,
        )
    except (OSError, TimeoutError, ValueError):
        return None, transport
    try:
        resp = await client.transact(Message(Method.BINDING, Class.REQUEST), timeout=opts.timeout)
        return _reply(resp), transport
    except (StunTimeout, OSError):
        return None, transport
    finally:
        await client.close()


async def discover(
    servers: list[ResolvedServer], family: int, opts: ProbeOptions | None = None
) -> FamilyReport:
    """Probe one address family against ``servers`` (all of that family)."""
    opts = opts or ProbeOptions()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    hard = opts.deadline if opts.deadline is not None else float("inf")
    udp_servers = [s for s in servers if s.scheme == "stun"]
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    sockets: list[UdpStunClient] = []
    tasks: list[asyncio.Future[Any]] = []
    errors: list[str] = []

    async def new_socket(port: int = 0) -> UdpStunClient:
        local = (opts.local[0], port) if opts.local else None
        c = await UdpStunClient.open(
            local, family=af, rto=RtoEstimator(opts.initial_rto, opts.min_rto)
        )
        sockets.append(c)
        return c

    def neg_wait(rtt: float | None) -> float:
        return max(opts.floor, opts.rtt_factor * (rtt or 0.0))

    try:
        primary = await new_socket(opts.local[1] if opts.local else 0) if udp_servers else None
        local: Address | None = None
        if primary is not None:
            ip = (
                opts.local[0]
                if opts.local and opts.local[0] not in ("0.0.0.0", "::")
                else (local_address_toward(udp_servers[0].address))
            )
            local = (ip, primary.local_address[1]) if ip else None
            if ip is None:
                # No route for this family (an IPv4-only host asked about IPv6): don't wait.
                errors.append(f"no IPv{family} route toward {udp_servers[0].address[0]}")
                silent = tuple(ServerAnswer(s.label, s.address, None) for s in servers)
                obs = Observations(family, None, silent)
                return FamilyReport(family, classify(obs), obs, [], loop.time() - t0, None, errors)

        # -- phase 1 -----------------------------------------------------------------------
        t_deadline = min(t0 + opts.timeout, hard)
        test1 = (
            [
                _Test(
                    "binding", primary, s.address, s.address, 0, opts.initial_rto, t_deadline, tasks
                )
                for s in udp_servers
            ]
            if primary
            else []
        )
        streams: list[asyncio.Task[tuple[Reply | None, str]]] = []
        if opts.stream_control or not udp_servers:
            streams = [asyncio.ensure_future(_stream_binding(s, opts, family)) for s in servers]
            tasks += streams
        filters: list[_Test] = []
        filter_server: int | None = None

        async def start_filters(idx: int, deadline: float) -> None:
            nonlocal filter_server, filters
            for f in filters:
                f.cancel()
            dest = udp_servers[idx].address
            filter_server = idx
            filters = [
                _Test(
                    "filtering-2",
                    await new_socket(),
                    dest,
                    None,
                    CHANGE_IP | CHANGE_PORT,
                    opts.min_rto,
                    deadline,
                    tasks,
                ),
                _Test(
                    "filtering-3",
                    await new_socket(),
                    dest,
                    None,
                    CHANGE_PORT,
                    opts.min_rto,
                    deadline,
                    tasks,
                ),
            ]

        if opts.behaviour and udp_servers:
            await start_filters(0, t_deadline)

        # Wait for the first UDP answer. A TCP/TLS answer bounds how long UDP silence is waited
        # for: 1.5 negative-result waits from t0, room for three transmissions in the lab.
        udp_deadline = t_deadline
        first: _Test | None = None
        while True:
            now = loop.time()
            first = next((t for t in test1 if t.answered()), None)
            udp_over = all(t.task.done() for t in test1)
            streams_over = all(st.done() for st in streams)
            if first is not None or now >= udp_deadline or (udp_over and streams_over):
                break
            for st in streams:
                reply = st.result()[0] if st.done() and not st.cancelled() else None
                if reply is not None:
                    if not test1:
                        udp_deadline = now  # nothing over UDP to wait for
                    udp_deadline = min(udp_deadline, t0 + 1.5 * neg_wait(reply.rtt))
            if now >= udp_deadline:
                break
            watch = [t.task for t in test1 if not t.task.done()] + [
                st for st in streams if not st.done()
            ]
            await asyncio.wait(
                watch, timeout=max(0.0, udp_deadline - now), return_when=asyncio.FIRST_COMPLETED
            )

        mapping_tests: list[_Test] = []
        layers_task: asyncio.Future[int | None] | None = None
        hairpin: bool | None = None
        chosen: int | None = None
        first_rtt: float | None = None
        if first is not None:
            t_answer = loop.time()
            first_rtt = first.task.result().rtt
            w = neg_wait(first_rtt)
            # The first server in list order decides; wait for its test I a little.
            await _wait([test1[0].task], min(t_answer + w, hard))
            answers = [
                ServerAnswer(s.label, s.address, t.exchange()) for s, t in zip(udp_servers, test1)
            ]
            chosen = next((i for i, a in enumerate(answers) if usable_other(a) is not None), None)
            sel_rtt = test1[chosen].task.result().rtt if chosen is not None else first_rtt
            w = neg_wait(sel_rtt)
            rto = max(opts.min_rto, 3 * sel_rtt)

            hairpin_task: asyncio.Future[Any] | None = None
            m1 = answers[chosen if chosen is not None else test1.index(first)].udp
            mapped = m1.reply.mapped if m1 and m1.reply else None
            # The NAT-layer trace runs beside the RFC 5780 tests, on sockets of its own (its
            # TTL-limited packets never touch the primary socket's mapping or the filtering
            # sockets), within the time the tests take anyway: two rounds of half a wait. Its
            # task starts before the hairpin test's, so its packets leave first: a router
            # without hairpinning answers those with ICMP errors too, and routers rate-limit
            # ICMP errors per destination.
            trace_wait = max(0.15, w / 2)
            if opts.behaviour and opts.layers and mapped is not None and local is not None \
                    and loop.time() + LAYER_TRIES * trace_wait < hard:
                traced = udp_servers[chosen if chosen is not None else test1.index(first)].address
                layers_task = asyncio.ensure_future(
                    nat_layers(traced, mapped, local, wait=trace_wait, tries=LAYER_TRIES)
                )
                tasks.append(layers_task)
                await asyncio.sleep(0)  # let it send its first round now
            if opts.behaviour and opts.hairpin and mapped is not None and primary is not None:
                hairpin_task = asyncio.ensure_future(
                    _hairpin(primary, mapped, rto, loop.time() + w)
                )
                tasks.append(hairpin_task)

            if chosen is not None and opts.behaviour:
                if filter_server != chosen:
                    await start_filters(chosen, loop.time() + w)
                    f_deadline = loop.time() + w
                else:
                    f_deadline = t_answer + w
                await _wait([f.task for f in filters], min(f_deadline, hard))
                for f in filters:
                    f.cancel()

                # -- phase 2 ---------------------------------------------------------------
                a1, p1 = udp_servers[chosen].address
                other = usable_other(answers[chosen])
                assert other is not None and primary is not None
                a2, p2 = other
                deadline = loop.time() + w
                mapping_tests = [
                    _Test("mapping-2", primary, (a2, p1), (a2, p1), 0, rto, deadline, tasks),
                    _Test("mapping-3", primary, (a2, p2), (a2, p2), 0, rto, deadline, tasks),
                    _Test("mapping-4", primary, (a1, p2), (a1, p2), 0, rto, deadline, tasks),
                ]
                await _wait([t.task for t in mapping_tests], min(deadline, hard))
            else:
                for f in filters:
                    f.cancel()
            # Other servers' test I (mapping agreement) get the same bounded wait.
            await _wait([t.task for t in test1], min(t_answer + w, hard))
            if hairpin_task is not None:
                await _wait([hairpin_task], min(loop.time() + w, hard))
                if hairpin_task.done() and not hairpin_task.cancelled():
                    hairpin = hairpin_task.result()
        else:
            for f in filters:
                f.cancel()

        lifetime = None
        if opts.lifetime and first is not None and primary is not None:
            server = udp_servers[chosen if chosen is not None else test1.index(first)]
            lifetime = await binding_lifetime(server.address, af, opts, first_rtt or 0.0)
        for t in test1 + filters + mapping_tests:
            t.cancel()
        for st in streams:
            if not st.done():
                st.cancel()
        await asyncio.gather(
            *[t.task for t in test1 + filters + mapping_tests], *streams, return_exceptions=True
        )

        stream_results = (
            {
                id(s): (r.result() if r.done() and not r.cancelled() else (None, None))
                for s, r in zip(servers, streams)
            }
            if streams
            else {}
        )
        answers_final: list[ServerAnswer] = []
        by_server = {id(s): t for s, t in zip(udp_servers, test1)}
        for s in servers:
            t1 = by_server.get(id(s))
            sr, transport = stream_results.get(id(s), (None, None))
            answers_final.append(
                ServerAnswer(s.label, s.address, t1.exchange() if t1 else None, sr, transport)
            )
        sel_index = None
        if chosen is not None:
            sel_index = servers.index(udp_servers[chosen])
        filt = []
        if filters and filter_server is not None:
            other = usable_other(answers_final[servers.index(udp_servers[filter_server])])
            if other is not None:
                a1, p1 = udp_servers[filter_server].address
                filt = [filters[0].exchange(other), filters[1].exchange((a1, other[1]))]
            else:
                filt = [f.exchange() for f in filters]
        obs = Observations(
            family=family,
            local=local,
            servers=tuple(answers_final),
            rfc5780_server=sel_index,
            mapping_tests=tuple(t.exchange() for t in mapping_tests),
            filtering_tests=tuple(filt) if chosen is not None and chosen == filter_server else (),
            hairpin=hairpin,
            behaviour=opts.behaviour,
        )
        verdict = classify(obs)
        tests = (
            [a.udp for a in answers_final if a.udp is not None]
            + list(filt)
            + list(obs.mapping_tests)
        )
        layers = None
        if layers_task is not None:
            await _wait([layers_task], hard)
            if layers_task.done() and not layers_task.cancelled() and layers_task.exception() is None:
                layers = layers_task.result()
        return FamilyReport(family, verdict, obs, tests, loop.time() - t0, lifetime, errors, port_pattern(tests), layers)
    finally:
        for fut in tasks:
            if not fut.done():
                fut.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        for c in sockets:
            c.close()


async def _hairpin(client: UdpStunClient, mapped: Address, rto: float, deadline: float) -> bool:
    """Send a Binding to our own mapped address; True if it comes back to one of our sockets
    (RFC 5780 §4.5). The request itself is what we wait for, not a response."""
    loop = asyncio.get_running_loop()
    msg = Message(Method.BINDING, Class.REQUEST)
    fut = client.expect_request(msg.transaction_id)
    data = msg.encode()
    wait = rto
    try:
        while loop.time() < deadline:
            with contextlib.suppress(OSError):
                client.send_raw(data, mapped)
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, min(wait, deadline - loop.time())))
            if done:
                return not fut.cancelled() and fut.exception() is None
            wait *= 2
        return False
    finally:
        if not fut.done():
            fut.cancel()


async def binding_lifetime(
    server: Address, af: int, opts: ProbeOptions, rtt: float, schedule: Sequence[float] | None = None,
) -> dict[str, float | None]:
    """Bounded search for how long an idle UDP binding lives (RFC 5780 §4.6).

    One fresh socket per checkpoint (an inbound packet may refresh a binding, so each is checked
    only once), all created at the start; at each checkpoint another socket sends a Binding with
    RESPONSE-PORT set to the probe socket's mapped port. The binding lived at least until the
    last checkpoint answered and at most until the first that was not. ``schedule``: the
    checkpoints in seconds (default: 1 s doubling up to ``opts.lifetime_max``; a caller that
    knows the lifetime to check, as the lab does, brackets it)."""
    loop = asyncio.get_running_loop()
    schedule = sorted(schedule) if schedule is not None else [
        t for t in (1, 2, 4, 8, 15, 30, 45, 60, 90, 120, 180, 300) if t <= opts.lifetime_max
    ]
    w = max(opts.floor, opts.rtt_factor * rtt)
    rto = max(opts.min_rto, 3 * rtt)
    local = (opts.local[0], 0) if opts.local else None
    clients: list[UdpStunClient] = []
    try:
        probes: list[tuple[UdpStunClient, Address]] = []
        for _ in schedule:
            c = await UdpStunClient.open(local, family=af)
            clients.append(c)
        start = loop.time()
        results = await asyncio.gather(
            *[
                c.transact(
                    Message(Method.BINDING, Class.REQUEST),
                    server,
                    rto=rto,
                    deadline=loop.time() + w,
                )
                for c in clients
            ],
            return_exceptions=True,
        )
        for c, r in zip(clients, results):
            if isinstance(r, BaseException) or r.message.get(Attr.XOR_MAPPED_ADDRESS) is None:
                continue
            probes.append((c, r.message.get(Attr.XOR_MAPPED_ADDRESS)))
        if not probes:
            return {"min": None, "max": None}
        asker = await UdpStunClient.open(local, family=af)
        clients.append(asker)
        alive_until: float | None = 0.0
        dead_at: float | None = None
        for at, (c, mapped) in zip(schedule, probes):
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            msg = Message(Method.BINDING, Class.REQUEST).add(Attr.RESPONSE_PORT, mapped[1])
            # The response is addressed to the probe socket's mapping: wait for it there; an
            # answer to the asker itself means the server ignores or rejects RESPONSE-PORT.
            at_probe = c.expect_response(msg.transaction_id)
            at_asker = asker.expect_response(msg.transaction_id)
            data, wait, until = msg.encode(), rto, loop.time() + w
            while loop.time() < until and not (at_probe.done() or at_asker.done()):
                with contextlib.suppress(OSError):
                    asker.send_raw(data, server)
                await asyncio.wait(
                    {at_probe, at_asker},
                    timeout=min(wait, until - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                wait *= 2
            probe_ok = at_probe.done() and not at_probe.cancelled()
            asker_got = at_asker.done() and not at_asker.cancelled()
            at_probe.cancel()
            at_asker.cancel()
            if asker_got and not probe_ok:
                return {"min": None, "max": None}  # no RESPONSE-PORT support
            if probe_ok:
                alive_until = float(at)
            else:
                dead_at = float(at)
                break
        return {"min": alive_until, "max": dead_at}
    finally:
        for c in clients:
            c.close()


__all__ = ["FamilyReport", "ProbeOptions", "binding_lifetime", "discover"]
