"""What the host uses, and the check that keeps the Compose lab's subnets off it (no Docker,
no packet sent: files and the kernel's tables are read)."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from natkit.errors import ConfigError
from natkit.lab.engines import hostnet
from natkit.lab.engines.hostnet import Use, check_overlap

ROOT = Path(__file__).resolve().parents[3]


def _use(net: str, what: str) -> Use:
    return Use(ipaddress.IPv4Network(net), what)


def test_a_clash_names_what_the_host_uses_and_the_key_to_change() -> None:
    uses = [_use("192.0.2.0/24", "the host's address 192.0.2.2/24 on eth0"),
            _use("203.0.113.80/32", "deb.debian.org (203.0.113.80, an apt source)")]
    with pytest.raises(ConfigError) as err:
        check_overlap([("198.19.113.0/24", "compose.internet_subnet"), ("203.0.113.0/24", "compose.lan_base")],
                      uses, where="lab.toml")
    text = str(err.value)
    assert text.startswith("lab.toml: key 'compose.lan_base': the lab's subnet 203.0.113.0/24 overlaps deb.debian.org")
    assert "set [compose] lan_base" in text and "\n" not in text
    check_overlap([("198.19.113.0/24", "compose.internet_subnet")], uses, where="lab.toml")  # no clash


def test_resolv_conf_and_hosts_are_read(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# c\nnameserver 10.255.255.53\nnameserver 127.0.0.53\nnameserver ::1\nsearch x\n")
    assert [str(u.net) for u in hostnet._resolv_conf(resolv)] == ["10.255.255.53/32"]
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n203.0.113.80 deb.debian.org pypi.org # registry\n::1 x\n")
    found = hostnet._etc_hosts(hosts)
    assert [(str(u.net), u.what.split()[0]) for u in found] == [("203.0.113.80/32", "deb.debian.org")]


def test_the_host_uses_its_own_addresses_and_routes() -> None:
    uses = hostnet._addresses_and_routes(())
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    mine = [ln.split()[3] for ln in out.splitlines() if ln.split()[1] != "lo"]
    for cidr in mine:
        assert any(ipaddress.IPv4Network(cidr, strict=False) == u.net for u in uses), (cidr, uses)
    assert not any(u.net.prefixlen == 0 for u in uses)  # the default route shadows nothing


def test_pip_sources_without_an_index_mean_pypi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "none.conf"))
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example:8443/simple")
    hosts = {h for h, _ in hostnet._pip_hosts()}
    assert "mirror.example" in hosts


def test_docker_networks_count_as_used() -> None:
    nets = [{"Name": "other", "IPAM": {"Config": [{"Subnet": "172.18.0.0/16"}]}}, {"Name": "host", "IPAM": {}}]
    assert [str(u.net) for u in hostnet._docker_networks(nets)] == ["172.18.0.0/16"]


def test_plain_addresses_are_not_resolved() -> None:
    uses = hostnet._resolve([("203.0.113.80", "an apt source (x)"), ("localhost", "y")])
    assert [str(u.net) for u in uses] == ["203.0.113.80/32"]


def test_lab_run_with_a_clashing_subnet_stops_with_one_line(tmp_path: Path) -> None:
    """The check the run makes before it creates anything: the host's own subnet as the lab's."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    cidrs = [ln.split()[3] for ln in out.splitlines() if ln.split()[1] != "lo"]
    if not cidrs:
        pytest.skip("this host has no IPv4 address but loopback")
    net = ipaddress.IPv4Network(cidrs[0], strict=False)
    net = net if net.prefixlen <= 24 else net.supernet(new_prefix=24)
    from natkit.lab.engines.compose_lab import _check_subnets
    from natkit.lab.topology import loads
    from tests.lab.topologies import small_topology

    toml = small_topology("open") + f'[compose]\ninternet_subnet = "{net}"\n'
    topo = loads(toml, str(tmp_path / "lab.toml"))
    with pytest.raises(ConfigError, match=r"key 'compose.internet_subnet': the lab's subnet .* overlaps the host's"):
        _check_subnets(topo.for_compose(), topo.for_compose().plan(), [])
