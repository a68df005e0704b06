"""The Compose engine's model: generated from the netns engine's topology (on the Compose
subnets), accepted by docker-compose, routers running the netns engine's very rulesets, and
the containers' side run as namespaces. (The Compose lab run under Docker:
tests/lab/engines/test_compose_lab.py.)"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from natkit.lab.engines import netns as netns_engine
from natkit.lab.engines.compose import (
    DOCKERFILE,
    compose_model,
    compose_scope,
    in_scope,
    render_compose,
    router_rulesets,
    to_yaml,
)
from natkit.lab.netns import NetnsLab
from natkit.lab.topology import load
from tests.lab.topologies import small_topology

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's docker-compose brings PyYAML to it
needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="Debian's docker-compose is not installed (apt-get install docker-compose)",
)


class _RecordingLab(NetnsLab):
    """NetnsLab whose system calls only record: what the netns engine would apply, per ns."""

    def __init__(self) -> None:
        super().__init__()
        self.rules: dict[str, str] = {}
        self.sysctls: dict[str, dict[str, str]] = {}

    def add_ns(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def add_bridge(self, *a: Any, **k: Any) -> None:
        pass

    add_veth = add_addr = add_route = impair = add_bridge

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.sysctls.setdefault(ns, {})[key] = value

    def apply_nft(self, ns: str, ruleset: str, *, check: bool = False) -> None:
        self.rules[ns] = ruleset


def _netns_engine(topo: Any) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Router id -> ruleset and sysctls, as natkit.lab.engines.netns.build applies them (the
    two-stage kinds' home routers, cgnat and double-nat, under their own ids)."""
    lab = _RecordingLab()
    nodes = netns_engine.build(lab, topo, topo.plan())
    rules = {rid: lab.rules[ns] for rid, ns in nodes.routers.items()}
    sysctls = {rid: lab.sysctls[ns] for rid, ns in nodes.routers.items()}
    return rules, sysctls


def _yaml_load(path: Path | None = None, text: str | None = None) -> Any:
    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))"
    data = path.read_text() if path is not None else text
    res = subprocess.run([SYSTEM_PYTHON, "-c", code], input=data, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"PyYAML not available to {SYSTEM_PYTHON}: {res.stderr.strip()[-200:]}")
    return json.loads(res.stdout)


def _unescape(value: Any) -> Any:
    """What Compose makes of a value: '$$' is a literal '$'."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    return value


def _compose_config(path: Path) -> dict[str, Any]:
    res = subprocess.run(
        ["docker-compose", "-f", str(path), "config"], capture_output=True, text=True, timeout=60,
        cwd=path.parent,
    )
    assert res.returncode == 0, res.stderr
    return _unescape(_yaml_load(text=res.stdout))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------


def test_cli_output_is_the_committed_compose_yaml() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "natkit", "lab", "compose"], capture_output=True, text=True,
        timeout=60, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == (ROOT / "compose.yaml").read_text(), (
        "compose.yaml differs from `natkit lab compose`: regenerate it with "
        "`natkit lab compose -o compose.yaml`"
    )


def test_generation_is_deterministic_and_matches_compose_yaml() -> None:
    topo = load()
    text = render_compose(topo)
    assert text == render_compose(load())
    assert text == (ROOT / "compose.yaml").read_text()


def test_router_rulesets_are_the_netns_engines() -> None:
    topo = compose_scope(load())[0]  # what the Compose engine builds
    # the netns engine's rules for the same topology on the Compose engine's subnets
    rules, sysctls = _netns_engine(topo.for_compose())
    assert router_rulesets(topo) == rules
    model = compose_model(topo)
    for rid, ruleset in rules.items():
        svc = model["services"][f"router-{rid}"]
        assert svc["environment"]["NATKIT_NFT"] == ruleset
        assert svc["sysctls"] == sysctls[rid]
    # and the NAT rules do differ between behaviours (the comparison is not vacuous)
    assert len(set(rules.values())) >= 5


@needs_compose
def test_docker_compose_accepts_it_and_reads_the_same_rules(tmp_path: Path) -> None:
    topo = compose_scope(load())[0]  # what the Compose engine builds
    path = tmp_path / "compose.yaml"
    path.write_text(render_compose(topo))
    cfg = _compose_config(path)
    rules, _ = _netns_engine(topo.for_compose())
    services = cfg["services"]
    # Compose's own reading of the file: every router carries the netns engine's ruleset.
    for rid, ruleset in rules.items():
        assert services[f"router-{rid}"]["environment"]["NATKIT_NFT"] == ruleset
        assert services[f"router-{rid}"]["cap_add"] == ["NET_ADMIN"]
    ctopo = topo.for_compose()
    plan = ctopo.plan()
    peers = [p for r in plan.routers for p in r.peers]
    assert set(services) == {
        "servers", "runner", *(f"router-{r.id}" for r in plan.routers), *(f"peer-{p.id}" for p in peers),
        *(f"router-{i.id}" for r in plan.routers for i in r.inner),
    }
    # Everything is built from the Dockerfile in configs/, nothing is pulled.
    for name, svc in services.items():
        assert svc["build"]["dockerfile"] == DOCKERFILE, name
        assert svc.get("pull_policy") == "build", name
    assert (ROOT / DOCKERFILE).is_file()
    froms = [ln for ln in (ROOT / DOCKERFILE).read_text().splitlines() if ln.startswith("FROM ")]
    assert froms == ["FROM ${BASE}"]
    assert all(svc["build"]["args"] == {"BASE": "python:3.11-slim-bookworm"} for svc in services.values())
    # Every network is internal (nothing reaches the host's outside), with the plan's subnets
    # (the Compose engine's: off the netns defaults, which may shadow a host route) and a
    # bridge name that the host-side firewall exception can name.
    nets = cfg["networks"]
    assert all(n.get("internal") is True for n in nets.values())
    assert nets["internet"]["ipam"]["config"][0]["subnet"] == ctopo.internet_net == "198.19.113.0/24"
    names = [n["driver_opts"]["com.docker.network.bridge.name"] for n in nets.values()]
    assert len(set(names)) == len(nets) and all(len(b) <= 15 and b.startswith("nklab-") for b in names)
    for r in plan.routers:
        lan = nets[f"lan-{r.id}"]["ipam"]["config"][0]
        assert lan["subnet"] == r.lan_net and lan["gateway"] != r.lan_ip
        router = services[f"router-{r.id}"]
        assert router["networks"]["internet"]["ipv4_address"] == r.public_ip
        assert router["networks"][f"lan-{r.id}"]["ipv4_address"] == r.lan_ip
        for p in r.peers:
            peer = services[f"peer-{p.id}"]
            home = next((i for i in r.inner if p in i.peers), None)  # behind NATs in a row
            lan_id, gw = (home.id, home.lan_ip) if home else (r.id, r.lan_ip)
            assert peer["networks"] == {f"lan-{lan_id}": {"ipv4_address": p.ip}}
            assert peer["environment"]["NATKIT_ROUTES"] == f"default via {gw}"
    # The runner waits for exactly the agents the plan has, and exits with the lab's code.
    env = services["runner"]["environment"]
    assert sorted(env["NATKIT_AGENTS"].split()) == sorted(["srv", *(p.id for p in peers)])
    assert env["NATKIT_TOPOLOGY"] == Path(topo.source).read_text()
    runner_ip = services["runner"]["networks"]["internet"]["ipv4_address"]
    assert ipaddress.IPv4Address(runner_ip) in ipaddress.IPv4Network(ctopo.internet_net)
    assert runner_ip not in {r.public_ip for r in plan.routers}


@needs_compose
def test_a_custom_topology_with_shaped_links(tmp_path: Path) -> None:
    toml = (ROOT / "configs/lab/default.toml").read_text()
    toml = toml.replace('engine = "natkit"', 'engine = "coturn"')
    toml = toml.replace('password = "natkit-lab"', 'password = "pa$$word {x} \\"q\\""')
    toml += '\n[[nat]]\nname = "lossy"\ntype = "full-cone"\nwan = { delay_ms = 20, loss_pct = 1.5 }\n'
    src = tmp_path / "lab.toml"
    src.write_text(toml)
    topo = load(src)
    path = tmp_path / "compose.yaml"
    path.write_text(render_compose(topo))
    cfg = _compose_config(path)
    services = cfg["services"]
    assert services["router-lossy-1"]["environment"]["NATKIT_NETEM"] == "wan=delay 20ms loss 1.5%"
    assert services["runner"]["environment"]["NATKIT_TURN_ENGINE"] == "coturn"
    # '$' survives Compose's interpolation: the runner reads the topology exactly as written
    assert services["runner"]["environment"]["NATKIT_TOPOLOGY"] == toml
    rules, _ = _netns_engine(compose_scope(topo)[0].for_compose())
    assert services["router-lossy-1"]["environment"]["NATKIT_NFT"] == rules["lossy-1"]


def test_yaml_writer_round_trips_awkward_strings() -> None:
    data = {
        "plain": "abc", "ip": "203.0.113.2", "colon": "a: b", "hash": "a #b", "yes": "yes",
        "num": "0123", "dollar": "x$y", "quote": 'say "hi"', "empty": "", "lead": " x",
        "multi": "line 1\n  line 2\n", "multi_nolf": "a\nb", "multi_lead": "  a\nb\n",
        "list": ["-m", "", "a b", {"k": "v", "k2": ["x"]}], "emptylist": [], "emptymap": {},
        "int": 7, "bool": True, "unicode": "≤ 60 s",
    }
    back = _unescape(_yaml_load(text=to_yaml(data)))
    assert back == data


# --------------------------------------------------------------------------------------------
# The containers' side, without Docker: every service of the generated model runs its command
# (python -m natkit.lab.engines.compose node, with its environment) in a namespace, every network is a
# bridge, interfaces are attached in an order unlike the model's (Docker's order is not ours).

needs_root = pytest.mark.skipif(
    not (shutil.which("nft") and shutil.which("ip")) or __import__("os").geteuid() != 0,
    reason="needs root, network namespaces and nftables",
)

_SMALL = small_topology("open", "symmetric", name="compose-small")


@needs_root
@pytest.mark.timeout(150)
def test_compose_services_run_the_lab_as_namespaces(tmp_path: Path) -> None:
    import os

    src = tmp_path / "small.toml"
    src.write_text(_SMALL)
    topo = load(src)
    model = compose_model(topo)
    out_json = tmp_path / "result.json"
    with NetnsLab() as lab:
        hub = lab.add_ns("hub")
        bridges: dict[str, str] = {}
        prefixes: dict[str, int] = {}
        for i, (name, net) in enumerate(model["networks"].items()):
            bridges[name] = f"b{i}"
            prefixes[name] = ipaddress.IPv4Network(net["ipam"]["config"][0]["subnet"]).prefixlen
            lab.add_bridge(hub, bridges[name])
        procs: dict[str, subprocess.Popen[Any]] = {}
        for k, (sname, svc) in enumerate(model["services"].items()):
            ns = lab.add_ns(f"s{k}")
            for j, (net, cfg) in enumerate(reversed(list(svc["networks"].items()))):
                lab.add_veth(ns, f"eth{j}", hub, f"v{k}x{j}", master=bridges[net])
                lab.add_addr(ns, f"eth{j}", f"{cfg['ipv4_address']}/{prefixes[net]}")
            for key, value in svc.get("sysctls", {}).items():
                lab.sysctl(ns, key, value)
            env = {**os.environ, **svc["environment"], "NATKIT_AGENT_WAIT_S": "40"}
            if sname == "runner":
                env["NATKIT_JSON"] = str(out_json)
            # the image's python is this test's interpreter
            argv = [sys.executable if a == "python" else a for a in svc["command"]]
            log = open(tmp_path / f"{sname}.log", "w")  # noqa: SIM115 - closed with the lab
            procs[sname] = lab.popen(
                ns, argv, env=env, cwd=ROOT, text=True, stderr=log,
                stdout=subprocess.PIPE if sname == "runner" else log,
            )
        runner_proc = procs["runner"]
        try:
            out, _ = runner_proc.communicate(timeout=120)
        finally:
            runner_proc.kill()
    logs = {p.stem: p.read_text()[-600:] for p in tmp_path.glob("*.log")}
    assert runner_proc.returncode == 0, (out[-2000:], {k: v for k, v in logs.items() if v})
    assert "PASS" in out and "matrix" in out
    result = json.loads(out_json.read_text())
    assert result["pass"] is True
    assert len(result["cases"]) == len(topo.cases()) == 9
    assert all(p["pass"] for p in result["probes"]) and len(result["probes"]) == 2
    observed = {(tuple(c["nats"]), c["path"]): c["observed"] for c in result["cases"]}
    assert observed[(("symmetric", "symmetric"), "srflx")] == "failed"
    assert observed[(("symmetric", "symmetric"), "relay")] == "connected"
    assert observed[(("open", "symmetric"), "srflx")] == "connected"


def test_a_runs_cases_travel_with_their_stacks(tmp_path: Path) -> None:
    from natkit.lab.engines.compose import RunOptions, cases_from_json, cases_to_json
    from natkit.lab.topology import Case

    topo = load()
    cases = [*topo.cases()[:3], Case(("full-cone", "symmetric"), "srflx", False, ("pion", "mine"))]
    assert cases_from_json(json.loads(json.dumps(cases_to_json(cases)))) == cases
    # the family travels too: an IPv6 case is not its IPv4 twin (the same NATs and path)
    six = [Case(("nat64", "open"), "relay", False, family="nat64"), Case(("nptv6", "nptv6"), "host", family="ipv6")]
    assert cases_from_json(json.loads(json.dumps(cases_to_json(six)))) == six
    with pytest.raises(ValueError):
        cases_from_json([{**cases_to_json(six)[0], "family": "ipx"}])
    with pytest.raises(ValueError):
        cases_from_json([{"nats": ["a"], "path": "host", "same_lan": False, "stacks": ["x", "y"]}])
    with pytest.raises(ValueError):
        cases_from_json({"cases": 1})
    run = RunOptions("nkabc123", "natkit-lab:x", str(tmp_path), "1 2", tuple(cases), peers=("mine=./p",),
                     mounts=(str(tmp_path),))
    model = compose_model(topo, run=run)
    runner = model["services"]["runner"]
    assert runner["environment"]["NATKIT_CASES_FILE"] == "/out/cases.json"
    assert json.loads(runner["environment"]["NATKIT_PEERS"]) == ["mine=./p"]
    mount = f"{tmp_path}:{tmp_path}:ro"
    assert runner["volumes"] == [f"{tmp_path}:/out", mount]
    peers = [s for name, s in model["services"].items() if name.startswith("peer-")]
    assert peers and all(s["volumes"] == [mount] for s in peers)
    assert not [s for name, s in model["services"].items() if name.startswith(("router-", "servers")) and "volumes" in s]
    # no browser among the stacks: Docker's /dev/shm; a browser case: more for every peer
    assert not [s for s in peers if "shm_size" in s]
    browser = RunOptions("nkabc123", "natkit-lab:x", str(tmp_path), "1 2",
                         (Case(("full-cone", "symmetric"), "srflx", False, ("firefox", "aiortc")),))
    services = compose_model(topo, run=browser)["services"]
    assert {s.get("shm_size") for name, s in services.items() if name.startswith("peer-")} == {"256m"}
    assert not [s for name, s in services.items() if not name.startswith("peer-") and "shm_size" in s]


def test_a_mount_must_exist_and_not_hide_the_image(tmp_path: Path) -> None:
    from natkit.errors import ConfigError
    from natkit.lab.engines.compose import check_mount

    assert check_mount(str(tmp_path)) == str(tmp_path)
    for bad in ("/", "/usr", "/usr/lib", "/etc", "/opt/natkit/venv", str(tmp_path / "missing")):
        with pytest.raises(ConfigError) as err:
            check_mount(bad)
        assert err.value.param == "mount" and "\n" not in str(err.value)


def test_the_compose_engine_builds_every_nat_kind() -> None:
    """Nothing of the default or the internet topology is left out any more: the IPv6 kinds
    and the dual-stack internet are Docker networks with IPv6."""
    scoped, left = compose_scope(load())
    assert left == ()  # the default topology runs whole under Compose
    assert scoped.paths == ("host", "srflx", "relay", "relay-tls") and scoped.servers.turn_tls_port == 443
    assert compose_scope(scoped) == (scoped, ())  # idempotent: the containers scope again
    full = load(ROOT / "configs/lab/internet.toml")
    internet, left6 = compose_scope(full)
    assert left6 == () and internet.nats == full.nats
    assert internet.internet_net6 == "2001:db8::/64" and internet.servers.turn_address6 == "2001:db8::4"
    ctopo = internet.for_compose()
    assert in_scope(ctopo, ctopo.cases()) == ctopo.cases()
    assert {c.family for c in ctopo.cases()} == {"ipv4", "ipv6", "nat64"}


def test_ipv6_kinds_get_dual_stack_networks_tayga_and_dns64() -> None:
    """The internet and the IPv6 LANs: internal Docker networks with our own IPv6 prefix (and
    an IPv4 subnet of the Compose scheme, which Docker always wants); the servers on both
    families; NAT64's router with the tun device, tayga's plan and the DNS64 zone; an IPv6-only
    peer whose IPv4 address goes and which reaches the runner through NAT64."""
    topo = compose_scope(load(ROOT / "configs/lab/internet.toml"))[0].for_compose()
    model = compose_model(topo, topology_text="")
    svc, nets = model["services"], model["networks"]
    inet = nets["internet"]
    assert inet["internal"] is True and inet["enable_ipv6"] is True
    assert [c["subnet"] for c in inet["ipam"]["config"]] == ["198.19.113.0/24", "2001:db8::/64"]
    for name, net in nets.items():
        assert net["internal"] is True
        for cfg in net["ipam"]["config"]:
            if ":" in cfg["subnet"]:
                assert net["enable_ipv6"] is True
                assert cfg["subnet"].startswith(("2001:db8:", "fd00:64:")), (name, cfg)
    srv = svc["servers"]
    assert srv["networks"]["internet"] == {"ipv4_address": "198.19.113.2", "ipv6_address": "2001:db8::2"}
    assert "eth0=2001:db8::4/64" in srv["environment"]["NATKIT_ADDRS"].split()
    assert srv["sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "0"
    # every IPv6 LAN is routed from the servers via its router (NPTv6: the translated prefix)
    routes = srv["environment"]["NATKIT_ROUTES"].split("; ")
    for rid in ("ipv6-firewall-1", "nptv6-1", "nat64-1"):
        r = svc[f"router-{rid}"]
        wan6 = r["networks"]["internet"]["ipv6_address"]
        assert any(x.endswith(f" via {wan6}") for x in routes), (rid, routes)
        assert r["sysctls"]["net.ipv6.conf.all.forwarding"] == "1"
        assert "ip6 " in r["environment"]["NATKIT_NFT"] or "table ip6" in r["environment"]["NATKIT_NFT"]
    assert any(x.startswith("2001:db8:2:") for x in routes)  # NPTv6's outside prefix
    nat64 = svc["router-nat64-1"]
    env = nat64["environment"]
    assert nat64["devices"] == ["/dev/net/tun:/dev/net/tun"]
    assert json.loads(env["NATKIT_NAT64"])["prefix"] == "2001:db8:64::/96" and env["NATKIT_FLUSH4"] == "lan"
    listen, *zone = env["NATKIT_DNS64"].split()
    assert listen == nat64["networks"]["lan-nat64-1"]["ipv6_address"]
    assert "turn.lab.natkit=198.19.113.4" in zone
    peer = svc["peer-nat64-1-p1"]
    penv = peer["environment"]
    assert penv["NATKIT_FLUSH4"] == "eth0" and penv["NATKIT_IFACES"].startswith("eth0=2001:db8:1:")
    assert penv["NATKIT_RUNNER"] == "[2001:db8:64::c613:7109]:443"  # 198.19.113.9 under the NAT64 prefix
    assert penv["NATKIT_ROUTES"] == f"::/0 via {listen}"
    lan4 = peer["networks"]["lan-nat64-1"]["ipv4_address"]
    assert lan4 != nat64["networks"]["lan-nat64-1"]["ipv4_address"]
    dual = svc["peer-nptv6-1-p1"]["environment"]
    assert dual["NATKIT_ROUTES"].startswith("default via 10.213.") and "; ::/0 via fd00:64:" in dual["NATKIT_ROUTES"]
    assert "NATKIT_FLUSH4" not in dual
    # IPv4-only containers on the dual-stack internet: an address of their own (never one Docker
    # picks from the pool, which could be a server's), dropped at start; their LANs IPv4-only
    plain = svc["router-symmetric-1"]
    wan = plain["networks"]["internet"]
    assert wan["ipv6_address"] == "2001:db8::" + format(int(wan["ipv4_address"].rsplit(".", 1)[1]), "x")
    assert plain["environment"]["NATKIT_FLUSH6"] == "wan" and "enable_ipv6" not in nets["lan-symmetric-1"]
    assert svc["runner"]["environment"]["NATKIT_FLUSH6"] == "eth0"
    six = [n["ipv6_address"] for v in svc.values() for n in v["networks"].values() if "ipv6_address" in n]
    assert len(six) == len(set(six))
    assert sum(1 for v in svc.values() if "internet" in v["networks"]) == sum(
        1 for v in svc.values() if "ipv6_address" in v["networks"].get("internet", {}))


def test_nats_in_a_row_get_a_router_container_per_home_nat() -> None:
    """A carrier NAT's subscribers: the home NAT is a router of its own on the carrier's
    100.64.0.0/10 segment, its peers on its own LAN behind it."""
    topo = compose_scope(load())[0].for_compose()
    model = compose_model(topo, topology_text="")
    svc, nets = model["services"], model["networks"]
    home = svc["router-cgnat-1h1"]
    assert home["environment"]["NATKIT_ROUTES"] == "default via 100.64.13.1"
    assert set(home["networks"]) == {"lan-cgnat-1", "lan-cgnat-1h1"}
    assert nets["lan-cgnat-1"]["ipam"]["config"][0]["subnet"] == "100.64.13.0/24"
    assert nets["lan-cgnat-1h1"]["internal"] is True
    peer = svc["peer-cgnat-1-p1"]
    assert set(peer["networks"]) == {"lan-cgnat-1h1"} and peer["depends_on"] == ["router-cgnat-1h1"]
    assert peer["environment"]["NATKIT_ROUTES"] == "default via 10.213.12.1"
    # two subscribers of one carrier NAT: two home routers on its one segment
    assert {"router-cgnat-pair-1h1", "router-cgnat-pair-1h2"} <= set(svc)
    assert "peer-cgnat-pair-1-p1" in svc and "peer-cgnat-pair-1-p2" in svc
    rules = router_rulesets(load())
    assert "masquerade" in rules["cgnat-1h1"] or "snat" in rules["cgnat-1h1"]


def test_longevity_cases_stay_in_scope() -> None:
    """A longevity case comes from a NAT's ``longevity = true``, not from ``lab.paths``."""
    scoped, _ = compose_scope(load())
    idle = [c for c in scoped.cases() if c.path == "longevity"]
    assert [c.nats for c in idle] == [("port-restricted", "port-restricted")]
    assert in_scope(scoped, idle) == idle
