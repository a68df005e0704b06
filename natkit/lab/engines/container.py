"""Inside the Compose lab's containers: ``python -m natkit.lab.engines.container``.

Every service of the Compose file (:mod:`natkit.lab.engines.compose`) runs this, configured by
``NATKIT_*`` environment variables: first :func:`setup_network` (interfaces named by the
address they hold, extra addresses, routes, netem, the router's nftables recipe), then its
role:

* ``router``: nothing more (the kernel routes and NATs) until Compose stops it;
* ``agent`` (the servers and every peer): connect to the runner over TCP (retrying: containers
  start in any order) and serve the agent RPC (:func:`natkit.lab.agents.serve`);
* ``runner``: accept every agent, run the probes and the cases through the public API
  (:func:`natkit.lab.orchestrate.orchestrate`), then either

  - with ``NATKIT_ORCH_OUT`` (``natkit lab run --engine compose``): write the orchestration
    there (:meth:`~natkit.lab.orchestrate.Orchestration.to_json`) and progress events as JSON
    lines on stdout, and exit 0: the host owns the capture of the internet bridge, judges and
    reports; or
  - alone (``docker compose up --exit-code-from runner``): finish the run itself (no capture,
    so no packet evidence), print the matrix and exit 0/1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab.capture import Capture
from natkit.lab.engines.compose import PROGRESS_PREFIX

__all__ = ["PROGRESS_PREFIX", "ContainerLab", "main", "node_main", "progress_event", "setup_network"]

# Containers start in any order: agents retry and the runner waits this long for them.
AGENT_WAIT_S = float(os.environ.get("NATKIT_AGENT_WAIT_S", "180"))
DNS64_START_S = 60.0
DAD_WAIT_S = 15.0


# A router's daemons (tayga, the DNS64 resolver): they live as long as the container.
_DAEMONS: list[subprocess.Popen[bytes]] = []


def _ip(*args: str) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise PrerequisiteError(f"ip {' '.join(args)}: {res.stderr.strip()}; the container needs NET_ADMIN")
    return res.stdout


def _pairs(text: str, sep: str = " ") -> list[tuple[str, str]]:
    out = []
    for item in (x.strip() for x in text.split(sep)):
        if item:
            name, _, value = item.partition("=")
            out.append((name.strip(), value.strip()))
    return out


def _addresses() -> dict[str, str]:
    """Address (IPv4, and IPv6 other than link-local) -> the interface holding it."""
    return {ip: dev for ip, (dev, _) in _cidrs().items()}


def _cidrs() -> dict[str, tuple[str, str]]:
    """Address -> (interface, address/prefix), IPv4 and global IPv6."""
    out = {}
    for line in _ip("-o", "addr", "show").splitlines():
        parts = line.split()
        for fam in ("inet", "inet6"):
            if fam in parts:
                cidr = parts[parts.index(fam) + 1]
                if not cidr.startswith("fe80:"):
                    out[cidr.split("/")[0]] = (parts[1], cidr)
    return out


def _add_addr(cidr: str, dev: str) -> None:
    # no duplicate address detection: the plan's addresses are unique, and a tentative
    # address cannot be bound for a second or two
    _ip("addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else []))


def setup_network(env: Mapping[str, str]) -> None:
    """Name interfaces by the address they hold, add addresses and routes, shape, start NAT64
    and DNS64 (a router that has them), apply nft."""
    cidrs = _cidrs()
    deadline = time.monotonic() + 30
    for name, ip in _pairs(env.get("NATKIT_IFACES", "")):
        while ip not in cidrs and time.monotonic() < deadline:  # Docker attaches networks late
            time.sleep(0.2)
            cidrs = _cidrs()
        if ip not in cidrs:
            raise PrerequisiteError(f"no interface holds {ip}: the container is not on the network it needs")
        dev = cidrs[ip][0]
        if dev != name:
            six = [cidr for d, cidr in cidrs.values() if d == dev and ":" in cidr]
            _ip("link", "set", "dev", dev, "down")
            _ip("link", "set", "dev", dev, "name", name)
            _ip("link", "set", "dev", name, "up")
            have = _cidrs()
            for cidr in six:  # the kernel may drop IPv6 addresses of a link that went down
                if cidr.split("/")[0] not in have:
                    _add_addr(cidr, name)
            cidrs = _cidrs()
    for dev in env.get("NATKIT_FLUSH4", "").split():  # an IPv6-only LAN (Docker always gives IPv4)
        _ip("-4", "addr", "flush", "dev", dev)
    for dev in env.get("NATKIT_FLUSH6", "").split():  # IPv4-only on a dual-stack segment
        _ip("-6", "addr", "flush", "dev", dev, "scope", "global")
    for dev, cidr in _pairs(env.get("NATKIT_ADDRS", "")):
        _add_addr(cidr, dev)
    for route in (r.strip() for r in env.get("NATKIT_ROUTES", "").split(";")):
        if route:
            _ip(*(["-6"] if ":" in route else []), "route", "replace", *route.split())
    for dev, spec in _pairs(env.get("NATKIT_NETEM", ""), ";"):
        if spec:
            subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split()],
                           check=True, timeout=20)
    _wait_dad()
    if env.get("NATKIT_NAT64"):
        _DAEMONS.append(start_nat64(env["NATKIT_NAT64"]))
    if env.get("NATKIT_DNS64"):
        _DAEMONS.append(start_dns64(env["NATKIT_DNS64"].split()))
    rules = env.get("NATKIT_NFT")
    if rules:
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, timeout=20)


def _wait_dad(timeout: float = DAD_WAIT_S) -> None:
    """Wait (bounded) until no IPv6 address is tentative: an interface that went down for its
    new name runs duplicate address detection again when it comes up, and until it is done
    nothing binds to the address (the DNS64 resolver, a peer's host candidates)."""
    deadline = time.monotonic() + timeout
    while _ip("-6", "addr", "show", "tentative").strip():
        if time.monotonic() > deadline:
            raise PrerequisiteError(f"IPv6 addresses still tentative after {timeout:g} s (duplicate address detection)")
        time.sleep(0.1)


def start_nat64(spec: str) -> subprocess.Popen[bytes]:
    """tayga (the router's stateful NAT64, :class:`natkit.lab.nats.nftables.Nat64Plan` as JSON):
    its tun device (``/dev/net/tun`` passed into the container), routes, then the daemon, which
    lives as long as the container."""
    import shutil
    import tempfile

    from natkit.lab.nats.nftables import Nat64Plan

    plan = Nat64Plan(**json.loads(spec))
    tayga = shutil.which("tayga") or "/usr/sbin/tayga"
    if not os.path.exists(tayga):
        raise PrerequisiteError("the NAT64 router needs tayga in the lab image: rebuild it (natkit lab run --engine compose does)")
    data = tempfile.mkdtemp(prefix="natkit-tayga-")
    conf = os.path.join(data, "tayga.conf")
    Path(conf).write_text(plan.tayga_conf(data))
    res = subprocess.run([tayga, "--mktun", "-c", conf], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise PrerequisiteError(f"tayga --mktun failed: {(res.stderr or res.stdout).strip()[:200]}; the router "
                                "container needs /dev/net/tun and NET_ADMIN")
    for argv in plan.commands():
        subprocess.run(argv, check=True, timeout=10)
    return subprocess.Popen([tayga, "--nodetach", "-c", conf], stdout=subprocess.DEVNULL)


def start_dns64(spec: Sequence[str]) -> subprocess.Popen[bytes]:
    """The lab's DNS64 resolver (:mod:`natkit.lab.dns64`) on ``spec[0]`` port 53, zone
    ``spec[1:]`` (``name=ipv4``); waits (bounded) for the line it prints once it listens."""
    import select

    proc = subprocess.Popen([sys.executable, "-m", "natkit.lab.dns64", "--listen", spec[0], *spec[1:]],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    # bounded, but generous: every container of the lab imports Python at once on a busy host
    ready, _, _ = select.select([proc.stdout], [], [], DNS64_START_S)
    if not ready:
        proc.kill()
        raise PrerequisiteError(f"the DNS64 resolver did not start on [{spec[0]}]:53 within {DNS64_START_S:g} s")
    if not proc.stdout.readline():
        raise PrerequisiteError(f"the DNS64 resolver exited at start (status {proc.wait(5)}) on [{spec[0]}]:53")
    return proc


def _connect_runner(address: str, name: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address (a NAT64 LAN's way to the runner)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.settimeout(None)
            sock.sendall((json.dumps({"agent": name}) + "\n").encode())
            return sock
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _accept_agents(address: str, names: Sequence[str]) -> dict[str, socket.socket]:
    host, _, port = address.rpartition(":")
    server = socket.create_server((host, int(port)), backlog=256)
    server.settimeout(1.0)
    agents: dict[str, socket.socket] = {}
    deadline = time.monotonic() + AGENT_WAIT_S
    with server:
        while set(names) - set(agents):
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(set(names) - set(agents)))
                raise PrerequisiteError(f"agents did not connect within {AGENT_WAIT_S:g} s: {missing}")
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            hello = b""
            with contextlib.suppress(OSError):
                while not hello.endswith(b"\n") and len(hello) < 1024:
                    chunk = conn.recv(1)
                    if not chunk:
                        break
                    hello += chunk
            conn.settimeout(None)
            try:
                agents[str(json.loads(hello)["agent"])] = conn
            except (ValueError, KeyError, TypeError):
                conn.close()
    return agents


class ContainerLab:
    """The runner container's view of the lab (a :class:`natkit.lab.engines.BuiltLab`): the
    agents that connected to it; no capture (the internet bridge belongs to the Docker host)."""

    engine = "compose"
    tag = "compose"
    capture: Capture | None = None

    def __init__(self, socks: dict[str, socket.socket]) -> None:
        self._socks = socks

    @property
    def agents(self) -> dict[str, socket.socket]:
        return dict(self._socks)

    def stop_agents(self) -> None:
        for s in self._socks.values():
            s.close()


def progress_event(kind: str, info: dict[str, Any]) -> dict[str, Any]:
    """A progress event (:data:`natkit.lab.orchestrate.Progress`) as JSON."""
    from natkit.lab.orchestrate import case_report

    if kind == "case":
        t = info["tally"]
        return {"kind": kind, "case": case_report(info["case"]), "done": info["done"], "total": info["total"],
                "tally": [t.connected, t.failed_as_expected, t.unexpected]}
    if kind == "probe":
        return {"kind": kind, "probe": info["probe"].to_json()}
    return {"kind": kind, "text": str(info.get("text", ""))}


def _emit(kind: str, info: dict[str, Any]) -> None:
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(progress_event(kind, info), default=str) + "\n")
    sys.stdout.flush()


def _run_lab(env: Mapping[str, str]) -> int:
    from dataclasses import replace

    from natkit.lab import report
    from natkit.lab.engines.compose import cases_from_json, compose_scope
    from natkit.lab.orchestrate import orchestrate
    from natkit.lab.output import write_atomic
    from natkit.lab.runner import finish
    from natkit.lab.topology import loads

    t0 = time.monotonic()
    # the part of the topology the Compose file holds, as the host scoped it
    topo = compose_scope(loads(env["NATKIT_TOPOLOGY"], env.get("NATKIT_TOPOLOGY_SOURCE", "topology")))[0].for_compose()
    if env.get("NATKIT_DEADLINE"):
        topo = replace(topo, case_deadline_s=float(env["NATKIT_DEADLINE"]))
    engine = env.get("NATKIT_TURN_ENGINE") or topo.servers.turn_engine
    if env.get("NATKIT_CASES_FILE"):
        try:
            cases = cases_from_json(json.loads(Path(env["NATKIT_CASES_FILE"]).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the run's cases: {exc}", where=env["NATKIT_CASES_FILE"]) from None
    else:
        cases = topo.cases()
    if env.get("NATKIT_PEERS"):
        # --peer commands: registered here as on the host (the agents learn them with each case)
        from natkit.lab.choose import peer_capabilities
        from natkit.lab.stacks import register
        from natkit.lab.stacks.command import CommandPeer

        peers = [CommandPeer.from_spec(str(spec)) for spec in json.loads(env["NATKIT_PEERS"])]
        caps = peer_capabilities([str(c) for c in json.loads(env.get("NATKIT_PEER_CAPS") or "[]")], [p.name for p in peers])
        for peer in peers:
            peer.capabilities = caps.get(peer.name, peer.capabilities)
            register(peer)
    plan = topo.plan(cases)
    parallel = int(env["NATKIT_PARALLEL"]) if env.get("NATKIT_PARALLEL") else None
    out = env.get("NATKIT_ORCH_OUT")
    names = env["NATKIT_AGENTS"].split()
    print(f"natkit lab (compose): waiting for {len(names)} agents", file=sys.stderr, flush=True)
    built = ContainerLab(_accept_agents(env["NATKIT_LISTEN"], names))
    build_s = time.monotonic() - t0
    progress = _emit if out else report.Progress(sys.stderr)
    if out:
        _emit("stage", {"text": f"{len(names)} agents connected after {build_s:.1f} s"})
    orch = asyncio.run(orchestrate(topo, plan, cases, built.agents, turn_engine=engine, parallel=parallel, progress=progress))
    if out:
        orch.timings["agents_s"] = build_s
        built.stop_agents()
        write_atomic(out, json.dumps(orch.to_json(), default=str))
        return 0
    result = finish(built, topo, plan, orch, turn_engine=engine, started=t0, progress=progress)
    result.timings = {"build_s": build_s, **result.timings}
    data = result.to_json()
    report.render(data, sys.stdout)
    sys.stdout.flush()
    if env.get("NATKIT_JSON"):
        Path(env["NATKIT_JSON"]).write_text(json.dumps(data, indent=2, default=str))
    return result.exit_code


def _sleep_until_stopped() -> None:
    """Block until Compose stops the container (SIGTERM) or Ctrl-C."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def node_main(env: Mapping[str, str] | None = None) -> int:
    """A container's life: network set-up, then its role (router, agent or runner)."""
    env = os.environ if env is None else env
    role = env.get("NATKIT_ROLE", "")
    setup_network(env)
    if role == "router":
        print(f"router {env.get('NATKIT_NAT', '')}: rules applied", flush=True)
        _sleep_until_stopped()
        return 0
    if role == "agent":
        import aiortc  # noqa: F401 - loaded before the first case, as the netns agents do

        from natkit.lab.agents import serve

        sock = _connect_runner(env["NATKIT_RUNNER"], env["NATKIT_AGENT"])
        asyncio.run(serve(sock))
        # Stay up: the runner must be the one container that exits (--exit-code-from runner
        # stops the whole project when any container exits).
        _sleep_until_stopped()
        return 0
    if role == "runner":
        return _run_lab(env)
    raise ConfigError(f"NATKIT_ROLE {role!r}: expected router, agent or runner", param="NATKIT_ROLE")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["node"]):
        print("usage: python -m natkit.lab.engines.container  (inside a lab container)", file=sys.stderr)
        return 2
    from natkit.errors import NatkitError

    try:
        return node_main()
    except NatkitError as exc:  # one line in the container's log, not a traceback
        print(f"natkit lab (compose): error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
