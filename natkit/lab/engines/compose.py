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
  a dual-stack internet (``subnet6``) and the IPv6 LANs (ipv6-firewall, nptv6, nat64) have
  ``enable_ipv6`` with the netns engine's prefixes, and every endpoint there its plan address;
* one **router** container per NAT instance (``NAT-1``, ``NAT-2``), with ``NET_ADMIN`` and the
  sysctls and ruleset of its NAT kind's recipe (:func:`natkit.lab.nats.recipe`) with the netns
  engine's arguments (interfaces ``wan`` and ``lan``, renamed by address at start), written into
  the file (``NATKIT_NFT``) so anyone can read the rules a router runs; :func:`router_rulesets`
  gives them per router; NATs in a row (cgnat, double-nat) add a router per home NAT
  (``NAT-1h1``) on the outer router's inside segment (``lan-NAT-1``: the carrier's
  100.64.0.0/10) with its own LAN ``lan-NAT-1h1`` and peers; a NAT64 router also gets
  ``/dev/net/tun`` (tayga) and runs the DNS64 resolver on its LAN address;
* one **peer** container per peer (the lab's aiortc agent), its default route via its router;
* **servers**: the RFC 5780 STUN responder (two addresses), the TURN relay and the signaling
  server, as in the netns engine's server namespace;
* **runner**: waits for every agent to connect (peers through their NATs, over TCP to port
  443, which every lab firewall lets out) and runs
  the probes and the cases through the public orchestration API
  (:mod:`natkit.lab.engines.container` is every container's side).

Differences from the netns engine: the subnets (above); netem shapes only the containers'
egress (the bridge side of a link is the host's), i.e. half the added delay; run by hand, the
runner has no capture, so no packet evidence (``natkit lab run --engine compose`` captures on
the internet bridge from the host and has it). Every stack runs in the peer containers: the
browsers and libnice from a flavour of the image that has their Debian packages
(:func:`natkit.lab.engines.image.ensure_image`), made only for a run that names one of them;
the peers of a run with browser cases get a larger ``/dev/shm`` (:data:`BROWSER_SHM`), and a
browser's private files (the lab's names, Firefox's lab CA policy) are written in the
container's own filesystem (:func:`natkit.ice.browsers.process.own_filesystem`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from natkit import __version__
from natkit.errors import ConfigError
from natkit.lab import nats
from natkit.lab.dns64 import synthesize
from natkit.lab.engines.image import DOCKERFILE, PYTHON_BASE
from natkit.lab.topology import (
    FAMILIES,
    Case,
    InnerPlan,
    Link,
    PeerPlan,
    Plan,
    RouterPlan,
    Topology,
)

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
# Containers on an IPv6 network: IPv6 on, no router advertisements (addresses and routes are
# the plan's), and addresses kept when an interface is renamed (it goes down for that).
IPV6_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": "0",
    "net.ipv6.conf.default.disable_ipv6": "0",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.accept_ra": "0",
    "net.ipv6.conf.all.keep_addr_on_down": "1",
}
BROWSER_STACKS = ("chromium", "firefox")
BROWSER_SHM = "256m"  # a peer container's /dev/shm in a run with browser cases (Docker's default: 64m)
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
    return [{"nats": list(c.nats), "path": c.path, "same_lan": c.same_lan, "stacks": list(c.stacks), "family": c.family}
            for c in cases]


def cases_from_json(data: Any) -> list[Case]:
    """:func:`cases_to_json`'s list again (ValueError when it is not one)."""
    try:
        out = []
        for c in data:
            nats_, stacks = tuple(map(str, c["nats"])), tuple(map(str, c["stacks"]))
            if len(nats_) != 2 or len(stacks) != 2:
                raise ValueError("a case has two NATs and two stacks")
            family = str(c.get("family", "ipv4"))
            if family not in FAMILIES:
                raise ValueError(f"family {family!r}: expected one of {', '.join(FAMILIES)}")
            out.append(Case((nats_[0], nats_[1]), str(c["path"]), bool(c["same_lan"]), (stacks[0], stacks[1]), family))
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
    return nats.recipe(r.nat.behaviour, nats.RouterSide(LAN_IF, WAN_IF, r.public_ip, r.lan_net,
                                                        inside_net6=r.lan_net6, outside_net6=r.outside_net6))


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

    The containers carry the routers of every NAT kind: one router container per NAT with its
    nftables recipe (filtering, hairpinning, short mapping lifetimes, egress port firewalls,
    port-allocation patterns, IPv6 firewalls and prefix translation), NAT64 with tayga (its tun
    device passed in) and the DNS64 resolver in the router container, and for NATs in a row (a
    carrier NAT, a double NAT) a second router container per home NAT on the outer router's
    inside segment; a dual-stack internet is a Docker network with IPv6. Only paths the
    Compose engine does not know are left out."""
    paths = tuple(p for p in topo.paths if p in COMPOSE_PATHS)
    left = tuple((f"path {p}", "built by the netns engine only") for p in topo.paths if p not in COMPOSE_PATHS)
    servers = replace(topo.servers, turn_tls_port=None) if "relay-tls" not in paths else topo.servers
    return replace(topo, paths=paths, servers=servers), left


def in_scope(topo: Topology, cases: Sequence[Case]) -> list[Case]:
    """The ``cases`` the scoped ``topo`` (:func:`compose_scope`) can run."""
    names = {n.name for n in topo.nats}
    idle = {n.name for n in topo.nats if n.longevity}  # longevity cases come from the NATs, not lab.paths
    return [c for c in cases if set(c.nats) <= names
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
    # A browser's shared memory (Chromium's renderers, Firefox's content processes) outgrows
    # Docker's 64 MB /dev/shm with a few tabs: the peers of a run with browser cases get more.
    browsers = run is not None and any(st in BROWSER_STACKS for c in run.selected(topology) for st in c.stacks)
    peer_shm: dict[str, Any] = {"shm_size": BROWSER_SHM} if browsers else {}
    # Routers without NAT route a public LAN: everyone on the internet needs the way to it.
    open_routes = [f"{r.lan_net} via {r.public_ip}" for r in plan.routers if not r.nat.behaviour.nat]
    # IPv6 LANs (global, or the prefix NPTv6 translates to) are routed by their router: the
    # servers and the other IPv6 routers need the way to them (as in the netns engine).
    open_routes6 = [f"{r.outside_net6 or r.lan_net6} via {r.public_ip6}" for r in plan.routers
                    if r.public_ip6 is not None and r.lan_net6 is not None]

    def network(subnet: str, name: str, gateway: str | None = None, subnet6: str | None = None,
                gateway6: str | None = None) -> dict[str, Any]:
        ipam: dict[str, str] = {"subnet": subnet}
        if gateway:
            ipam["gateway"] = gateway
        net: dict[str, Any] = {"internal": True, "driver_opts": {"com.docker.network.bridge.name": bridges[name]},
                               "ipam": {"config": [ipam]}}
        if subnet6 is not None:  # dual stack: our own 2001:db8:: (or ULA) prefix, no host route (sealed)
            net["enable_ipv6"] = True
            net["ipam"]["config"].append({"subnet": subnet6, **({"gateway": gateway6} if gateway6 else {})})
        if run is not None:
            net["labels"] = {LABEL: run.tag, OWNER_LABEL: run.owner}
        return net

    def service(role: str, env: dict[str, str], networks: dict[str, Any], **extra: Any) -> dict[str, Any]:
        svc = {**common, **extra, "environment": {"NATKIT_ROLE": role, **env}, "command": COMMAND, "networks": networks}
        return svc

    net6 = plan.internet_net6 if s.stun_addresses6 is not None else None

    def unused6(ip4: str, dev: str, env: dict[str, str]) -> dict[str, Any]:
        """The internet endpoint of an IPv4-only container on a dual-stack internet: Docker
        would pick it an IPv6 address from the pool (the first free ones are the servers'),
        so it gets one of its own (its IPv4 host number) that it drops at start."""
        if net6 is None:
            return {"ipv4_address": ip4}
        host = int(ipaddress.IPv4Address(ip4)) - int(ipaddress.IPv4Network(topology.internet_net).network_address)
        env["NATKIT_FLUSH6"] = " ".join([*env.get("NATKIT_FLUSH6", "").split(), dev])
        return {"ipv4_address": ip4, "ipv6_address": str(ipaddress.IPv6Network(net6).network_address + host)}
    networks: dict[str, Any] = {"internet": network(topology.internet_net, "internet", subnet6=net6)}
    services: dict[str, Any] = {}

    extra_ips = list(dict.fromkeys([*s.stun_addresses, s.turn_address, s.signaling_address]))
    srv_net: dict[str, Any] = {"ipv4_address": extra_ips[0]}
    srv_addrs = [f"eth0={ip}/{prefix}" for ip in extra_ips[1:]]
    srv_extra: dict[str, Any] = {}
    if net6 is not None:  # STUN, TURN and signaling on both families
        assert s.stun_addresses6 is not None and s.turn_address6 is not None and s.signaling_address6 is not None
        extra6 = list(dict.fromkeys([*s.stun_addresses6, s.turn_address6, s.signaling_address6]))
        srv_net["ipv6_address"] = extra6[0]
        srv_addrs += [f"eth0={ip}/64" for ip in extra6[1:]]
        srv_extra["sysctls"] = dict(IPV6_SYSCTLS)
    services["servers"] = service(
        "agent",
        {
            "NATKIT_AGENT": "srv",
            "NATKIT_RUNNER": runner_at,
            "NATKIT_IFACES": f"eth0={extra_ips[0]}",
            "NATKIT_ADDRS": " ".join(srv_addrs),
            "NATKIT_ROUTES": "; ".join([*open_routes, *(open_routes6 if net6 else [])]),
            "NATKIT_NETEM": f"eth0={_netem(topology.internet_link)}" if topology.internet_link.shaped else "",
        },
        {"internet": srv_net},
        **srv_extra,
    )
    agents = ["srv"]
    for r in plan.routers:
        lan_net = ipaddress.IPv4Network(r.lan_net)
        net_name = f"lan-{r.id}"
        b = r.nat.behaviour
        six = r.public_ip6 is not None and r.lan_net6 is not None and r.lan_ip6 is not None
        # Docker's gateway on an IPv6 LAN: an address no plan uses (the router is ::1)
        gw6 = str(ipaddress.IPv6Network(r.lan_net6).network_address + 0xfffe) if six and r.lan_net6 else None
        networks[net_name] = network(r.lan_net, net_name, str(lan_net.broadcast_address - 1),
                                     r.lan_net6 if six else None, gw6)
        wan = r.nat.wan
        netem = [f"{WAN_IF}={_netem(wan)}"] if wan.shaped else []
        if r.nat.lan.shaped:
            netem.append(f"{LAN_IF}={_netem(r.nat.lan)}")
        recipe = _router_recipe(r)
        router_env = {
            "NATKIT_NAT": f"{r.nat.name} ({r.nat.type})",
            "NATKIT_IFACES": f"{WAN_IF}={r.public_ip} {LAN_IF}={r.lan_ip}",
            "NATKIT_ROUTES": "; ".join([*(x for x in open_routes if not x.endswith(f" {r.public_ip}")),
                                        *(x for x in open_routes6 if six and not x.endswith(f" {r.public_ip6}"))]),
            "NATKIT_NETEM": "; ".join(netem),
            "NATKIT_NFT": recipe.nft,
        }
        wan_net: dict[str, Any] = {"ipv4_address": r.public_ip} if six else unused6(r.public_ip, WAN_IF, router_env)
        lan_addr: dict[str, Any] = {"ipv4_address": r.lan_ip}
        router_extra: dict[str, Any] = {"sysctls": {**(IPV6_SYSCTLS if six else {}), **recipe.sysctls}}
        if six:
            wan_net["ipv6_address"] = r.public_ip6
            lan_addr["ipv6_address"] = r.lan_ip6
        if not b.ipv4:  # an IPv6-only LAN: Docker gives every endpoint an IPv4 address, which goes
            router_env["NATKIT_FLUSH4"] = LAN_IF
        if recipe.nat64 is not None:  # tayga needs a tun device; DNS64 answers on the LAN
            assert r.lan_ip6 is not None
            router_env["NATKIT_NAT64"] = json.dumps(asdict(recipe.nat64), sort_keys=True)
            router_env["NATKIT_DNS64"] = " ".join([r.lan_ip6, *(f"{n}={ip}" for n, ip in s.names().items())])
            router_extra["devices"] = ["/dev/net/tun:/dev/net/tun"]
        services[f"router-{r.id}"] = service(
            "router", router_env, {"internet": wan_net, net_name: lan_addr}, **router_extra,
        )
        def peers(on: tuple[PeerPlan, ...], lan: str, gateway: str, router: str, link: Link,
                  gateway6: str | None = None) -> None:
            for i, p in enumerate(on):
                agents.append(p.id)
                addr: dict[str, Any] = {}
                routes = []
                env = {"NATKIT_AGENT": p.id, "NATKIT_RUNNER": runner_at}
                if p.ip:
                    addr["ipv4_address"] = p.ip
                    routes.append(f"default via {gateway}")
                    env["NATKIT_IFACES"] = f"eth0={p.ip}"
                else:  # IPv6-only: the runner through NAT64, its IPv4 address under the NAT64 prefix
                    assert p.ip6 is not None
                    # Docker gives every endpoint IPv4: one of ours (never the router's), flushed at start
                    addr["ipv4_address"] = str(ipaddress.IPv4Interface(f"{gateway}/24").network.network_address + 10 + i)
                    env["NATKIT_IFACES"] = f"eth0={p.ip6}"
                    env["NATKIT_FLUSH4"] = "eth0"
                    env["NATKIT_RUNNER"] = f"[{synthesize(control)}]:{CONTROL_PORT}"
                extra_p: dict[str, Any] = {}
                if p.ip6 and gateway6:
                    addr["ipv6_address"] = p.ip6
                    routes.append(f"::/0 via {gateway6}")
                    extra_p["sysctls"] = dict(IPV6_SYSCTLS)
                services[f"peer-{p.id}"] = service(
                    "agent",
                    {
                        **env,
                        "NATKIT_ROUTES": "; ".join(routes),
                        "NATKIT_NETEM": f"eth0={_netem(link)}" if link.shaped else "",
                    },
                    {lan: addr},
                    depends_on=[router],
                    **extra_p,
                    **peer_shm,
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
            peers(r.peers, net_name, r.lan_ip, f"router-{r.id}", r.nat.lan, r.lan_ip6 if six else None)
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
    services["runner"] = service("runner", runner_env, {"internet": unused6(control, "eth0", runner_env)}, **extra)
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
