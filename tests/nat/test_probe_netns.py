"""natkit probe behind real Linux NATs (network namespaces + nftables), against coturn's and
natkit's RFC 5780 responders: every preset classified right, each in at most 1.5 s."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator

import pytest

from natkit.bench.probe import (
    EXPECTED,
    PRESETS,
    run_natkit_probe,
    start_server,
    start_server_in,
    stop,
)
from natkit.errors import PrerequisiteError, UsageError
from natkit.lab.nat import NatBehaviour
from natkit.lab.netns import NatTopology, NetnsLab, check_prerequisites

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

BUDGET_S = 1.5  # the target for a full classification on the lab


def _lab_or_skip() -> None:
    try:
        check_prerequisites()
    except (UsageError, PrerequisiteError) as exc:
        pytest.skip(f"netns lab unavailable: {exc}")


@pytest.fixture(scope="module", params=[*PRESETS, "full-cone+hairpin"])
def topo(request: pytest.FixtureRequest) -> Iterator[NatTopology]:
    _lab_or_skip()
    name = str(request.param)
    behaviour = (
        NatBehaviour.preset("full-cone", hairpinning=True)
        if name.endswith("+hairpin")
        else NatBehaviour.preset(name)
    )
    with NatTopology(behaviour) as t:
        yield t


@pytest.mark.parametrize("server", ["coturn", "natkit"])
def test_probe_classifies_each_nat(topo: NatTopology, server: str) -> None:
    if server == "coturn" and shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    b = topo.behaviour
    preset = b.name
    proc = start_server(topo, server)
    try:
        data, wall = run_natkit_probe(topo)
    finally:
        stop(proc)
    summary = (data["nat_type"], data["mapping"], data["filtering"])
    assert summary == EXPECTED[preset], data["notes"]
    assert data["_exit"] == 0
    assert data["duration_s"] <= BUDGET_S, f"{preset} vs {server}: {data['duration_s']} s"
    # Interpreter start-up on a busy CI machine is not the probe's time, but keep it bounded.
    assert wall <= BUDGET_S + 2.0
    assert data["servers"][0]["rfc5780"] is (preset != "udp-blocked")
    if preset == "udp-blocked":
        assert data["udp_blocked"] is True and data["hairpinning"] is None
        assert data["public"]["ip"] == topo.router_public_ip  # seen over TCP
        return
    if b.nat:
        assert data["public"]["ip"] == topo.router_public_ip
        assert data["hairpinning"] is b.hairpinning
        assert data["local"]["ip"] == topo.client_ip
    else:
        assert data["public"] == data["local"]
        assert data["public"]["ip"] == topo.client_ip
    assert data["alg"] is False


def test_binding_lifetime_bounded_search() -> None:
    """A NAT whose idle UDP bindings live 3 s: the search brackets it between checkpoints."""
    _lab_or_skip()
    server = "coturn" if shutil.which("turnserver") else "natkit"
    with NatTopology(NatBehaviour.preset("port-restricted", udp_timeout=3)) as t:
        proc = start_server(t, server)
        try:
            data, wall = run_natkit_probe(t, ["--lifetime", "--lifetime-max", "4"])
        finally:
            stop(proc)
    assert data["nat_type"] == "port-restricted-cone"
    assert data["lifetime_s"] == {"min": 2.0, "max": 4.0}
    assert wall < 4 + BUDGET_S + 2.0  # bounded by --lifetime-max, not by the NAT


def test_family_without_a_route_does_not_slow_the_probe() -> None:
    """Asked about IPv6 on an IPv4-only client: IPv6 is reported as unroutable at once."""
    _lab_or_skip()
    server = "coturn" if shutil.which("turnserver") else "natkit"
    with NatTopology(NatBehaviour.preset("port-restricted")) as t:
        proc = start_server(t, server)
        try:
            # The client namespace has no IPv6 route, so nothing is sent toward 2001:db8::10.
            data, _ = run_natkit_probe(t, ["--server", "[2001:db8::10]:3478", "--timeout", "3"])
        finally:
            stop(proc)
    assert data["nat_type"] == "port-restricted-cone" and data["family"] == "ipv4"
    assert set(data["families"]) == {"ipv4"}
    assert any("no IPv6 route" in e for e in data["errors"])
    assert data["duration_s"] <= BUDGET_S


@pytest.mark.parametrize("server", ["coturn", "natkit"])
def test_ipv6_rfc5780_without_nat(server: str) -> None:
    """IPv6 on its own: a server with two IPv6 addresses, a client on the same link, no NAT."""
    _lab_or_skip()
    if server == "coturn" and shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    ips = ("2001:db8:5::10", "2001:db8:5::11")
    with NetnsLab() as lab:
        srv_ns, cli_ns = lab.add_ns("s6"), lab.add_ns("c6")
        lab.add_veth(cli_ns, "eth0", srv_ns, "eth0")
        for ip in ips:
            lab.add_addr(srv_ns, "eth0", f"{ip}/64")
        lab.add_addr(cli_ns, "eth0", "2001:db8:5::2/64")
        proc = start_server_in(lab, srv_ns, server, ips)
        try:
            out = lab.run(
                cli_ns,
                [
                    sys.executable,
                    "-m",
                    "natkit",
                    "probe",
                    "--server",
                    f"stun:[{ips[0]}]:3478",
                    "--json",
                ],
                timeout=60,
            )
        finally:
            stop(proc)
    data = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert data["family"] == "ipv6" and set(data["families"]) == {"ipv6"}
    assert (data["nat_type"], data["mapping"], data["filtering"]) == (
        "open",
        "none",
        "endpoint-independent",
    )
    assert data["public"]["ip"] == "2001:db8:5::2" and data["public"] == data["local"]
    assert data["servers"][0]["rfc5780"] is True
    assert data["duration_s"] <= BUDGET_S


def test_bench_probe_reports_both_times_and_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    """`natkit bench probe` plumbing, on the preset where turnutils_natdiscovery is quick."""
    _lab_or_skip()
    if shutil.which("turnutils_natdiscovery") is None or shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    from natkit.cli import main

    assert main(["bench", "probe", "--nat", "open", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = data["rows"]
    assert row["nat"] == "open" and row["server"] == "coturn" and row["correct"] is True
    assert row["natkit_s"] > 0 and row["natdiscovery_s"] is not None
    assert "Endpoint Independent" in row["natdiscovery"]
    assert data["ratio"] == pytest.approx(row["natdiscovery_s"] / row["natkit_s"], abs=0.01)
    assert data["command"].startswith("natkit bench probe --nat open")
