"""``natkit lab run``: build the lab with the netns engine, probe every NAT, run every case.

The run, step by step:

1. **Build** (:func:`build`): namespaces, veths, bridges and nftables NATs with
   :class:`natkit.lab.netns.NetnsLab` after the topology's :class:`~natkit.lab.topology.Plan`:
   the internet bridge ``br0`` in ``<tag>-inet``; the STUN responder (two addresses), the TURN
   relay and the signaling server in ``<tag>-srv``; per router ``<tag>-rK`` (WAN on the bridge,
   LAN bridge ``lan``, the NAT's ruleset, netem per link) and its peers ``<tag>-rKpI``.
2. **Capture**: ``dumpcap`` on the internet bridge for the whole run (packet evidence). A marker
   datagram sent across the bridge must reach the capture file before the first case starts
   and again before dumpcap is stopped (it drops what libpcap has not handed over yet).
3. **Processes**: aiortc is heavy to import and its DTLS is CPU-bound, so the runner imports it
   once and forks one long-lived agent per peer namespace (plus one for the servers); each agent
   enters its namespace and runs many cases at once on its own event loop. Agents talk to the
   runner over a socketpair (JSON lines) and die with it (EOF, and PR_SET_PDEATHSIG).
4. **Probes**: inside every NAT, natkit's probe against the lab's RFC 5780 responder.
5. **Cases**: every cell at once, bounded by a CPU-aware limit for cases expected to connect
   (cases expected to fail sit idle until their deadline and need no CPU, so they all start
   first); each case ends by ``case_deadline_s``.
6. **Stop**: the servers' agent is told to stop and unwinds its servers (coturn stops and removes
   its files) while the namespaces still stand; agents then get EOF and are reaped (bounded
   waits, then SIGKILL).
7. **Evidence** (:mod:`natkit.lab.evidence`) from the capture; then everything is torn down, also
   on error, Ctrl-C and SIGTERM (and after ``kill -9`` by the next run or ``natkit lab clean``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from natkit.errors import UsageError
from natkit.lab.expect import expect, expected_probe
from natkit.lab.topology import PATHS, Case, Plan, Topology

__all__ = ["LabNodes", "LabResult", "build", "run", "select_cases"]

PROBE_TIMEOUT = 1.5  # s per probe transaction: answers take ms in the lab
RESULT_MARGIN = 6.0  # s a peer may take beyond its deadline to close and report
SERVERS_STOP_TIMEOUT = 12.0  # s for the servers to stop (coturn: SIGTERM, after 5 s SIGKILL)


# -- selecting cases -------------------------------------------------------------------------


def select_cases(topo: Topology, only: Sequence[str] = ()) -> list[Case]:
    """The cases of ``topo`` that ``only`` keeps.

    Each item is a comma-separated list of tokens: a path (``host``, ``srflx``, ``relay``), a
    NAT name (keeps cases whose NATs are all named), or a pair ``A:B`` (that pair only). Paths
    combine with the rest by AND; NAT names and pairs by OR.
    """
    tokens = [t.strip() for item in only for t in item.split(",") if t.strip()]
    names = {n.name for n in topo.nats}
    paths: set[str] = set()
    nats: set[str] = set()
    pairs: set[frozenset[str]] = set()
    for t in tokens:
        if t in PATHS:
            paths.add(t)
        elif ":" in t:
            a, _, b = t.partition(":")
            for x in (a, b):
                if x not in names:
                    raise UsageError(f"--only {t}: no NAT named {x!r}; known: {', '.join(sorted(names))}")
            pairs.add(frozenset((a, b)))
        elif t in names:
            nats.add(t)
        else:
            raise UsageError(
                f"--only {t}: not a path ({', '.join(PATHS)}), a NAT name or a pair A:B; "
                f"NATs: {', '.join(n.name for n in topo.nats)}"
            )
    out = []
    for c in topo.cases():
        if paths and c.path not in paths:
            continue
        if (nats or pairs) and not (set(c.nats) <= nats or frozenset(c.nats) in pairs):
            continue
        out.append(c)
    if not out:
        raise UsageError(f"--only {' '.join(only)}: selects no case")
    return out


# -- building ---------------------------------------------------------------------------------


@dataclass
class LabNodes:
    """Namespace names of a built lab (``node`` names are what ``natkit lab shell`` takes)."""

    inet: str
    srv: str
    routers: dict[str, str] = field(default_factory=dict)  # router id -> namespace
    peers: dict[str, str] = field(default_factory=dict)  # peer id -> namespace

    def nodes(self) -> dict[str, str]:
        return {"inet": self.inet, "srv": self.srv, **self.routers, **self.peers}


def build(lab: Any, topo: Topology, plan: Plan) -> LabNodes:
    """Create the namespaces, links, addresses, routes, NATs and netem of ``plan`` in ``lab``
    (a :class:`natkit.lab.netns.NetnsLab` that is open)."""
    srv = topo.servers
    prefix = int(topo.internet_net.split("/")[1])
    inet = lab.add_ns("inet")
    lab.add_bridge(inet, "br0")
    nodes = LabNodes(inet, lab.add_ns("srv"))
    link = topo.internet_link
    lab.add_veth(nodes.srv, "eth0", inet, "p0", master="br0")
    addrs = dict.fromkeys([*srv.stun_addresses, srv.turn_address, srv.signaling_address])
    for ip in addrs:
        lab.add_addr(nodes.srv, "eth0", f"{ip}/{prefix}")
    _impair(lab, nodes.srv, "eth0", link)
    _impair(lab, inet, "p0", link)
    open_routes: list[tuple[str, str, str]] = []  # (routed LAN, via public IP, router ns)
    for k, r in enumerate(plan.routers):
        ns = lab.add_ns(f"r{k}")
        nodes.routers[r.id] = ns
        lab.add_veth(ns, "wan", inet, f"p{k + 1}", master="br0")
        lab.add_addr(ns, "wan", f"{r.public_ip}/{prefix}")
        lab.add_bridge(ns, "lan")
        lan_prefix = r.lan_net.split("/")[1]
        lab.add_addr(ns, "lan", f"{r.lan_ip}/{lan_prefix}")
        lab.apply_nat(
            ns, r.nat.behaviour, inside_if="lan", outside_if="wan", public_ip=r.public_ip, inside_net=r.lan_net
        )
        wan = replace(r.nat.wan, delay_ms=r.nat.wan.delay_ms + link.delay_ms, loss_pct=max(r.nat.wan.loss_pct, link.loss_pct))
        _impair(lab, ns, "wan", wan)
        _impair(lab, inet, f"p{k + 1}", wan)
        if not r.nat.behaviour.nat:
            open_routes.append((r.lan_net, r.public_ip, ns))
        for i, p in enumerate(r.peers):
            pns = lab.add_ns(f"r{k}p{i + 1}")
            nodes.peers[p.id] = pns
            lab.add_veth(pns, "eth0", ns, f"l{i + 1}", master="lan")
            lab.add_addr(pns, "eth0", f"{p.ip}/{lan_prefix}")
            lab.add_route(pns, "default", via=r.lan_ip)
            _impair(lab, pns, "eth0", r.nat.lan)
            _impair(lab, ns, f"l{i + 1}", r.nat.lan)
    # Routers without NAT route a public LAN: everyone on the segment needs the way to it.
    for lan_net, via, router_ns in open_routes:
        for ns in [nodes.srv, *nodes.routers.values()]:
            if ns != router_ns:
                lab.add_route(ns, lan_net, via=via)
    return nodes


def _impair(lab: Any, ns: str, ifname: str, link: Any) -> None:
    if link.shaped:
        lab.impair(ns, ifname, delay_ms=link.delay_ms, loss_pct=link.loss_pct)


# -- agents (forked per namespace) -------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_setup(ns: str) -> None:
    """In a fresh child: no Ctrl-C of its own (the runner decides), die with the parent, enter ns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent()
    from natkit.lab.netns import enter_netns

    enter_netns(ns)
    if not os.environ.get("NATKIT_LAB_DEBUG"):
        # Agents report through the socket; aiortc/aioice chatter (and their complaints while
        # a killed run's loops wind down) would only garble the progress lines.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def _spawn(ns: str, parent_ends: list[socket.socket]) -> tuple[int, socket.socket]:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            ours.close()
            for s in parent_ends:
                s.close()
            _child_setup(ns)
            asyncio.run(_agent_loop(theirs))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    parent_ends.append(ours)
    return pid, ours


async def _agent_loop(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    tasks: set[asyncio.Task[None]] = set()
    stop_servers = asyncio.Event()

    async def handle(cmd: dict[str, Any]) -> None:
        try:
            result = await _command(cmd, writer, stop_servers)
        except Exception as exc:  # reported, not raised: the runner decides what it means
            result = {"error": f"{type(exc).__name__}: {exc}"}
        writer.write((json.dumps({"id": cmd["id"], "result": result}, default=str) + "\n").encode())

    while line := await reader.readline():
        task = asyncio.create_task(handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _command(cmd: dict[str, Any], writer: asyncio.StreamWriter, stop_servers: asyncio.Event) -> dict[str, Any]:
    op = cmd["op"]
    if op == "case":
        from natkit.lab.peer import PeerConfig, run_peer

        cfg = PeerConfig(
            cmd["role"], cmd["room"], cmd["path"], tuple(cmd["signaling"]), cmd["ice_servers"], cmd["deadline_s"]
        )
        return (await run_peer(cfg)).to_json()
    if op == "probe":
        from natkit.nat.probe import probe

        res = await probe([cmd["server"]], families=(4,), timeout=cmd["timeout"])
        return res.to_json()
    if op == "servers":
        return await _servers(cmd, writer, stop_servers)
    if op == "stop-servers":
        stop_servers.set()
        return {}
    raise ValueError(f"unknown agent command {op!r}")


async def _servers(cmd: dict[str, Any], writer: asyncio.StreamWriter, stop: asyncio.Event) -> dict[str, Any]:
    """Run STUN (RFC 5780), TURN and signaling until ``stop`` is set (or the runner goes away:
    cancelled); either way the exit stack unwinds, so coturn stops and removes its files."""
    from natkit.lab.signaling import SignalingServer
    from natkit.server.stun import StunServer

    s = cmd["spec"]
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            StunServer([(s["stun"][0], s["stun_port"])], alternate_ip=s["stun"][1], alternate_port=s["stun_alt_port"])
        )
        # both peers of a relay path may be relayed by this one server: relay_to_relay
        turn_kwargs = dict(
            realm=s["realm"], users={s["username"]: s["password"]}, relay_ip=s["turn"], allow_peers=s["allow_peers"],
            relay_to_relay=True,
        )
        if s["engine"] == "coturn":
            from natkit.server.coturn import CoturnServer

            await stack.enter_async_context(
                CoturnServer(listen=[(s["turn"], s["turn_port"])], **turn_kwargs)  # type: ignore[arg-type]
            )
        else:
            from natkit.server.turn import TurnServer

            await stack.enter_async_context(TurnServer([(s["turn"], s["turn_port"])], **turn_kwargs))  # type: ignore[arg-type]
        from natkit.lab.browser import pages as browser_pages

        await stack.enter_async_context(
            SignalingServer(s["signaling"], s["signaling_port"], pages=browser_pages())
        )
        writer.write((json.dumps({"id": cmd["id"], "ready": True}) + "\n").encode())
        await stop.wait()
    return {"stopped": True}


class _Agent:
    """The runner's handle on one agent: send commands, await their results."""

    def __init__(self, name: str, pid: int, sock: socket.socket) -> None:
        self.name, self.pid, self._sock = name, pid, sock
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._sock, limit=1 << 20)
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if msg.get("ready"):
                self.ready.done() or self.ready.set_result(True)
                continue
            fut = self._pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg["result"])
        err = {"error": f"agent {self.name} exited"}
        for fut in self._pending.values():
            fut.done() or fut.set_result(err)
        self.ready.done() or self.ready.set_result(False)

    async def call(self, wait: float, **cmd: Any) -> dict[str, Any]:
        assert self._writer is not None
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        self._writer.write((json.dumps({"id": self._next, **cmd}) + "\n").encode())
        try:
            return await asyncio.wait_for(fut, wait)
        except TimeoutError:
            return {"error": f"agent {self.name} did not answer within {wait:g} s"}

    def send(self, **cmd: Any) -> None:
        assert self._writer is not None
        self._next += 1
        self._writer.write((json.dumps({"id": self._next, **cmd}) + "\n").encode())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 3)


def _stop_agents(agents: dict[str, tuple[int, socket.socket]]) -> None:
    """Close every agent's socket (EOF: it cancels its work and exits) and reap it: the peers
    first, then the servers' agent, which gets longer to unwind its servers (coturn stops and
    removes its files) before anything is killed and the namespaces go."""
    peers = [a for name, a in agents.items() if name != "srv"]
    for _, sock in peers:
        sock.close()
    _reap([pid for pid, _ in peers])
    if "srv" in agents:
        pid, sock = agents["srv"]
        sock.close()
        _reap([pid], SERVERS_STOP_TIMEOUT)


def _reap(pids: Iterable[int], timeout: float = 3.0) -> None:
    """Wait for the agents to exit (they do on EOF); kill the ones that do not."""
    left = set(pids)
    end = time.monotonic() + timeout
    while left and time.monotonic() < end:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            left.discard(pid)
        time.sleep(0.02)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class LabResult:
    topology: str
    turn_engine: str
    cases: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    duration_s: float
    timings: dict[str, float]
    errors: list[str] = field(default_factory=list)
    lab: dict[str, Any] = field(default_factory=dict)
    browser_cases: list[dict[str, Any]] | None = None  # with --browser only

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and all(c["pass"] for c in self.cases)
            and all(p["pass"] for p in self.probes)
            and all(c["pass"] for c in self.browser_cases or [])
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "turn_engine": self.turn_engine,
            "pass": self.passed,
            "duration_s": round(self.duration_s, 2),
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "lab": self.lab,
            "cases": strip_private(self.cases),
            "probes": self.probes,
            "errors": self.errors,
            **({"browser_cases": strip_private(self.browser_cases)} if self.browser_cases is not None else {}),
        }


Progress = Callable[[str, dict[str, Any]], None]


def _check_tools(capture: bool, engine: str) -> None:
    from natkit.lab.netns import check_prerequisites

    check_prerequisites()
    if capture and shutil.which("dumpcap") is None:
        raise UsageError("packet evidence needs dumpcap: apt-get install tshark (or run with --no-capture)")
    if engine == "coturn" and shutil.which("turnserver") is None:
        raise UsageError("--turn-engine coturn needs coturn: apt-get install coturn")


def run(
    topo: Topology,
    *,
    cases: list[Case] | None = None,
    turn_engine: str | None = None,
    parallel: int | None = None,
    capture: bool = True,
    progress: Progress | None = None,
    keep_capture: str | None = None,
    browser: bool = False,
) -> LabResult:
    """Build the lab of ``topo``, run ``cases`` (all by default) and the probes, tear down."""
    from natkit.lab.netns import NetnsLab

    t0 = time.monotonic()
    engine = turn_engine or topo.servers.turn_engine
    if engine not in ("natkit", "coturn"):
        raise UsageError(f"--turn-engine {engine}: choose natkit or coturn")
    _check_tools(capture, engine)
    cases = topo.cases() if cases is None else cases
    browser_list: list[Case] = []
    if browser:
        from natkit.lab.browser import browser_cases, find_chromium

        find_chromium()  # UsageError naming the package when it is missing
        names = {n for c in cases for n in c.nats}
        paths = {c.path for c in cases}
        browser_list = [c for c in browser_cases(topo) if set(c.nats) <= names and c.path in paths]
    plan = topo.plan(cases + browser_list)
    import aiortc  # noqa: F401 - imported once here, shared by every forked agent

    timings: dict[str, float] = {}
    notify = progress or (lambda kind, info: None)
    with NetnsLab() as lab, tempfile.TemporaryDirectory(prefix=f"natkit-lab-{lab.tag}-") as tmp, contextlib.ExitStack() as stack:
        notify("stage", {"text": f"building {len(plan.routers)} routers ({lab.tag})", "tag": lab.tag})
        nodes = build(lab, topo, plan)
        timings["build_s"] = time.monotonic() - t0
        pcap = Path(tmp) / "internet.pcap"
        dumpcap = None
        if capture:
            dumpcap = lab.popen(
                nodes.inet,
                ["dumpcap", "-q", "-i", "br0", "-f", "udp or tcp", "-w", str(pcap)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
            _wait_capture(pcap, dumpcap)
            marker = stack.enter_context(_CaptureMarker(lab, nodes.srv, (plan.routers[0].public_ip, MARKER_PORT)))
            # The capture is live once a datagram sent now is in the file: no case starts before.
            if not marker.sync(pcap, dumpcap):
                raise UsageError(f"dumpcap did not capture on the lab's bridge within {SYNC_TIMEOUT:g} s")
        parent_ends: list[socket.socket] = []
        pids: dict[str, tuple[int, socket.socket]] = {"srv": _spawn(nodes.srv, parent_ends)}
        for peer_id, ns in nodes.peers.items():
            pids[peer_id] = _spawn(ns, parent_ends)
        try:
            browser_out: list[dict[str, Any]] = []
            cases_out, probes_out, errors, t = asyncio.run(
                _orchestrate(
                    topo, plan, cases, engine, pids, parallel, notify,
                    browser=browser_list, peer_ns=nodes.peers, browser_out=browser_out,
                )
            )
        finally:
            _stop_agents(pids)
        timings.update(t)
        if dumpcap is not None:
            t1 = time.monotonic()
            # dumpcap drops what it has not read yet when stopped (libpcap hands packets over in
            # blocks): stop it only once a marker sent after the last case is in the file.
            if not marker.sync(pcap, dumpcap):
                errors.append(f"the capture did not catch up within {SYNC_TIMEOUT:g} s: evidence may miss packets")
            dumpcap.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                dumpcap.wait(5)
            if keep_capture:
                shutil.copyfile(pcap, keep_capture)
            notify("stage", {"text": "reading packet evidence"})
            _add_evidence(pcap, topo, plan, cases_out, browser_out)
            timings["evidence_s"] = time.monotonic() - t1
        else:
            for c in [*cases_out, *browser_out]:
                c["evidence"] = None
        t2 = time.monotonic()
    timings["teardown_s"] = time.monotonic() - t2
    for c in [*cases_out, *browser_out]:
        c["pass"] = _case_pass(c, capture)
    return LabResult(
        topo.source, engine, cases_out, probes_out, time.monotonic() - t0, timings, errors, describe(topo, plan),
        browser_cases=browser_out if browser else None,
    )


def describe(topo: Topology, plan: Plan) -> dict[str, Any]:
    """The topology as the results JSON carries it (engine-independent: for reports)."""
    srv = topo.servers
    return {
        "name": topo.name,
        "internet": topo.internet_net,
        "case_deadline_s": topo.case_deadline_s,
        "servers": {
            "stun": [f"{srv.stun_addresses[0]}:{srv.stun_port}", f"{srv.stun_addresses[1]}:{srv.stun_alt_port}"],
            "turn": f"{srv.turn_address}:{srv.turn_port}",
            "turn_transports": list(srv.turn_transports),
            "signaling": f"ws://{srv.signaling_address}:{srv.signaling_port}/ws",
        },
        "nats": [
            {
                "name": n.name,
                "type": n.type,
                "mapping": n.behaviour.mapping.value if n.behaviour.mapping else "none",
                "filtering": n.behaviour.filtering.value if n.behaviour.filtering else "none",
                "block_udp": n.behaviour.block_udp,
                "hairpin": n.behaviour.hairpinning,
                "udp_timeout_s": n.behaviour.udp_timeout,
                "same_lan": n.same_lan,
                "wan": {"delay_ms": n.wan.delay_ms, "loss_pct": n.wan.loss_pct},
                "lan": {"delay_ms": n.lan.delay_ms, "loss_pct": n.lan.loss_pct},
            }
            for n in topo.nats
        ],
        "routers": [
            {"id": r.id, "nat": r.nat.name, "public_ip": r.public_ip, "lan": r.lan_net, "peers": [p.ip for p in r.peers]}
            for r in plan.routers
        ],
    }


MARKER_PORT = 9  # discard: nobody answers; the marker only has to cross the bridge
SYNC_TIMEOUT = 5.0  # s for a marker to reach the capture file (dumpcap writes it within ~0.5 s)


class _CaptureMarker:
    """Marker datagrams sent across the internet bridge: once one is in the capture file,
    everything that crossed the bridge before it is too (libpcap hands packets over in order)."""

    def __init__(self, lab: Any, ns: str, dest: tuple[str, int]) -> None:
        self._sock = lab.socket(ns)
        self._dest = dest
        self._offset = 0
        self._tail = b""

    def __enter__(self) -> _CaptureMarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def sync(self, pcap: Path, proc: subprocess.Popen[Any], timeout: float = SYNC_TIMEOUT) -> bool:
        """Send a fresh marker (again every 0.1 s: the link may lose it) until the capture file
        holds it; False when ``timeout`` passes or dumpcap exits first."""
        from natkit.lab.evidence import CAPTURE_MARKER

        token = CAPTURE_MARKER + secrets.token_hex(8).encode()
        end = time.monotonic() + timeout
        resend = 0.0
        while (now := time.monotonic()) < end:
            if now >= resend:
                with contextlib.suppress(OSError):
                    self._sock.sendto(token, self._dest)
                resend = now + 0.1
            if self._written(pcap, token):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def _written(self, pcap: Path, token: bytes) -> bool:
        """Whether ``token`` is in what the file gained since the last look (pcapng keeps each
        packet's bytes whole, so a plain search finds it)."""
        try:
            with open(pcap, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return False
        self._offset += len(chunk)
        buf = self._tail + chunk
        self._tail = buf[-2 * len(token) :]
        return token in buf


def _wait_capture(pcap: Path, proc: subprocess.Popen[Any]) -> None:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise UsageError(f"dumpcap could not capture on the lab's bridge: {err or 'exit ' + str(proc.returncode)}")
        if pcap.exists() and pcap.stat().st_size >= 24:
            return
        time.sleep(0.02)


def _case_pass(c: dict[str, Any], capture: bool) -> bool:
    if c["observed"] != c["expected"]:
        return False
    if c["observed"] != "connected":
        return True
    ev = c.get("evidence")
    if capture and (ev is None or not ev.get("consistent")):
        return False
    return c.get("route") == c.get("expected_route")


def _cpu_limit(parallel: int | None, topo: Topology) -> int:
    if parallel:
        return parallel
    if topo.parallel:
        return topo.parallel
    return max(4, 4 * (os.cpu_count() or 1))


async def _orchestrate(
    topo: Topology,
    plan: Plan,
    cases: list[Case],
    engine: str,
    pids: dict[str, tuple[int, socket.socket]],
    parallel: int | None,
    notify: Progress,
    *,
    browser: Sequence[Case] = (),
    peer_ns: dict[str, str] | None = None,
    browser_out: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], dict[str, float]]:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    agents = {name: _Agent(name, pid, sock) for name, (pid, sock) in pids.items()}
    for a in agents.values():
        await a.start()
    srv = topo.servers
    spec = {
        "stun": list(srv.stun_addresses),
        "stun_port": srv.stun_port,
        "stun_alt_port": srv.stun_alt_port,
        "turn": srv.turn_address,
        "turn_port": srv.turn_port,
        "engine": engine,
        "realm": srv.turn_realm,
        "username": srv.turn_username,
        "password": srv.turn_password,
        "allow_peers": [topo.internet_net, *[r.lan_net for r in plan.routers if not r.nat.behaviour.nat]],
        "signaling": srv.signaling_address,
        "signaling_port": srv.signaling_port,
    }
    servers = agents["srv"]
    servers_result = asyncio.create_task(servers.call(3600, op="servers", spec=spec))
    ready = await asyncio.wait([servers.ready, servers_result], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if not servers.ready.done() or not servers.ready.result():
        detail = servers_result.result() if servers_result.done() else {"error": "no answer in 15 s"}
        del ready
        raise UsageError(f"the lab's servers did not start: {detail.get('error', detail)}")
    timings["servers_s"] = time.monotonic() - t0

    errors: list[str] = []
    total = len(cases) + len(browser)
    done = {"n": 0, "failures": 0}

    async def run_probe(nat_name: str) -> dict[str, Any]:
        router = plan.router(f"{nat_name}-1")
        nat = router.nat
        res = await agents[router.peers[0].id].call(
            30, op="probe", server=f"stun:{srv.stun_addresses[0]}:{srv.stun_port}", timeout=PROBE_TIMEOUT
        )
        want = expected_probe(nat.behaviour)
        observed = {k: res.get(k) for k in ("nat_type", "mapping", "filtering", "public")}
        ok = "error" not in res and all(observed.get(k) == v for k, v in want.items())
        out = {"nat": nat.name, "type": nat.type, "expected": want, "observed": observed, "pass": ok}
        if "error" in res:
            out["error"] = res["error"]
        notify("probe", out)
        return out

    sem = asyncio.Semaphore(_cpu_limit(parallel, topo))

    async def run_case(case: Case, exp: Any) -> dict[str, Any]:
        (ra, pa), (rb, pb) = plan.peers_of(case)
        room = f"{case.id}"
        ice = srv.ice_servers(case.path)
        common = dict(op="case", room=room, path=case.path, signaling=[srv.signaling_address, srv.signaling_port], ice_servers=ice, deadline_s=topo.case_deadline_s)
        limit = topo.case_deadline_s + RESULT_MARGIN
        if exp.connected:
            async with sem:
                ra_res, rb_res = await asyncio.gather(
                    agents[pa.id].call(limit, role="caller", **common), agents[pb.id].call(limit, role="callee", **common)
                )
        else:
            ra_res, rb_res = await asyncio.gather(
                agents[pa.id].call(limit, role="caller", **common), agents[pb.id].call(limit, role="callee", **common)
            )
        observed = "connected" if ra_res.get("outcome") == "connected" and rb_res.get("outcome") == "connected" else "failed"
        from natkit.lab.evidence import claimed_route

        out = {
            "nats": list(case.nats),
            "path": case.path,
            "same_lan": case.same_lan,
            "expected": exp.outcome,
            "observed": observed,
            "expected_route": exp.route,
            "route": claimed_route(ra_res.get("selected"), ra.lan_net, ra.public_ip) if observed == "connected" else None,
            "reason": exp.reason,
            "selected": ra_res.get("selected") if observed == "connected" else None,
            "callee_selected": rb_res.get("selected") if observed == "connected" else None,
            "t_connect_ms": ra_res.get("t_connect_ms") if observed == "connected" else None,
            "rtt_ms": ra_res.get("rtt_ms") if observed == "connected" else None,
            "error": ra_res.get("error") or rb_res.get("error"),
            "_caller": ra_res,
            "_callee": rb_res,
            "_routers": [ra.id, rb.id],
        }
        done["n"] += 1
        if observed != exp.outcome:
            done["failures"] += 1
        notify("case", {**out, "done": done["n"], "total": total, "failures": done["failures"]})
        return out

    # Expected failures first (they idle until the deadline), then the CPU-bound connections.
    plans = []
    for case in cases:
        (ra, _), (rb, _) = plan.peers_of(case)
        exp = expect(ra.nat.behaviour, rb.nat.behaviour, case.path, same_lan=case.same_lan, turn_transports=srv.turn_transports)
        plans.append((case, exp))
    order = sorted(range(len(plans)), key=lambda i: plans[i][1].connected)
    probe_names = sorted({c.nats[0] for c in cases} | {c.nats[1] for c in cases}, key=[n.name for n in topo.nats].index)
    notify("stage", {"text": f"probing {len(probe_names)} NATs and running {total} cases"})
    t1 = time.monotonic()
    probe_tasks = [asyncio.create_task(run_probe(n)) for n in probe_names]
    case_tasks = {i: asyncio.create_task(run_case(*plans[i])) for i in order}
    probes = await asyncio.gather(*probe_tasks)
    results = [await case_tasks[i] for i in range(len(plans))]
    timings["cases_s"] = time.monotonic() - t1
    if browser:
        # Chromium is heavy: after the matrix, a few at a time; cases expected to fail idle
        # until their deadline, so they all start at once. They run before this returns, so
        # while the capture still runs: the runner stops it only after its closing marker.
        from functools import partial

        from natkit.lab.browser import CHROMIUM_START_S, run_lab_browser_case

        t2 = time.monotonic()
        bsem = asyncio.Semaphore(3)
        blimit = topo.case_deadline_s + CHROMIUM_START_S + RESULT_MARGIN

        async def run_browser(bc: Case) -> dict[str, Any]:
            (ra, pa), (rb, pb) = plan.peers_of(bc)
            connects = expect(
                ra.nat.behaviour, rb.nat.behaviour, bc.path, turn_transports=srv.turn_transports
            ).connected
            async with bsem if connects else contextlib.nullcontext():
                rec = await run_lab_browser_case(
                    topo, plan, bc, browser_netns=(peer_ns or {})[pa.id],
                    call_callee=partial(agents[pb.id].call, blimit, op="case", role="callee"),
                )
            done["n"] += 1
            if not rec["pass"]:
                done["failures"] += 1
            notify("case", {**rec, "done": done["n"], "total": total, "failures": done["failures"]})
            return rec

        recs = await asyncio.gather(*(run_browser(bc) for bc in browser))
        if browser_out is not None:
            browser_out.extend(recs)
        timings["browser_s"] = time.monotonic() - t2
    # Stop the servers while the namespaces stand, and wait for it (bounded).
    servers.send(op="stop-servers")
    try:
        stopped = await asyncio.wait_for(asyncio.shield(servers_result), SERVERS_STOP_TIMEOUT)
    except TimeoutError:
        stopped = {"error": f"no answer within {SERVERS_STOP_TIMEOUT:g} s"}
    if not stopped.get("stopped"):
        errors.append(f"the lab's servers did not stop cleanly: {stopped.get('error', stopped)}")
    for a in agents.values():
        await a.close()
    return results, probes, errors, timings


def _add_evidence(
    pcap: Path, topo: Topology, plan: Plan, cases: list[dict[str, Any]], browser: Sequence[dict[str, Any]] = ()
) -> None:
    from natkit.lab.evidence import judge, judge_browser, read_capture

    turn = (topo.servers.turn_address, topo.servers.turn_port)
    flows = read_capture(pcap, turn)
    # Browser cases: Chromium's getStats pair against the same capture, judged the same way.
    for c in browser:
        if c["observed"] != "connected":
            c["evidence"] = None
            continue
        ra = plan.router(c["_routers"][0])
        c["evidence"] = judge_browser(
            flows, selected=c.get("selected"), callee=c.get("_callee") or {},
            caller_lan=ra.lan_net, caller_public=ra.public_ip, turn=turn,
        )
    for c in cases:
        caller, callee = c["_caller"], c["_callee"]
        if c["observed"] != "connected":
            c["evidence"] = None
            continue
        ra = plan.router(c["_routers"][0])
        c["evidence"] = judge(flows, caller=caller, callee=callee, caller_lan=ra.lan_net, caller_public=ra.public_ip, turn=turn)


def strip_private(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cases without the runner's working fields (keys starting with ``_``)."""
    return [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases]


# -- keeping a lab up (natkit lab up / down / shell) ---------------------------------------------

UP_STATE = Path("/run/natkit/lab-up.json")


@dataclass
class UpLab:
    """A lab kept up by :func:`up`: its namespaces and address plan."""

    tag: str
    nodes: LabNodes
    plan: Plan
    topology: Topology

    def describe(self) -> list[tuple[str, str, str]]:
        """(node, namespace, addresses) for every node."""
        srv = self.topology.servers
        rows = [
            ("inet", self.nodes.inet, f"bridge br0 ({self.topology.internet_net})"),
            (
                "srv",
                self.nodes.srv,
                f"STUN {srv.stun_addresses[0]}:{srv.stun_port} + {srv.stun_addresses[1]}:{srv.stun_alt_port}, "
                f"TURN {srv.turn_address}:{srv.turn_port}, signaling ws://{srv.signaling_address}:{srv.signaling_port}/ws",
            ),
        ]
        for r in self.plan.routers:
            rows.append((r.id, self.nodes.routers[r.id], f"{r.nat.type}: public {r.public_ip}, LAN {r.lan_net}"))
            for p in r.peers:
                rows.append((p.id, self.nodes.peers[p.id], f"{p.ip} behind {r.id}"))
        return rows


def read_up_state() -> dict[str, Any] | None:
    """The state of the lab kept up by ``natkit lab up`` if its process is alive, else None."""
    from natkit.lab.netns import owner_alive

    try:
        state = json.loads(UP_STATE.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and owner_alive(state) else None


@contextlib.contextmanager
def up(topo: Topology, *, turn_engine: str | None = None) -> Any:
    """Build the whole lab of ``topo`` with its servers running and keep it until the block
    ends (the process owning it is recorded for ``natkit lab down`` / ``shell``)."""
    from natkit.lab.netns import NetnsLab, process_start

    engine = turn_engine or topo.servers.turn_engine
    _check_tools(False, engine)
    if read_up_state() is not None:
        raise UsageError("a lab is already up: stop it with 'natkit lab down' first")
    plan = topo.plan()
    with NetnsLab() as lab:
        nodes = build(lab, topo, plan)
        pid, sock = _spawn(nodes.srv, [])
        try:
            srv = topo.servers
            spec = {
                "stun": list(srv.stun_addresses), "stun_port": srv.stun_port, "stun_alt_port": srv.stun_alt_port,
                "turn": srv.turn_address, "turn_port": srv.turn_port, "engine": engine, "realm": srv.turn_realm,
                "username": srv.turn_username, "password": srv.turn_password,
                "allow_peers": [topo.internet_net, *[r.lan_net for r in plan.routers if not r.nat.behaviour.nat]],
                "signaling": srv.signaling_address, "signaling_port": srv.signaling_port,
            }
            sock.sendall((json.dumps({"id": 1, "op": "servers", "spec": spec}) + "\n").encode())
            sock.settimeout(15)
            line = sock.makefile("rb").readline()
            msg = json.loads(line) if line else {"result": {"error": "the servers' process exited"}}
            if not msg.get("ready"):
                raise UsageError(f"the lab's servers did not start: {msg.get('result', {}).get('error', msg)}")
            state = {
                "pid": os.getpid(), "start": process_start(os.getpid()), "tag": lab.tag,
                "topology": topo.source, "nodes": nodes.nodes(),
            }
            UP_STATE.parent.mkdir(parents=True, exist_ok=True)
            UP_STATE.write_text(json.dumps(state))
            yield UpLab(lab.tag, nodes, plan, topo)
        finally:
            with contextlib.suppress(OSError):
                UP_STATE.unlink()
            _stop_agents({"srv": (pid, sock)})
