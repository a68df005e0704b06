"""The netns engine: a topology built from network namespaces, veths, bridges and nftables.

:func:`open_lab` builds the :class:`~natkit.lab.topology.Plan` of a topology with
:class:`natkit.lab.netns.NetnsLab` (:func:`build`), starts the packet capture on the internet
bridge, forks one agent per peer namespace plus one for the servers (:func:`spawn_agent`) and
yields a :class:`NetnsBuiltLab` whose sockets :func:`natkit.lab.orchestrate.orchestrate` drives.
Everything goes at the end, also on error, Ctrl-C and SIGTERM (and after ``kill -9`` by the
next run or ``natkit lab clean``).

Layout: the internet bridge ``br0`` in ``<tag>-inet``; the STUN responder (two addresses), the
TURN relay and the signaling server in ``<tag>-srv``; per router ``<tag>-rK`` (WAN on the
bridge, LAN bridge ``lan``, its NAT kind's recipe, netem per link) and its peers ``<tag>-rKpI``.

Agents: aiortc is heavy to import and its DTLS is CPU-bound, so the stacks are imported once
here and each agent is a fork that enters its namespace and runs many cases at once on its own
event loop, talking to the orchestrator over a socketpair (:mod:`natkit.lab.agents`). Agents
die with the run (EOF on the socket, and PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from natkit.lab.capture import Capture, check_dumpcap, die_with_parent
from natkit.lab.netns import NetnsLab, check_prerequisites, enter_netns
from natkit.lab.topology import Link, Plan, Topology

__all__ = ["LabNodes", "NetnsBuiltLab", "build", "check", "open_lab", "spawn_agent", "stop_agents"]

NAME = "netns"
SERVERS_STOP_TIMEOUT = 12.0  # s for the servers' agent to unwind (coturn: SIGTERM, then SIGKILL)


@dataclass
class LabNodes:
    """Namespace names of a built lab (``node`` names are what ``natkit lab shell`` takes)."""

    inet: str
    srv: str
    routers: dict[str, str] = field(default_factory=dict)  # router id -> namespace
    peers: dict[str, str] = field(default_factory=dict)  # peer id -> namespace

    def nodes(self) -> dict[str, str]:
        return {"inet": self.inet, "srv": self.srv, **self.routers, **self.peers}


def check(*, capture: bool) -> None:
    """PrerequisiteError naming what to install or do if this engine cannot run here."""
    check_prerequisites()
    if capture:
        check_dumpcap()


def build(lab: NetnsLab, topo: Topology, plan: Plan) -> LabNodes:
    """Create the namespaces, links, addresses, routes, NATs and netem of ``plan`` in ``lab``
    (a :class:`~natkit.lab.netns.NetnsLab` that is open)."""
    srv = topo.servers
    prefix = int(topo.internet_net.split("/")[1])
    inet = lab.add_ns("inet")
    lab.add_bridge(inet, "br0")
    nodes = LabNodes(inet, lab.add_ns("srv"))
    link = topo.internet_link
    lab.add_veth(nodes.srv, "eth0", inet, "p0", master="br0")
    for ip in dict.fromkeys([*srv.stun_addresses, srv.turn_address, srv.signaling_address]):
        lab.add_addr(nodes.srv, "eth0", f"{ip}/{prefix}")
    if plan.internet_net6 is not None and srv.stun_addresses6 is not None:
        for ip6 in dict.fromkeys([*srv.stun_addresses6, srv.turn_address6, srv.signaling_address6]):
            if ip6 is not None:
                lab.add_addr(nodes.srv, "eth0", f"{ip6}/64")
    _impair(lab, nodes.srv, "eth0", link, "the servers")
    _impair(lab, inet, "p0", link, "the servers")
    open_routes: list[tuple[str, str, str]] = []  # (routed LAN, via public IP, router ns)
    for k, r in enumerate(plan.routers):
        ns = lab.add_ns(f"r{k}")
        nodes.routers[r.id] = ns
        b = r.nat.behaviour
        lab.add_veth(ns, "wan", inet, f"p{k + 1}", master="br0")
        lab.add_addr(ns, "wan", f"{r.public_ip}/{prefix}")
        lab.add_bridge(ns, "lan")
        lan_prefix = r.lan_net.split("/")[1]
        if b.ipv4:
            lab.add_addr(ns, "lan", f"{r.lan_ip}/{lan_prefix}")
        if r.public_ip6 is not None and r.lan_ip6 is not None and r.lan_net6 is not None:
            lab.add_addr(ns, "wan", f"{r.public_ip6}/64")
            lab.add_addr(ns, "lan", f"{r.lan_ip6}/64")
            open_routes.append((r.outside_net6 or r.lan_net6, r.public_ip6, ns))
        _apply(lab, ns, b, "lan", "wan", r.public_ip, r.lan_net, r.lan_net6, r.outside_net6)
        if b.nat64 and r.lan_ip6 is not None:
            start_dns64(lab, ns, r.lan_ip6, topo.servers.names())
        wan = replace(r.nat.wan, delay_ms=r.nat.wan.delay_ms + link.delay_ms, loss_pct=max(r.nat.wan.loss_pct, link.loss_pct))
        _impair(lab, ns, "wan", wan, r.nat.name)
        _impair(lab, inet, f"p{k + 1}", wan, r.nat.name)
        if not b.nat:
            open_routes.append((r.lan_net, r.public_ip, ns))
        if b.inner is not None:
            for i, inner in enumerate(r.inner):
                hns = lab.add_ns(f"r{k}h{i + 1}")
                nodes.routers[inner.id] = hns
                lab.add_veth(hns, "wan", ns, f"h{i + 1}", master="lan")
                lab.add_addr(hns, "wan", f"{inner.wan_ip}/{lan_prefix}")
                lab.add_route(hns, "default", via=r.lan_ip)
                lab.add_bridge(hns, "lan")
                ilan_prefix = inner.lan_net.split("/")[1]
                lab.add_addr(hns, "lan", f"{inner.lan_ip}/{ilan_prefix}")
                _apply(lab, hns, b.inner, "lan", "wan", inner.wan_ip, inner.lan_net, None, None)
                _add_peers(lab, nodes, hns, f"r{k}h{i + 1}p", inner.peers, inner.lan_ip, ilan_prefix, r)
            continue
        _add_peers(lab, nodes, ns, f"r{k}p", r.peers, r.lan_ip, lan_prefix, r)
    # Routers without NAT route a public LAN: everyone on the segment needs the way to it.
    six = {nodes.routers[r.id] for r in plan.routers if r.public_ip6 is not None}
    if plan.internet_net6 is not None:
        six.add(nodes.srv)
    outer = [nodes.srv, *(nodes.routers[r.id] for r in plan.routers)]
    for lan_net, via, router_ns in open_routes:
        for ns in outer:
            if ns != router_ns and (":" not in via or ns in six):
                lab.add_route(ns, lan_net, via=via)
    return nodes


def start_dns64(lab: NetnsLab, ns: str, listen_ip6: str, names: Mapping[str, str]) -> None:
    """The lab's DNS64 resolver (:mod:`natkit.lab.dns64`) on router ``ns``, port 53."""
    import subprocess
    import sys

    zone = [f"{name}={ip}" for name, ip in names.items()]
    proc = lab.popen(ns, [sys.executable, "-m", "natkit.lab.dns64", "--listen", listen_ip6, *zone],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    # It prints one line once it listens; bounded, so a broken resolver does not hang the build.
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    if not ready or not proc.stdout.readline():
        from natkit.lab.netns import NetnsError

        raise NetnsError(f"the DNS64 resolver did not start in {ns} within 10 s")


def _apply(lab: NetnsLab, ns: str, b: Any, inside: str, outside: str, public_ip: str, lan: str,
           lan6: str | None, out6: str | None) -> None:
    """The NAT kind's recipe on router ``ns`` (and NAT64's tayga and DNS64 resolver)."""
    from natkit.lab import nats

    side = nats.RouterSide(inside, outside, public_ip, lan, inside_net6=lan6, outside_net6=out6)
    recipe = nats.recipe(b, side)
    for key, value in recipe.sysctls.items():
        lab.sysctl(ns, key, value)
    if recipe.nat64 is not None:
        start_nat64(lab, ns, recipe.nat64)
    lab.apply_nft(ns, recipe.nft)


def start_nat64(lab: NetnsLab, ns: str, plan: Any) -> None:
    """tayga in router ``ns`` (its tun device, routes and state directory), bounded in time."""
    import shutil as _shutil
    import subprocess

    data = Path(tempfile.mkdtemp(prefix=f"natkit-lab-{lab.tag}-tayga-"))
    conf = data / "tayga.conf"
    conf.write_text(plan.tayga_conf(str(data)))
    tayga = _shutil.which("tayga") or "/usr/sbin/tayga"
    res = lab.run(ns, [tayga, "--mktun", "-c", str(conf)], timeout=10)
    if res.returncode != 0:
        from natkit.lab.netns import NetnsError

        raise NetnsError(f"tayga --mktun failed in {ns}: {(res.stderr or res.stdout).strip()[:200]}; "
                         "install tayga and load the tun module (modprobe tun)")
    for argv in plan.commands():
        lab.run(ns, argv, check=True, timeout=10)
    lab.popen(ns, [tayga, "--nodetach", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
              preexec_fn=die_with_parent)


def _add_peers(lab: NetnsLab, nodes: LabNodes, router_ns: str, role: str, peers: Any, gw: str, lan_prefix: str,
               r: Any) -> None:
    for i, p in enumerate(peers):
        pns = lab.add_ns(f"{role}{i + 1}".replace("-", ""))
        nodes.peers[p.id] = pns
        port = f"l{i + 1}"
        lab.add_veth(pns, "eth0", router_ns, port, master="lan")
        if p.ip:
            lab.add_addr(pns, "eth0", f"{p.ip}/{lan_prefix}")
            lab.add_route(pns, "default", via=gw)
        if p.ip6 and r.lan_ip6:
            lab.add_addr(pns, "eth0", f"{p.ip6}/64")
            lab.add_route(pns, "::/0", via=r.lan_ip6)
        _impair(lab, pns, "eth0", r.nat.lan, r.nat.name)
        _impair(lab, router_ns, port, r.nat.lan, r.nat.name)


# What could not be applied of what the topology asked for (by NAT name), for the run's report.
NOT_APPLIED: list[str] = []


def _impair(lab: NetnsLab, ns: str, ifname: str, link: Link, who: str = "") -> None:
    """netem on ``ns:ifname``; a delay the kernel cannot apply (no netem) is dropped and said
    once per NAT in :data:`NOT_APPLIED` instead of stopping the run (loss still applies)."""
    from natkit.lab.netns import has_netem

    if not link.shaped:
        return
    delay = link.delay_ms
    if delay and not has_netem():
        note = f"{who}: link delay {delay:g} ms not applied (the kernel has no netem qdisc, sch_netem)"
        if note not in NOT_APPLIED:
            NOT_APPLIED.append(note)
        delay = 0
    if delay or link.loss_pct:
        lab.impair(ns, ifname, delay_ms=delay, loss_pct=link.loss_pct)


# -- agents (forked per namespace) -------------------------------------------------------------


def _child_setup(ns: str, tmpdir: str | None = None) -> None:
    """In a fresh child: no Ctrl-C of its own (the run decides), die with the parent, enter ns;
    its temporary files under ``tmpdir`` (the run's scratch directory, which the run removes
    and ``natkit lab clean`` removes after a killed run) when given."""
    if tmpdir is not None:
        tempfile.tempdir = tmpdir
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent()
    enter_netns(ns)
    if not os.environ.get("NATKIT_LAB_DEBUG"):
        # Agents report through the socket; aiortc/aioice chatter (and their complaints while
        # a killed run's loops wind down) would only garble the progress lines.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def spawn_agent(ns: str, parent_ends: list[socket.socket], tmpdir: str | os.PathLike[str] | None = None) -> tuple[int, socket.socket]:
    """Fork an agent into namespace ``ns``; (its pid, the orchestrator's end of its socket).
    ``parent_ends`` are the sockets of earlier agents, which the child closes; ``tmpdir``
    holds the agent's temporary files (the servers' TLS key, coturn's work directory)."""
    from natkit.lab.agents import serve

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            ours.close()
            for s in parent_ends:
                s.close()
            _child_setup(ns, None if tmpdir is None else os.fspath(tmpdir))
            asyncio.run(serve(theirs))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    parent_ends.append(ours)
    return pid, ours


def stop_agents(agents: Mapping[str, tuple[int, socket.socket]]) -> None:
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


# -- a built lab -------------------------------------------------------------------------------


@dataclass
class NetnsBuiltLab:
    """A built netns lab with its agents (see :class:`natkit.lab.engines.BuiltLab`)."""

    tag: str
    lab: NetnsLab
    nodes: LabNodes
    procs: dict[str, tuple[int, socket.socket]]
    capture: Capture | None = None
    engine: str = NAME
    # the run's scratch directory (natkit-lab-<tag>-*): gone with the run, or with `lab clean`
    scratch: Path | None = None

    @property
    def agents(self) -> dict[str, socket.socket]:
        return {name: sock for name, (_, sock) in self.procs.items()}

    def stop_agents(self) -> None:
        """Stop and reap every agent (idempotent)."""
        procs, self.procs = self.procs, {}
        stop_agents(procs)


@contextlib.contextmanager
def open_lab(
    topo: Topology,
    plan: Plan,
    *,
    capture: bool = True,
    agents: bool = True,
    progress: Any = None,
) -> Iterator[NetnsBuiltLab]:
    """Build ``plan``, start the capture (``capture``) and the agents (``agents``: one per peer
    and ``srv``; without, none), yield the lab; tear everything down when the block ends."""
    notify = progress or (lambda kind, info: None)
    with NetnsLab() as lab, tempfile.TemporaryDirectory(prefix=f"natkit-lab-{lab.tag}-") as tmp:
        notify("stage", {"text": f"building {len(plan.routers)} routers ({lab.tag})", "tag": lab.tag})
        nodes = build(lab, topo, plan)
        built = NetnsBuiltLab(lab.tag, lab, nodes, {}, scratch=Path(tmp))
        try:
            if capture:
                built.capture = Capture(lab, nodes.inet, "br0", Path(tmp) / "internet.pcap",
                                        nodes.srv, plan.routers[0].public_ip)
                built.capture.start()
            if agents:
                parent_ends: list[socket.socket] = []
                built.procs["srv"] = spawn_agent(nodes.srv, parent_ends, tmp)
                for peer_id, ns in nodes.peers.items():
                    built.procs[peer_id] = spawn_agent(ns, parent_ends)
            yield built
        finally:
            built.stop_agents()
            if built.capture is not None:
                built.capture.close()
