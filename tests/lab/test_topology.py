"""The topology file format: the default file, the address plan, and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from natkit.errors import UsageError
from natkit.lab.nats import Filtering, Mapping
from natkit.lab.topology import DEFAULT_TOPOLOGY, PATHS, load, parse

pytestmark = pytest.mark.timeout(30)

DEFAULT = tomllib.loads(DEFAULT_TOPOLOGY.read_text())


def test_default_topology_holds_every_behaviour_and_a_same_lan() -> None:
    topo = load()
    kinds = [n.type for n in topo.matrix_nats]
    assert kinds == ["open", "full-cone", "restricted-cone", "port-restricted", "symmetric", "udp-blocked",
                     "cgnat", "egress-443"]
    lan = [n for n in topo.nats if n.same_lan]
    assert [n.type for n in lan] == ["port-restricted", "cgnat"]
    assert all(n.peers == 2 and n.behaviour.hairpinning for n in lan)
    assert topo.servers.turn_tls_port == 443 and [n.name for n in topo.nats if n.longevity] == ["port-restricted"]
    sym = topo.nat("symmetric").behaviour
    assert sym.mapping == Mapping.ADDRESS_AND_PORT_DEPENDENT
    assert sym.filtering == Filtering.ADDRESS_AND_PORT_DEPENDENT
    assert topo.nat("udp-blocked").behaviour.block_udp
    assert topo.servers.turn_engine == "natkit"
    assert topo.servers.stun_addresses[0] != topo.servers.stun_addresses[1]


def test_cases_are_every_unordered_pair_plus_same_lan_times_four_paths_plus_longevity() -> None:
    topo = load()
    cases = topo.cases()
    assert len(cases) == (36 + 2) * 4 + 1
    pairs = {frozenset(c.nats) for c in cases if not c.same_lan}
    assert len(pairs) == 36
    assert {c.path for c in cases} == set(PATHS)
    assert len({c.id for c in cases}) == len(cases)


def test_internet_topology_runs_each_family_a_pair_shares() -> None:
    topo = load(Path(__file__).parents[2] / "configs" / "lab" / "internet.toml")
    fams = {(c.nats, c.family) for c in topo.cases(("host",))}
    assert (("ipv6-firewall", "nptv6"), "ipv4") in fams and (("ipv6-firewall", "nptv6"), "ipv6") in fams
    assert (("open", "nat64"), "nat64") in fams and (("open", "nat64"), "ipv4") not in fams
    assert (("nat64", "nat64"), "ipv6") in fams
    plan = topo.plan()
    nat64 = plan.router("nat64-1")
    assert nat64.peers[0].ip == "" and nat64.peers[0].ip6 and nat64.lan_net6
    npt = plan.router("nptv6-1")
    assert npt.lan_net6.startswith("fd00:") and npt.outside_net6.startswith("2001:db8:2:")
    cg = plan.router("cgnat-pair-1")
    assert cg.lan_net.startswith("100.64.") and len(cg.inner) == 2 and cg.inner[0].lan_net != cg.inner[1].lan_net


def test_plan_is_deterministic_and_gives_distinct_routers_for_a_nat_with_itself() -> None:
    topo = load()
    plan = topo.plan()
    assert plan == topo.plan()
    publics = [r.public_ip for r in plan.routers]
    lans = [r.lan_net for r in plan.routers]
    assert len(set(publics)) == len(publics) and len(set(lans)) == len(lans)
    for case in topo.cases():
        (ra, pa), (rb, pb) = plan.peers_of(case)
        assert pa.ip != pb.ip
        if case.same_lan:
            assert ra is rb
        else:
            assert ra.id != rb.id and ra.public_ip != rb.public_ip
    servers = {*topo.servers.stun_addresses, topo.servers.turn_address}
    assert not servers & set(publics)


def test_plan_builds_only_the_routers_the_cases_need() -> None:
    topo = load()
    cases = [c for c in topo.cases() if c.nats == ("full-cone", "symmetric")]
    assert sorted(r.id for r in topo.plan(cases).routers) == ["full-cone-1", "symmetric-1"]


def test_ice_servers_per_path() -> None:
    s = load().servers
    assert s.ice_servers("host") == []
    assert s.ice_servers("srflx") == [{"urls": ["stun:203.0.113.2:3478"]}]
    relay = s.ice_servers("relay")[0]
    assert relay["urls"] == ["turn:203.0.113.4:3478?transport=udp", "turn:203.0.113.4:3478?transport=tcp"]
    assert relay["username"] and relay["credential"]


def _with(**changes: object) -> dict:
    data = tomllib.loads(DEFAULT_TOPOLOGY.read_text())
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = data
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "key", "what"),
    [
        ({"nat__1__type": "cone"}, "nat[1].type", "unknown NAT type 'cone'"),
        ({"nat__1__hairpin": "yes"}, "nat[1].hairpin", "expected true or false"),
        ({"nat__2__udp_timeout_s": 5}, "nat[2].udp_timeout_s", "out of range"),
        ({"nat__0__colour": "red"}, "nat[0].colour", "unknown key"),
        ({"nat__3__name": "full-cone"}, "nat[3].name", "duplicate name"),
        ({"nat__3__name": "Bad Name"}, "nat[3].name", "not a valid name"),
        ({"nat__1__wan": {"loss_pct": 120}}, "nat[1].wan.loss_pct", "out of range"),
        ({"stun__addresses": ["203.0.113.2"]}, "stun.addresses", "exactly two"),
        ({"stun__addresses": ["203.0.113.2", "10.0.0.1"]}, "stun.addresses[1]", "not a host address of the internet subnet"),
        ({"turn__engine": "pion"}, "turn.engine", "unknown engine 'pion'"),
        ({"turn__transports": ["udp", "sctp"]}, "turn.transports", "udp, tcp"),
        ({"turn__address": "203.0.113.2"}, "turn.address", "already used by stun.addresses[0]"),
        ({"turn__port": 70000}, "turn.port", "not a port"),
        ({"internet__subnet": "10.64.0.0/24"}, "internet.subnet", "overlaps"),
        ({"internet__subnet": "not-a-net"}, "internet.subnet", "CIDR"),
        ({"signaling": _DELETE}, "signaling", "missing table"),
        ({"signaling__address": _DELETE}, "signaling.address", "missing"),
        ({"lab__case_deadline_s": 0.5}, "lab.case_deadline_s", "out of range"),
        ({"lab__parallel": True}, "lab.parallel", "got a boolean"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"compose": {"subnet": "10.0.0.0/24"}}, "compose.subnet", "unknown key"),
        ({"compose": {"internet_subnet": "198.19.0.0/25"}}, "compose.internet_subnet", "give a /24 or larger"),
        ({"compose": {"internet_subnet": "nope"}}, "compose.internet_subnet", "CIDR"),
        ({"compose": {"lan_base": "10.9.0.0/20"}}, "compose.lan_base", "give a /16 or larger"),
        ({"compose": {"internet_subnet": "10.213.5.0/24"}}, "compose.internet_subnet", "overlaps compose.lan_base"),
    ],
)
def test_errors_name_file_key_and_problem(changes: dict, key: str, what: str) -> None:
    with pytest.raises(UsageError) as err:
        parse(_with(**changes), "lab.toml")
    text = str(err.value)
    assert text.startswith(f"lab.toml: key '{key}': ")
    assert what in text
    assert "\n" not in text


def test_no_nat_is_an_error() -> None:
    data = _with()
    data["nat"] = []
    with pytest.raises(UsageError, match="key 'nat': give at least one"):
        parse(data, "x.toml")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[lab\nname = 1\n")
    with pytest.raises(UsageError, match=rf"^{bad}: invalid TOML: .*line 1"):
        load(bad)
    with pytest.raises(UsageError, match="no such topology file"):
        load(tmp_path / "missing.toml")


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "t.toml"
    bad.write_text(DEFAULT_TOPOLOGY.read_text().replace('type = "symmetric"', 'type = "symetric"'))
    proc = subprocess.run(
        [sys.executable, "-m", "natkit", "lab", "run", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0] and "nat[4].type" in lines[0] and "symetric" in lines[0]


# -- hostile files: one line naming the file (and key) and what to do, exit 2, no traceback ----


def _cli(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natkit", "lab", "run", str(path), "--stacks", "aiortc", "--no-capture"],
        capture_output=True, text=True, timeout=60,
    )


def _one_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_an_inline_array_nested_20000_deep(tmp_path: Path) -> None:
    f = tmp_path / "deep.toml"
    f.write_text("x = " + "[" * 20_000 + "]" * 20_000 + "\n")
    _one_line(_cli(f), str(f), "line 1", "nested more than 32 deep")
    g = tmp_path / "deep-tables.toml"  # inline tables, on a later line, inside a string-free key
    g.write_text(DEFAULT_TOPOLOGY.read_text() + "\n[extra]\ny = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    _one_line(_cli(g), str(g), "nested more than 32 deep")
    # brackets inside strings and comments do not count
    h = tmp_path / "strings.toml"
    h.write_text(DEFAULT_TOPOLOGY.read_text().replace('name = "default"', 'name = "' + "[[[[{{{{" * 7 + '"') + "# " + "[" * 100 + "\n")
    assert load(h).name.startswith("[[[[{{{{")


def test_a_huge_file_and_dev_zero_and_a_directory(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with big.open("w") as fh:
        fh.write(DEFAULT_TOPOLOGY.read_text())
        fh.write("# padding\n" * 120_000)  # 1.2 MB of comments: valid TOML, but too big
    _one_line(_cli(big), str(big), "at most 1 MiB")
    _one_line(_cli("/dev/zero"), "/dev/zero", "not a regular file")
    _one_line(_cli(tmp_path), str(tmp_path), "not a regular file")


def test_a_binary_file_and_nul_bytes(tmp_path: Path) -> None:
    b = tmp_path / "bin.toml"
    b.write_bytes(bytes(range(256)) * 64)
    _one_line(_cli(b), str(b), "not UTF-8 text", "binary")
    n = tmp_path / "nul.toml"
    n.write_text(DEFAULT_TOPOLOGY.read_text() + "\x00\n")
    _one_line(_cli(n), str(n), "NUL")


def test_a_5000_digit_integer(tmp_path: Path) -> None:
    f = tmp_path / "digits.toml"
    f.write_text(DEFAULT_TOPOLOGY.read_text().replace("parallel = 0", "parallel = " + "9" * 5000))
    _one_line(_cli(f), str(f), "more than 64 digits")
    # a big number that TOML can hold is still a clean out-of-range error, naming the key
    g = tmp_path / "big-int.toml"
    g.write_text(DEFAULT_TOPOLOGY.read_text().replace("parallel = 0", "parallel = 9223372036854775807"))
    _one_line(_cli(g), str(g), "lab.parallel", "out of range")


WRONG_VALUES: list[object] = [
    "text", 7, -1, 3.5, float("nan"), float("inf"), True, [], [1, "a"], {}, {"k": 1}, [[["x"]]],
    9223372036854775807, "\u0000", "x" * 5000,
]


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def test_wrong_types_anywhere_give_a_usage_error_and_nothing_else() -> None:
    """Every key of the default topology, replaced by each wrong value: parse() either accepts
    it or raises one UsageError naming the key; it never raises anything else."""
    checked = 0
    for path in _paths(DEFAULT):
        for value in WRONG_VALUES:
            data = tomllib.loads(DEFAULT_TOPOLOGY.read_text())
            node: object = data
            for k in path[:-1]:
                node = node[k]  # type: ignore[index]
            node[path[-1]] = value  # type: ignore[index]
            try:
                parse(data, "lab.toml")
            except UsageError as exc:
                text = str(exc)
                assert text.startswith("lab.toml: key '") and "\n" not in text and len(text) < 400, text
            checked += 1
    assert checked > 500


def test_unknown_keys_are_named_with_their_path() -> None:
    for changes, key in (
        ({"nat__0__wan": {"delay": 5}}, "nat[0].wan.delay"),
        ({"same_lan__0__peers": 3}, "same_lan[0].peers"),
        ({"turn__secret": "x"}, "turn.secret"),
        ({"lab__engine": "compose"}, "lab.engine"),
    ):
        with pytest.raises(UsageError, match=rf"key '{re.escape(key)}': unknown key; expected one of"):
            parse(_with(**changes), "lab.toml")


def test_ranges_the_kernel_cannot_use_are_refused() -> None:
    for subnet in ("224.0.0.0/24", "127.0.0.0/24", "169.254.0.0/24", "240.0.0.0/24", "0.0.0.0/24"):
        with pytest.raises(UsageError, match=r"internet\.subnet"):
            parse(_with(internet__subnet=subnet), "lab.toml")


def test_the_compose_engine_moves_the_lab_to_its_own_subnets() -> None:
    topo = load()
    # defaults the size of the netns ones, in ranges hosts rarely use
    assert (topo.compose_internet, topo.compose_lan_base) == ("198.19.113.0/24", "10.213.0.0/16")
    moved = topo.for_compose()
    assert moved.internet_net == "198.19.113.0/24" and moved.lan_base == "10.213.0.0/16"
    # every address keeps its offset; routers and LANs follow from the plan
    assert moved.servers.stun_addresses == ("198.19.113.2", "198.19.113.3")
    assert moved.servers.turn_address == moved.servers.signaling_address == "198.19.113.4"
    a, b = topo.plan(), moved.plan()
    assert [r.id for r in a.routers] == [r.id for r in b.routers]
    assert [r.public_ip.split(".")[-1] for r in a.routers] == [r.public_ip.split(".")[-1] for r in b.routers]
    assert b.routers[0].lan_net == "10.213.0.0/24" and b.routers[0].peers[0].ip == "10.213.0.10"
    assert moved.for_compose() == moved  # idempotent
    assert moved.cases() == topo.cases()  # the same cells


def test_compose_subnets_are_topology_keys() -> None:
    data = _with(compose={"internet_subnet": "172.31.250.0/23", "lan_base": "10.77.0.0/16"})
    moved = parse(data, "lab.toml").for_compose()
    assert moved.internet_net == "172.31.250.0/23"
    assert moved.servers.stun_addresses[0] == "172.31.250.2"
    # every home LAN moves (a carrier NAT's own segment stays in 100.64.0.0/10)
    homes = [r for r in moved.plan().routers if r.nat.behaviour.inner is None]
    assert homes and all(r.lan_net.startswith("10.77.") for r in homes), [r.lan_net for r in homes]
    # a larger netns subnet gets a default of its own size
    wide = parse(_with(internet__subnet="203.0.112.0/22"), "lab.toml")
    assert wide.compose_internet == "198.19.112.0/22"
