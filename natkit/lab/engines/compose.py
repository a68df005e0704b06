"""The Compose engine's model: a topology as a Docker Compose project.

:func:`compose_model` turns a :class:`~natkit.lab.topology.Topology` into a Compose file: the
netns engine's file, routers and NAT recipes, on the Compose engine's subnets
(:meth:`Topology.for_compose <natkit.lab.topology.Topology.for_compose>`: ``[compose]`` keys,
defaults that hosts rarely use, since Docker's bridges live on the host). Two uses:

* ``natkit lab compose`` prints or writes it (the top-level ``compose.yaml`` is its output
  for ``configs/lab/default.toml``), for people who drive Docker themselves:
  ``docker compose up --build --exit-code-from runner`` builds the image from the repository
  (base ``python:3.11-slim-bookworm`` unless ``--base``) and the runner prints the matrix;
* ``natkit lab run --engine compose`` (:mod:`natkit.lab.engines.compose_lab`) writes one per
  run (:class:`RunOptions`: its own tag in bridge names, project and labels; a prebuilt
  image; the runner's output directory) and drives it from the host.

What it holds:

* one **network** per segment, every one ``internal`` (Docker gives it no way out):
  ``internet`` with the topology's subnet, and ``lan-<router>`` per router with its /24
  (Docker's gateway address is the LAN's ``.254``, so ``.1`` stays the router's); each
  bridge has a name of ours (``nklab-i``, ``nklab-l<k>``, or the run's tag) so that the
  host-side exception for ``br_netfilter`` (:mod:`natkit.lab.engines.hostnet`) can name it;
* one **router** container per NAT instance (``NAT-1``, ``NAT-2``), with ``NET_ADMIN`` and the
  sysctls and ruleset of its NAT kind's recipe (:func:`natkit.lab.nats.recipe`) with the netns
  engine's arguments (interfaces ``wan`` and ``lan``, renamed by address at start), written into
  the file (``NATKIT_NFT``) so anyone can read the rules a router runs; :func:`router_rulesets`
  gives them per router; NATs in a row (cgnat, double-nat) add a router per home NAT
  (``NAT-1h1``) on the outer router's inside segment (``lan-NAT-1``: the carrier's
  100.64.0.0/10) with its own LAN ``lan-NAT-1h1`` and peers;
* one **peer** container per peer (the lab's aiortc agent), its default route via its router;
* **servers**: the RFC 5780 STUN responder (two addresses), the TURN relay and the signaling
  server, as in the netns engine's server namespace;
* **runner**: waits for every agent to connect (peers through their NATs, over TCP to port
  443, which every lab firewall lets out) and runs
  the probes and the cases through the public orchestration API
  (:mod:`natkit.lab.engines.container` is every container's side).

Differences from the netns engine: the subnets (above); netem shapes only the containers'
egress (the bridge side of a link is the host's), i.e. half the added delay; no browser cases
(Chromium is not in the image); run by hand, the runner has no capture, so no packet evidence
(``natkit lab run --engine compose`` captures on the internet bridge from the host and has it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from natkit import __version__
from natkit.errors import ConfigError
from natkit.lab import nats
from natkit.lab.engines.image import DOCKERFILE, PYTHON_BASE
from natkit.lab.topology import Case, InnerPlan, Link, PeerPlan, Plan, RouterPlan, Topology

__all__ = [
    "CASES_FILE",
    "COMPOSE_PATHS",
    "CONTROL_PORT",
    "DOCKERFILE",
    "IMAGE",
    "RunOptions",
    "bridge_names",
    "cases_from_json",
    "cases_to_json",
    "check_mount",
    "compose_model",
    "compose_scope",
    "in_scope",
    "render_compose",
    "router_rulesets",
    "to_yaml",
    "write_compose",
]

IMAGE = f"natkit-lab:{__version__}"
# The agents' control connections to the runner cross their NATs as TCP: on 443, the one port
# every lab firewall lets out (egress-443 passes only TCP to 80/443); the runner has an
# address of its own, so no lab server's 443 is taken.
CONTROL_PORT = 443
COMMAND = ["python", "-m", "natkit.lab.engines.container"]
# The netns engine's router interfaces (natkit.lab.engines.netns.build): the same names here.
WAN_IF, LAN_IF = "wan", "lan"
BRIDGE_PREFIX = "nklab"  # the bridges of a file run by hand; a run's own use its tag
PROGRESS_PREFIX = "natkit-progress "  # a progress event on the runner's stdout, for the host
LABEL = "org.natkit.lab"  # on every container and network of a run: its tag
OWNER_LABEL = "org.natkit.lab.owner"  # "<pid> <start>" of the natkit process that runs it


@dataclass(frozen=True)
class RunOptions:
    """What ``natkit lab run --engine compose`` puts into the file of one run."""

    tag: str  # nk + 6 hex: the project, the bridges' prefix, the labels
    image: str  # a tag that exists (built by natkit.lab.engines.image)
    out_dir: str  # host directory mounted at /out in the runner
    owner: str  # "<pid> <start>" of the process that runs it
    cases: tuple[Case, ...] | None = None  # the cases to run, any stacks (None: the topology's)
    deadline_s: float | None = None  # the topology's case deadline, overridden
    parallel: int | None = None  # cases expected to connect at once
    peers: tuple[str, ...] = ()  # --peer NAME=COMMAND: registered in the runner too
    mounts: tuple[str, ...] = ()  # host directories bind-mounted read-only, same path (--mount)
    peer_caps: tuple[str, ...] = ()  # --peer-caps NAME=LIST: what the peers declare

    def selected(self, topology: Topology) -> list[Case]:
        """The cases this run holds."""
        return topology.cases() if self.cases is None else list(self.cases)


CASES_FILE = "cases.json"  # in the run's directory (the runner's /out): the cases to run


def cases_to_json(cases: Sequence[Case]) -> list[dict[str, Any]]:
    return [{"nats": list(c.nats), "path": c.path, "same_lan": c.same_lan, "stacks": list(c.stacks)} for c in cases]


def cases_from_json(data: Any) -> list[Case]:
    """:func:`cases_to_json`'s list again (ValueError when it is not one)."""
    try:
        out = []
        for c in data:
            nats_, stacks = tuple(map(str, c["nats"])), tuple(map(str, c["stacks"]))
            if len(nats_) != 2 or len(stacks) != 2:
                raise ValueError("a case has two NATs and two stacks")
            out.append(Case((nats_[0], nats_[1]), str(c["path"]), bool(c["same_lan"]), (stacks[0], stacks[1])))
        return out
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a list of cases: {exc}") from None


# Where a --mount would hide what the image itself needs.
_SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt", "/opt/natkit",
                "/out", "/proc", "/run", "/sbin", "/sys", "/usr", "/var")


def check_mount(path: str) -> str:
    """A ``--mount`` value as the absolute directory or file to bind-mount at the same path;
    ConfigError(param="mount") when it does not exist or would hide the image's own files."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        raise ConfigError(f"{path}: no such file or directory on this host", param="mount")
    real = os.path.realpath(full)
    for p in {full, real}:
        if p in _SYSTEM_DIRS or p.startswith(("/usr/", "/opt/natkit/", "/proc/", "/sys/", "/dev/", "/etc/")):
            raise ConfigError(
                f"{path}: {p} would hide the lab image's own files; mount the directory that holds "
                "your peer (e.g. /srv/my-peer)", param="mount")
    if any(ch in full for ch in ":,\n"):
        raise ConfigError(f"{path}: a path with ':' or ',' cannot be bind-mounted by Compose", param="mount")
    return full


def bridge_names(plan: Plan, prefix: str = BRIDGE_PREFIX) -> dict[str, str]:
    """Network name -> the name of its bridge on the host (at most 15 characters)."""
    names = {"internet": f"{prefix}-i"}
    for k, r in enumerate(plan.routers):
        names[f"lan-{r.id}"] = f"{prefix}-l{k}"
        for i, inner in enumerate(r.inner):  # a home NAT's own LAN behind a carrier NAT
            names[f"lan-{inner.id}"] = f"{prefix}-l{k}h{i + 1}"
    return names


# -- what the routers run -------------------------------------------------------------------------


def _router_recipe(r: RouterPlan) -> nats.RouterRecipe:
    return nats.recipe(r.nat.behaviour, nats.RouterSide(LAN_IF, WAN_IF, r.public_ip, r.lan_net))


def _inner_recipe(r: RouterPlan, inner: InnerPlan) -> nats.RouterRecipe:
    """The home NAT behind carrier NAT ``r``: its WAN on ``r``'s inside segment."""
    assert r.nat.behaviour.inner is not None
    return nats.recipe(r.nat.behaviour.inner, nats.RouterSide(LAN_IF, WAN_IF, inner.wan_ip, inner.lan_net))


def router_rulesets(topology: Topology, plan: Plan | None = None) -> dict[str, str]:
    """Router id -> the ``nft -f`` text its container applies (the netns engine's ruleset on
    the Compose engine's subnets); a home NAT behind a carrier NAT under its own id."""
    topology = compose_scope(topology)[0].for_compose()
    plan = plan or topology.plan()
    out = {}
    for r in plan.routers:
        out[r.id] = _router_recipe(r).nft
        out.update((inner.id, _inner_recipe(r, inner).nft) for inner in r.inner)
    return out


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


def control_ip(topology: Topology, plan: Plan) -> str:
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


def _services_base(run: RunOptions | None, base: str) -> dict[str, Any]:
    common: dict[str, Any] = {}
    if run is None:
        common["build"] = {"context": ".", "dockerfile": DOCKERFILE, "args": {"BASE": base}}
        common["image"] = IMAGE
        common["pull_policy"] = "build"
    else:
        common["image"] = run.image
        common["labels"] = {LABEL: run.tag, OWNER_LABEL: run.owner}
    common["init"] = True  # a real PID 1: signals reach natkit, coturn's children are reaped
    common["cap_add"] = ["NET_ADMIN"]
    return common


COMPOSE_PATHS = ("host", "srflx", "relay", "relay-tls", "longevity")


def compose_scope(topo: Topology) -> tuple[Topology, tuple[tuple[str, str], ...]]:
    """The part of ``topo`` the Compose engine builds, and what it leaves out, each with why.

    The containers carry the routers of every IPv4 NAT kind: one router container per NAT with
    its nftables recipe (filtering, hairpinning, short mapping lifetimes, egress port firewalls,
    port-allocation patterns), and for NATs in a row (a carrier NAT, a double NAT) a second
    router container per home NAT on the outer router's inside segment; IPv6 and NAT64 are
    built by the netns engine only for now."""
    kept, left = [], []
    for n in topo.nats:
        b = n.behaviour
        why = "IPv6 / NAT64 (IPv6 Docker networks)" if b.ipv6 is not None or not b.ipv4 or b.nat64 else None
        if why is None:
            kept.append(n)
        else:
            left.append((f"NAT {n.name} ({n.type})", f"{why} is built by the netns engine only"))
    paths = tuple(p for p in topo.paths if p in COMPOSE_PATHS)
    left += [(f"path {p}", "built by the netns engine only") for p in topo.paths if p not in COMPOSE_PATHS]
    servers = replace(topo.servers, turn_tls_port=None) if "relay-tls" not in paths else topo.servers
    net6 = topo.internet_net6
    if net6 is not None:  # the servers listen on IPv4 only: the lab's networks are IPv4-only
        left.append((f"the internet's IPv6 ({net6}, the ipv6 cases)", "IPv6 Docker networks are built by the netns engine only"))
        servers = replace(servers, stun_addresses6=None, turn_address6=None, signaling_address6=None)
    scoped = replace(topo, nats=tuple(kept), paths=paths, servers=servers, internet_net6=None)
    return scoped, tuple(left)


def in_scope(topo: Topology, cases: Sequence[Case]) -> list[Case]:
    """The ``cases`` the scoped ``topo`` (:func:`compose_scope`) can run."""
    names = {n.name for n in topo.nats}
    idle = {n.name for n in topo.nats if n.longevity}  # longevity cases come from the NATs, not lab.paths
    return [c for c in cases if set(c.nats) <= names and c.family == "ipv4"
            and (c.path in topo.paths or (c.path == "longevity" and set(c.nats) <= idle))]


def compose_model(
    topology: Topology, *, turn_engine: str | None = None, topology_text: str | None = None,
    base: str = PYTHON_BASE, run: RunOptions | None = None,
) -> dict[str, Any]:
    """The Compose file of ``topology`` as plain data (see the module docstring).

    ``topology_text`` is the TOML the runner container reads (default: the file
    ``topology.source``); it travels inside the Compose file, so any topology works. ``base``:
    the image the Dockerfile builds on; ``run``: the file of one ``natkit lab run``.
    """
    engine = turn_engine or topology.servers.turn_engine
    if engine not in ("natkit", "coturn"):
        raise ConfigError(f"{engine}: choose natkit or coturn", param="turn_engine")
    if topology_text is None:
        try:
            topology_text = Path(topology.source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the topology file: {exc}", where=topology.source) from None
    source = topology.source
    topology = compose_scope(topology)[0].for_compose()
    plan = topology.plan(run.selected(topology) if run is not None else None)
    s = topology.servers
    prefix = ipaddress.IPv4Network(topology.internet_net).prefixlen
    control = control_ip(topology, plan)
    runner_at = f"{control}:{CONTROL_PORT}"
    bridges = bridge_names(plan, run.tag if run else BRIDGE_PREFIX)
    common = _services_base(run, base)
    # --mount: the user's peer programs, read-only at the same path (runner and peers)
    mounts = [f"{m}:{m}:ro" for m in run.mounts] if run is not None else []
    # Routers without NAT route a public LAN: everyone on the internet needs the way to it.
    open_routes = [f"{r.lan_net} via {r.public_ip}" for r in plan.routers if not r.nat.behaviour.nat]

    def network(subnet: str, name: str, gateway: str | None = None) -> dict[str, Any]:
        ipam: dict[str, str] = {"subnet": subnet}
        if gateway:
            ipam["gateway"] = gateway
        net: dict[str, Any] = {"internal": True, "driver_opts": {"com.docker.network.bridge.name": bridges[name]},
                               "ipam": {"config": [ipam]}}
        if run is not None:
            net["labels"] = {LABEL: run.tag, OWNER_LABEL: run.owner}
        return net

    def service(role: str, env: dict[str, str], networks: dict[str, Any], **extra: Any) -> dict[str, Any]:
        svc = {**common, **extra, "environment": {"NATKIT_ROLE": role, **env}, "command": COMMAND, "networks": networks}
        return svc

    networks: dict[str, Any] = {"internet": network(topology.internet_net, "internet")}
    services: dict[str, Any] = {}

    extra_ips = list(dict.fromkeys([*s.stun_addresses, s.turn_address, s.signaling_address]))
    services["servers"] = service(
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
        networks[net_name] = network(r.lan_net, net_name, str(lan_net.broadcast_address - 1))
        wan = r.nat.wan
        netem = [f"{WAN_IF}={_netem(wan)}"] if wan.shaped else []
        if r.nat.lan.shaped:
            netem.append(f"{LAN_IF}={_netem(r.nat.lan)}")
        recipe = _router_recipe(r)
        services[f"router-{r.id}"] = service(
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
        def peers(on: tuple[PeerPlan, ...], lan: str, gateway: str, router: str, link: Link) -> None:
            for p in on:
                agents.append(p.id)
                services[f"peer-{p.id}"] = service(
                    "agent",
                    {
                        "NATKIT_AGENT": p.id,
                        "NATKIT_RUNNER": runner_at,
                        "NATKIT_IFACES": f"eth0={p.ip}",
                        "NATKIT_ROUTES": f"default via {gateway}",
                        "NATKIT_NETEM": f"eth0={_netem(link)}" if link.shaped else "",
                    },
                    {lan: {"ipv4_address": p.ip}},
                    depends_on=[router],
                    **({"volumes": mounts} if mounts else {}),
                )

        # NATs in a row: each home NAT is a router of its own on the outer router's inside
        # segment (a carrier's 100.64.0.0/10), its default route via the outer router.
        for inner in r.inner:
            inner_net = f"lan-{inner.id}"
            networks[inner_net] = network(inner.lan_net, inner_net,
                                          str(ipaddress.IPv4Network(inner.lan_net).broadcast_address - 1))
            irecipe = _inner_recipe(r, inner)
            services[f"router-{inner.id}"] = service(
                "router",
                {
                    "NATKIT_NAT": f"{r.nat.name} ({r.nat.type}), the NAT behind {r.id}",
                    "NATKIT_IFACES": f"{WAN_IF}={inner.wan_ip} {LAN_IF}={inner.lan_ip}",
                    "NATKIT_ROUTES": f"default via {r.lan_ip}",
                    "NATKIT_NETEM": "",
                    "NATKIT_NFT": irecipe.nft,
                },
                {net_name: {"ipv4_address": inner.wan_ip}, inner_net: {"ipv4_address": inner.lan_ip}},
                sysctls=dict(irecipe.sysctls),
                depends_on=[f"router-{r.id}"],
            )
            peers(inner.peers, inner_net, inner.lan_ip, f"router-{inner.id}", r.nat.lan)
        if not r.inner:  # behind NATs in a row the peers are the home NATs' (r.peers lists them too)
            peers(r.peers, net_name, r.lan_ip, f"router-{r.id}", r.nat.lan)
    runner_env = {
        "NATKIT_LISTEN": runner_at,
        "NATKIT_AGENTS": " ".join(agents),
        "NATKIT_TURN_ENGINE": engine,
        "NATKIT_TOPOLOGY_SOURCE": _display_source(source),
        "NATKIT_TOPOLOGY": topology_text,
        "NATKIT_IFACES": f"eth0={control}",
        "NATKIT_ROUTES": "; ".join(open_routes),
    }
    extra: dict[str, Any] = {"depends_on": ["servers"]}
    if run is not None:
        runner_env["NATKIT_ORCH_OUT"] = "/out/orchestration.json"
        if run.cases is not None:
            runner_env["NATKIT_CASES_FILE"] = f"/out/{CASES_FILE}"
        if run.peers:
            runner_env["NATKIT_PEERS"] = json.dumps(list(run.peers))
        if run.peer_caps:
            runner_env["NATKIT_PEER_CAPS"] = json.dumps(list(run.peer_caps))
        if run.deadline_s is not None:
            runner_env["NATKIT_DEADLINE"] = f"{run.deadline_s:g}"
        if run.parallel:
            runner_env["NATKIT_PARALLEL"] = str(run.parallel)
        extra["volumes"] = [f"{run.out_dir}:/out", *mounts]
    services["runner"] = service("runner", runner_env, {"internet": {"ipv4_address": control}}, **extra)
    return {"services": services, "networks": networks}


def _display_source(source: str) -> str:
    """The topology's path relative to the repository when it lies inside it (stable output)."""
    root = Path(__file__).resolve().parents[3]
    with contextlib.suppress(ValueError):
        return str(Path(source).resolve().relative_to(root))
    return source


def render_compose(
    topology: Topology, *, turn_engine: str | None = None, topology_text: str | None = None,
    base: str = PYTHON_BASE, run: RunOptions | None = None,
) -> str:
    """The Compose file of ``topology`` as YAML text (deterministic: same input, same bytes)."""
    model = compose_model(topology, turn_engine=turn_engine, topology_text=topology_text, base=base, run=run)
    bridges = " ".join(n["driver_opts"]["com.docker.network.bridge.name"] for n in model["networks"].values())
    head = (
        "# natkit NAT lab under Docker Compose, generated by `natkit lab compose` from\n"
        f"# {_display_source(topology.source)}: do not edit; regenerate instead.\n"
        "#\n"
        "#   docker compose up --build --exit-code-from runner     (or docker-compose ...)\n"
        "#   docker compose down\n"
        "#\n"
        "# Routers apply the same nftables rules as the netns engine (NATKIT_NFT below); the\n"
        "# runner prints the matrix and exits 0 when every case and probe is as expected. Every\n"
        "# network is internal. Where br_netfilter is loaded (dockerd loads it), Docker's isolation\n"
        "# rules drop the frames between a peer and its router: allow this lab's bridges first and\n"
        "# remove the rules afterwards (natkit lab run --engine compose does all of this itself):\n"
        f"#   for b in {bridges}; do iptables -I DOCKER-USER -i $b -o $b -j ACCEPT; done\n"
        f"#   for b in {bridges}; do iptables -D DOCKER-USER -i $b -o $b -j ACCEPT; done\n"
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
