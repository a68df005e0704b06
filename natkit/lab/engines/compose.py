"""The Compose engine: a topology as a Docker Compose project, and the containers' side of it.

:func:`render_compose` turns a :class:`~natkit.lab.topology.Topology` (the same file and the
same :class:`~natkit.lab.topology.Plan` of addresses the netns engine builds) into a Compose
file; ``natkit lab compose`` prints or writes it, and the top-level ``compose.yaml`` is its
output for ``configs/lab/default.toml``. What runs (``docker compose up --build
--exit-code-from runner``):

* one **network** per segment, all ``internal`` (nothing leaves the host): ``internet`` with
  the topology's subnet, and ``lan-<router>`` per router with its /24 (Docker's bridge takes the
  LAN's ``.254``, so ``.1`` stays the router's);
* one **router** container per NAT instance (``NAT-1``, ``NAT-2``), with ``NET_ADMIN`` and the
  sysctls and ruleset of its NAT kind's recipe (:func:`natkit.lab.nats.recipe`) with the netns
  engine's arguments (interfaces ``wan`` and ``lan``, renamed by address at start), written into
  the file (``NATKIT_NFT``) so anyone can read the rules a router runs; :func:`router_rulesets`
  gives them per router;
* one **peer** container per peer (the lab's aiortc agent), its default route via its router;
* **servers**: the RFC 5780 STUN responder (two addresses), the TURN relay and the signaling
  server, as in the netns engine's server namespace;
* **runner**: waits for every agent to connect (peers through their NATs, over TCP), runs the
  probes and the cases through the public orchestration API
  (:func:`natkit.lab.orchestrate.orchestrate`, then :func:`natkit.lab.runner.finish`), prints the
  same matrix and exits 0/1, which ``--exit-code-from runner`` makes the exit status of
  ``docker compose up``.

All containers use one image built from ``configs/docker/Dockerfile`` (a Debian-based Python
base image, nftables, iproute2, coturn, natkit from the build context): nothing but the base
image is pulled. The container side of every service is :func:`node_main`
(``python -m natkit.lab.engines.compose node``), configured by ``NATKIT_*`` environment
variables.

Differences from the netns engine: no packet capture (the internet bridge belongs to the
Docker host), so cases carry no packet evidence; netem shapes only the containers' egress (the
bridge side of a link is the host's), i.e. half the added delay of the netns engine; no browser
cases (Chromium is not in the image).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from natkit import __version__
from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab import nats
from natkit.lab.capture import Capture
from natkit.lab.topology import Link, Plan, RouterPlan, Topology

__all__ = [
    "CONTROL_PORT",
    "DOCKERFILE",
    "IMAGE",
    "ContainerLab",
    "compose_model",
    "node_main",
    "render_compose",
    "router_rulesets",
    "to_yaml",
    "write_compose",
]

IMAGE = f"natkit-lab:{__version__}"
DOCKERFILE = "configs/docker/Dockerfile"
CONTROL_PORT = 7700
# Containers start in any order: agents retry and the runner waits this long for them.
AGENT_WAIT_S = float(os.environ.get("NATKIT_AGENT_WAIT_S", "180"))
# The netns engine's router interfaces (natkit.lab.engines.netns.build): the same names here.
WAN_IF, LAN_IF = "wan", "lan"


# -- what the routers run -------------------------------------------------------------------------


def _router_recipe(r: RouterPlan) -> nats.RouterRecipe:
    return nats.recipe(r.nat.behaviour, nats.RouterSide(LAN_IF, WAN_IF, r.public_ip, r.lan_net))


def router_rulesets(topology: Topology, plan: Plan | None = None) -> dict[str, str]:
    """Router id -> the ``nft -f`` text its container applies (the netns engine's ruleset)."""
    plan = plan or topology.plan()
    return {r.id: _router_recipe(r).nft for r in plan.routers}


# -- the Compose model ----------------------------------------------------------------------------


def _netem(link: Link) -> str:
    parts = []
    if link.delay_ms:
        parts.append(f"delay {link.delay_ms:g}ms")
        if link.jitter_ms:
            parts.append(f"{link.jitter_ms:g}ms")
    if link.loss_pct:
        parts.append(f"loss {link.loss_pct:g}%")
    return " ".join(parts)


def _control_ip(topology: Topology, plan: Plan) -> str:
    """An internet address for the runner: below the routers' range, not a server's."""
    net = ipaddress.IPv4Network(topology.internet_net)
    s = topology.servers
    taken = {*s.stun_addresses, s.turn_address, s.signaling_address}
    taken |= {r.public_ip for r in plan.routers}
    for offset in range(9, 1, -1):
        ip = str(net.network_address + offset)
        if ip not in taken:
            return ip
    raise ConfigError(
        "key 'internet.subnet': no free address among .2-.9 for the Compose runner; move a server "
        "address out of that range", param="internet.subnet", where=topology.source,
    )


def _service(role: str, env: dict[str, str], networks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "build": {"context": ".", "dockerfile": DOCKERFILE},
        "image": IMAGE,
        "pull_policy": "build",
        "init": True,  # a real PID 1: signals reach natkit, coturn's children are reaped
        "cap_add": ["NET_ADMIN"],
    }
    svc.update(extra)
    svc["environment"] = {"NATKIT_ROLE": role, **env}
    svc["command"] = ["python", "-m", "natkit.lab.engines.compose", "node"]
    svc["networks"] = networks
    return svc


def compose_model(
    topology: Topology, *, turn_engine: str | None = None, topology_text: str | None = None
) -> dict[str, Any]:
    """The Compose file of ``topology`` as plain data (see the module docstring).

    ``topology_text`` is the TOML the runner container reads (default: the file
    ``topology.source``); it travels inside the Compose file, so any topology works.
    """
    engine = turn_engine or topology.servers.turn_engine
    if engine not in ("natkit", "coturn"):
        raise ConfigError(f"{engine}: choose natkit or coturn", param="turn_engine")
    if topology_text is None:
        try:
            topology_text = Path(topology.source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the topology file: {exc}", where=topology.source) from None
    plan = topology.plan()
    s = topology.servers
    prefix = ipaddress.IPv4Network(topology.internet_net).prefixlen
    control = _control_ip(topology, plan)
    runner_at = f"{control}:{CONTROL_PORT}"
    # Routers without NAT route a public LAN: everyone on the internet needs the way to it.
    open_routes = [f"{r.lan_net} via {r.public_ip}" for r in plan.routers if not r.nat.behaviour.nat]

    networks: dict[str, Any] = {
        "internet": {"internal": True, "ipam": {"config": [{"subnet": topology.internet_net}]}},
    }
    services: dict[str, Any] = {}

    extra_ips = list(dict.fromkeys([*s.stun_addresses, s.turn_address, s.signaling_address]))
    services["servers"] = _service(
        "agent",
        {
            "NATKIT_AGENT": "srv",
            "NATKIT_RUNNER": runner_at,
            "NATKIT_IFACES": f"eth0={extra_ips[0]}",
            "NATKIT_ADDRS": " ".join(f"eth0={ip}/{prefix}" for ip in extra_ips[1:]),
            "NATKIT_ROUTES": "; ".join(open_routes),
            "NATKIT_NETEM": f"eth0={_netem(topology.internet_link)}" if topology.internet_link.shaped else "",
        },
        {"internet": {"ipv4_address": extra_ips[0]}},
    )
    agents = ["srv"]
    for r in plan.routers:
        lan_net = ipaddress.IPv4Network(r.lan_net)
        net_name = f"lan-{r.id}"
        networks[net_name] = {
            "internal": True,
            "ipam": {"config": [{"subnet": r.lan_net, "gateway": str(lan_net.broadcast_address - 1)}]},
        }
        wan = r.nat.wan
        netem = [f"{WAN_IF}={_netem(wan)}"] if wan.shaped else []
        if r.nat.lan.shaped:
            netem.append(f"{LAN_IF}={_netem(r.nat.lan)}")
        recipe = _router_recipe(r)
        services[f"router-{r.id}"] = _service(
            "router",
            {
                "NATKIT_NAT": f"{r.nat.name} ({r.nat.type})",
                "NATKIT_IFACES": f"{WAN_IF}={r.public_ip} {LAN_IF}={r.lan_ip}",
                "NATKIT_ROUTES": "; ".join(x for x in open_routes if not x.endswith(f" {r.public_ip}")),
                "NATKIT_NETEM": "; ".join(netem),
                "NATKIT_NFT": recipe.nft,
            },
            {"internet": {"ipv4_address": r.public_ip}, net_name: {"ipv4_address": r.lan_ip}},
            sysctls=dict(recipe.sysctls),
        )
        for p in r.peers:
            agents.append(p.id)
            services[f"peer-{p.id}"] = _service(
                "agent",
                {
                    "NATKIT_AGENT": p.id,
                    "NATKIT_RUNNER": runner_at,
                    "NATKIT_IFACES": f"eth0={p.ip}",
                    "NATKIT_ROUTES": f"default via {r.lan_ip}",
                    "NATKIT_NETEM": f"eth0={_netem(r.nat.lan)}" if r.nat.lan.shaped else "",
                },
                {net_name: {"ipv4_address": p.ip}},
                depends_on=[f"router-{r.id}"],
            )
    services["runner"] = _service(
        "runner",
        {
            "NATKIT_LISTEN": runner_at,
            "NATKIT_AGENTS": " ".join(agents),
            "NATKIT_TURN_ENGINE": engine,
            "NATKIT_TOPOLOGY_SOURCE": _display_source(topology.source),
            "NATKIT_TOPOLOGY": topology_text,
            "NATKIT_IFACES": f"eth0={control}",
            "NATKIT_ROUTES": "; ".join(open_routes),
        },
        {"internet": {"ipv4_address": control}},
        depends_on=["servers"],
    )
    return {"services": services, "networks": networks}


def _display_source(source: str) -> str:
    """The topology's path relative to the repository when it lies inside it (stable output)."""
    root = Path(__file__).resolve().parents[3]
    with contextlib.suppress(ValueError):
        return str(Path(source).resolve().relative_to(root))
    return source


def render_compose(topology: Topology, *, turn_engine: str | None = None, topology_text: str | None = None) -> str:
    """The Compose file of ``topology`` as YAML text (deterministic: same input, same bytes)."""
    model = compose_model(topology, turn_engine=turn_engine, topology_text=topology_text)
    head = (
        "# natkit NAT lab under Docker Compose, generated by `natkit lab compose` from\n"
        f"# {_display_source(topology.source)}: do not edit; regenerate instead.\n"
        "#\n"
        "#   docker compose up --build --exit-code-from runner\n"
        "#\n"
        "# Routers apply the same nftables rules as the netns engine (NATKIT_NFT below); the\n"
        "# runner prints the matrix and exits 0 when every case and probe is as expected.\n"
        "# The netns engine (`natkit lab run`) is what CI runs; this file is generated and checked\n"
        "# with `docker-compose config` there, not run.\n"
    )
    return head + to_yaml(model)


def write_compose(topology: Topology, path: str | os.PathLike[str] | None, **kw: Any) -> str:
    """Render and write to ``path`` atomically (``None`` or ``-``: return only); the text."""
    text = render_compose(topology, **kw)
    if path is not None and str(path) != "-":
        from natkit.lab.output import write_atomic

        try:
            write_atomic(path, text)
        except OSError as exc:
            raise ConfigError(f"cannot write the Compose file: {exc.strerror or exc}", param="output", where=str(path)) from None
    return text


# -- a small YAML writer (block style; strings escaped for Compose's ${} interpolation) ----------

_PLAIN = re.compile(r"^[A-Za-z_/.][A-Za-z0-9_./:@=+-]*$")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value).replace("$", "$$")
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)


def _block(text: str, indent: str) -> str:
    text = text.replace("$", "$$")
    chomp = "-" if not text.endswith("\n") else ("+" if text.endswith("\n\n") else "")
    body = text[:-1] if text.endswith("\n") and not chomp else text
    lines = body.split("\n") if body else []
    return f"|{chomp}\n" + "".join(f"{indent}{line}\n" if line else "\n" for line in lines).rstrip(" ")


def to_yaml(value: Any, indent: str = "") -> str:
    """YAML for dicts, lists and scalars; multi-line strings as literal blocks."""
    out: list[str] = []
    if isinstance(value, Mapping):
        if not value:
            return indent + "{}\n"
        for k, v in value.items():
            key = _scalar(k)
            out.append(_item(f"{indent}{key}:", v, indent))
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return indent + "[]\n"
        for v in value:
            out.append(_item(f"{indent}-", v, indent, in_list=True))
    else:
        out.append(f"{indent}{_scalar(value)}\n")
    return "".join(out)


def _item(prefix: str, v: Any, indent: str, in_list: bool = False) -> str:
    inner = indent + "  "
    if isinstance(v, Mapping) and v:
        if in_list:  # "- key: value" with the rest of the mapping aligned under it
            text = to_yaml(v, inner)
            return f"{prefix} {text[len(inner):]}"
        return f"{prefix}\n{to_yaml(v, inner)}"
    if isinstance(v, Sequence) and not isinstance(v, str) and v:
        return f"{prefix}\n{to_yaml(v, inner)}"
    if isinstance(v, Mapping) or (isinstance(v, Sequence) and not isinstance(v, str)):
        return f"{prefix} {'{}' if isinstance(v, Mapping) else '[]'}\n"
    if isinstance(v, str) and "\n" in v and not v[:1].isspace() and "\r" not in v:
        return f"{prefix} {_block(v, inner)}"
    return f"{prefix} {_scalar(v)}\n"


# -- inside the containers: python -m natkit.lab.engines.compose node ----------------------------


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


def setup_network(env: Mapping[str, str]) -> None:
    """Name interfaces by the address they hold, add addresses and routes, shape, apply nft."""
    by_ip: dict[str, str] = {}
    for line in _ip("-o", "-4", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            by_ip[parts[parts.index("inet") + 1].split("/")[0]] = parts[1]
    deadline = time.monotonic() + 30
    for name, ip in _pairs(env.get("NATKIT_IFACES", "")):
        while ip not in by_ip and time.monotonic() < deadline:  # Docker attaches networks late
            time.sleep(0.2)
            by_ip = {
                ln.split()[ln.split().index("inet") + 1].split("/")[0]: ln.split()[1]
                for ln in _ip("-o", "-4", "addr", "show").splitlines() if "inet" in ln.split()
            }
        dev = by_ip.get(ip)
        if dev is None:
            raise PrerequisiteError(f"no interface holds {ip}: the container is not on the network it needs")
        if dev != name:
            _ip("link", "set", "dev", dev, "down")
            _ip("link", "set", "dev", dev, "name", name)
            _ip("link", "set", "dev", name, "up")
    for dev, cidr in _pairs(env.get("NATKIT_ADDRS", "")):
        _ip("addr", "add", cidr, "dev", dev)
    for route in (r.strip() for r in env.get("NATKIT_ROUTES", "").split(";")):
        if route:
            _ip("route", "replace", *route.split())
    for dev, spec in _pairs(env.get("NATKIT_NETEM", ""), ";"):
        if spec:
            subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split()],
                           check=True, timeout=20)
    rules = env.get("NATKIT_NFT")
    if rules:
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, timeout=20)


def _connect_runner(address: str, name: str) -> socket.socket:
    host, _, port = address.rpartition(":")
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
            while not hello.endswith(b"\n") and len(hello) < 1024:
                chunk = conn.recv(1)
                if not chunk:
                    break
                hello += chunk
            conn.settimeout(None)
            with contextlib.suppress(ValueError, AttributeError):
                agents[str(json.loads(hello)["agent"])] = conn
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


def _run_lab(env: Mapping[str, str]) -> int:
    from natkit.lab import report
    from natkit.lab.orchestrate import orchestrate
    from natkit.lab.runner import finish
    from natkit.lab.topology import loads

    t0 = time.monotonic()
    topo = loads(env["NATKIT_TOPOLOGY"], env.get("NATKIT_TOPOLOGY_SOURCE", "topology"))
    engine = env.get("NATKIT_TURN_ENGINE") or topo.servers.turn_engine
    cases = topo.cases()
    plan = topo.plan(cases)
    print(f"natkit lab (compose): waiting for {len(env['NATKIT_AGENTS'].split())} agents", flush=True)
    built = ContainerLab(_accept_agents(env["NATKIT_LISTEN"], env["NATKIT_AGENTS"].split()))
    build_s = time.monotonic() - t0
    progress = report.Progress(sys.stderr)
    orch = asyncio.run(orchestrate(topo, plan, cases, built.agents, turn_engine=engine, progress=progress))
    result = finish(built, topo, plan, orch, turn_engine=engine, started=t0, progress=progress)
    result.timings = {"build_s": build_s, **result.timings}
    data = result.to_json()
    report.render(data, sys.stdout)
    sys.stdout.flush()
    out = env.get("NATKIT_JSON")
    if out:
        Path(out).write_text(json.dumps(data, indent=2, default=str))
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
        # Nothing to run: the kernel routes and NATs.
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
    if args != ["node"]:
        print("usage: python -m natkit.lab.engines.compose node  (inside a lab container)", file=sys.stderr)
        return 2
    from natkit.errors import NatkitError

    try:
        return node_main()
    except NatkitError as exc:  # one line in the container's log, not a traceback
        print(f"natkit lab (compose): error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
