"""End to end: every NAT preset, built in namespaces, maps and filters as it claims to.

Plain UDP/TCP sockets made inside the namespaces (tests/lab/nat_check.py) measure the mapped
address toward (ip1,p1), (ip1,p2), (ip2,p1), which unsolicited senders reach a fresh mapping,
hairpinning, TCP through a UDP-blocking firewall, mapping expiry; and the cleanup of what runs
leave behind (exception, crash, kill -9, SIGTERM).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natkit.errors import PrerequisiteError, UsageError
from natkit.lab.nats import Filtering, Mapping, NatBehaviour
from natkit.lab.netns import (
    STATE_DIR,
    NatTopology,
    NetnsLab,
    check_prerequisites,
    cleanup_leftovers,
    has_netem,
    owner_alive,
    process_start,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0, reason="needs root on Linux (namespaces)"
    ),
]

_HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("nat_check", _HERE / "nat_check.py")
assert _spec is not None and _spec.loader is not None
nc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nc)

EIM, ADM, APDM = (m.value for m in Mapping)
EIF, ADF, APDF = (f.value for f in Filtering)

EXPECTED = {
    "open": ("none", EIF),
    "full-cone": (EIM, EIF),
    "restricted-cone": (EIM, ADF),
    "port-restricted": (EIM, APDF),
    "symmetric": (APDM, APDF),
}


def _namespaces(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(tag)]


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_maps_and_filters_as_named(preset: str) -> None:
    with NatTopology(preset) as topo, nc.servers(topo) as socks:
        mapping = nc.measure_mapping(topo, socks)
        filtering = nc.measure_filtering(topo, socks)
        tcp_source = nc.tcp_works(topo)
    assert (mapping["mapping"], filtering["filtering"]) == EXPECTED[preset], (mapping, filtering)
    public = topo.client_ip if preset == "open" else topo.router_public_ip
    assert all(addr[0] == public for addr in mapping["mapped"].values())
    assert tcp_source == public


def test_udp_blocked_passes_tcp_only() -> None:
    with NatTopology("udp-blocked") as topo, nc.servers(topo) as socks:
        c = nc.client(topo)
        try:
            assert nc.mapped_address(c, socks["11"]) is None
        finally:
            c.close()
        assert nc.tcp_works(topo) == topo.router_public_ip


@pytest.mark.parametrize(
    ("mapping", "filtering", "random_ports"),
    [
        (Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT, False),
        (Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ENDPOINT_INDEPENDENT, False),
    ],
)
def test_custom_behaviours(mapping: Mapping, filtering: Filtering, random_ports: bool) -> None:
    behaviour = NatBehaviour("custom", mapping, filtering, random_ports=random_ports)
    with NatTopology(behaviour) as topo, nc.servers(topo) as socks:
        assert nc.measure_mapping(topo, socks)["mapping"] == mapping.value
        assert nc.measure_filtering(topo, socks)["filtering"] == filtering.value


@pytest.mark.parametrize(
    ("preset", "hairpinning"),
    [
        ("full-cone", True),
        ("port-restricted", True),
        ("symmetric", True),
        ("port-restricted", False),
        ("restricted-cone", False),
    ],
)
def test_hairpinning(preset: str, hairpinning: bool) -> None:
    behaviour = NatBehaviour.preset(preset, hairpinning=hairpinning)
    with NatTopology(behaviour, clients=2) as topo, nc.servers(topo) as socks:
        got = nc.measure_hairpin(topo, socks)
    assert got == {"self": hairpinning, "peer": hairpinning}


def test_mapping_expires_after_udp_timeout() -> None:
    behaviour = NatBehaviour.preset("full-cone", udp_timeout=2)
    with NatTopology(behaviour) as topo, nc.servers(topo) as socks:
        c = nc.client(topo)
        try:
            mapped = nc.mapped_address(c, socks["11"])
            assert mapped is not None
            time.sleep(1.0)  # within the timeout: both the answer and strangers get in
            socks["11"].sendto(b"early-same", mapped)
            socks["21"].sendto(b"early-other", mapped)
            assert set(nc.drain(c)) == {b"early-same", b"early-other"}
            time.sleep(2.6)  # silence longer than the timeout: the mapping is gone
            socks["11"].sendto(b"late-same", mapped)
            socks["21"].sendto(b"late-other", mapped)
            assert nc.drain(c) == []
        finally:
            c.close()


def test_port_restricted_mapping_expires() -> None:
    behaviour = NatBehaviour.preset("port-restricted", udp_timeout=1)
    with NatTopology(behaviour) as topo, nc.servers(topo) as socks:
        c = nc.client(topo)
        try:
            mapped = nc.mapped_address(c, socks["11"])
            assert mapped is not None
            socks["11"].sendto(b"early", mapped)
            assert nc.drain(c) == [b"early"]
            time.sleep(1.6)
            socks["11"].sendto(b"late", mapped)
            assert nc.drain(c) == []
        finally:
            c.close()


# --------------------------------------------------------------------------------------------
# teardown and leftovers


def test_exception_inside_tears_everything_down() -> None:
    tag = ""
    with pytest.raises(RuntimeError), NatTopology("symmetric") as topo:
        tag = topo.lab.tag
        topo.popen(topo.client_ns, ["sleep", "30"])
        assert len(_namespaces(tag)) == 4
        raise RuntimeError("boom")
    assert _namespaces(tag) == []
    assert not (STATE_DIR / f"{tag}.json").exists()


def _start_holder(how: str) -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [sys.executable, str(_HERE / "nat_check.py"), how, "port-restricted"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", line
    return proc, line[1], int(line[2])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("how", ["kill-9", "crash"])
def test_cleanup_leftovers_after_a_dead_owner(how: str) -> None:
    proc, tag, sleeper = _start_holder("crash" if how == "crash" else "hold")
    try:
        assert len(_namespaces(tag)) == 4
        # The owner is alive: its namespaces are not leftovers.
        assert not any(ns.startswith(tag) for ns in cleanup_leftovers())
        assert len(_namespaces(tag)) == 4
        if how == "kill-9":
            proc.kill()
        proc.wait(timeout=10)
        assert len(_namespaces(tag)) == 4  # nothing tore them down
        removed = cleanup_leftovers()
        assert sorted(ns for ns in removed if ns.startswith(tag)) == sorted(
            f"{tag}-{r}" for r in ("inet", "srv", "rtr", "cli")
        )
        assert _namespaces(tag) == []
        assert not (STATE_DIR / f"{tag}.json").exists()
        for _ in range(50):  # the process left inside was killed
            if not _alive(sleeper):
                break
            time.sleep(0.02)
        assert not _alive(sleeper)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        cleanup_leftovers()


def test_clean_removes_untagged_tls_directories_only_when_no_other_run_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers' TLS directories that older runs wrote outside their scratch directory
    (``natkit-lab-tls-*``): removed when no other run is alive, kept beside a live one."""
    import json
    import tempfile

    import natkit.lab.netns as netns_mod

    states, tmp = tmp_path / "states", tmp_path / "tmp"
    states.mkdir()
    tmp.mkdir()
    monkeypatch.setattr(netns_mod, "STATE_DIR", states)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    prefix = "nkzz"  # no real tag matches: other runs' namespaces are never looked at
    legacy = tmp / "natkit-lab-tls-abc123"
    legacy.mkdir()
    (legacy / "key.pem").write_text("x")
    other = tmp / "natkit-other"
    other.mkdir()
    (states / f"{prefix}000000.json").write_text(json.dumps({"pid": 1, "start": process_start(1)}))
    assert owner_alive(json.loads((states / f"{prefix}000000.json").read_text()))
    assert str(legacy) not in cleanup_leftovers(prefix) and legacy.is_dir()
    (states / f"{prefix}000000.json").unlink()
    assert str(legacy) in cleanup_leftovers(prefix)
    assert not legacy.exists() and other.is_dir()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_tear_down(sig: signal.Signals) -> None:
    proc, tag, sleeper = _start_holder("hold")
    proc.send_signal(sig)
    assert proc.wait(timeout=10) != 0
    assert _namespaces(tag) == []
    assert not _alive(sleeper)


def test_next_run_removes_leftovers() -> None:
    proc, tag, _ = _start_holder("crash")
    proc.wait(timeout=10)
    assert _namespaces(tag)
    with NetnsLab() as lab:  # entering a lab cleans dead runs first
        lab.add_ns("x")
        assert _namespaces(tag) == []


def test_bad_names_are_usage_errors() -> None:
    with NetnsLab() as lab:
        with pytest.raises(UsageError):
            lab.add_ns("bad/name")
        ns = lab.add_ns("a")
        with pytest.raises(UsageError):
            lab.add_veth(ns, "x" * 16, ns, "y")


def test_socket_lives_in_its_namespace() -> None:
    with NetnsLab() as lab:
        a, b = lab.add_ns("a"), lab.add_ns("b")
        lab.add_veth(a, "eth0", b, "eth0")
        lab.add_addr(a, "eth0", "198.51.100.1/24")
        lab.add_addr(b, "eth0", "198.51.100.2/24")
        sa, sb = lab.socket(a), lab.socket(b)
        try:
            sa.bind(("198.51.100.1", 0))
            with pytest.raises(OSError):  # not an address of namespace b
                sb.bind(("198.51.100.1", 0))
            sb.bind(("198.51.100.2", 0))
            sb.sendto(b"x", sa.getsockname())
            assert nc.recv(sa, 1.0) == (b"x", sb.getsockname())
        finally:
            sa.close()
            sb.close()
        res = lab.run(b, ["ip", "-o", "addr", "show", "dev", "eth0"])
        assert "198.51.100.2/24" in res.stdout


def _pair(lab: NetnsLab) -> tuple[str, str]:
    a, b = lab.add_ns("a"), lab.add_ns("b")
    lab.add_veth(a, "eth0", b, "eth0")
    lab.add_addr(a, "eth0", "198.51.100.1/24")
    lab.add_addr(b, "eth0", "198.51.100.2/24")
    return a, b


def _delivered(lab: NetnsLab, a: str, b: str, count: int) -> int:
    sa, sb = lab.socket(a), lab.socket(b)
    try:
        sa.bind(("198.51.100.1", 0))
        sb.bind(("198.51.100.2", 0))
        for _ in range(count):
            sb.sendto(b"x", sa.getsockname())
        return len(nc.drain(sa, 0.3))
    finally:
        sa.close()
        sb.close()


def test_impair_loss() -> None:
    with NetnsLab() as lab:
        a, b = _pair(lab)
        assert _delivered(lab, a, b, 50) == 50
        lab.impair(b, "eth0", loss_pct=50)
        got = _delivered(lab, a, b, 50)
        assert 5 <= got <= 45  # binomial(50, 0.5): outside this range about once in 10^9
        lab.impair(b, "eth0", loss_pct=100)
        assert _delivered(lab, a, b, 20) == 0
        lab.impair(b, "eth0")  # no impairment: a clean link again
        assert _delivered(lab, a, b, 20) == 20


def test_impair_delay_or_says_why_not() -> None:
    with NetnsLab() as lab:
        a, b = _pair(lab)
        if not has_netem():
            with pytest.raises(PrerequisiteError, match="netem"):
                lab.impair(b, "eth0", delay_ms=50)
            return
        lab.impair(b, "eth0", delay_ms=50)
        sa, sb = lab.socket(a), lab.socket(b)
        try:
            sa.bind(("198.51.100.1", 0))
            t0 = time.monotonic()
            sb.sendto(b"x", sa.getsockname())
            assert nc.recv(sa, 2.0) is not None
            assert time.monotonic() - t0 >= 0.045
        finally:
            sa.close()
            sb.close()


def test_prerequisites_name_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrerequisiteError, match="root"):
        check_prerequisites()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "nft" else "/x")
    with pytest.raises(PrerequisiteError, match="nftables"):
        check_prerequisites()


def test_owner_identity_survives_pid_reuse() -> None:
    me = {"pid": os.getpid(), "start": process_start(os.getpid())}
    assert owner_alive(me)
    assert not owner_alive({**me, "start": "0"})  # same pid, another process
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_start(gone.pid) is None  # reaped: no such process any more
    assert not owner_alive({"pid": gone.pid, "start": "1"})
    assert not owner_alive({})


def _host_links() -> set[str]:
    """Links of the host's namespace with the names a topology uses (others may come and go)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {n for n in names if n in ("wan", "lan", "br0") or re.fullmatch(r"p\d+|lan-c\d", n)}


async def test_async_topology_leaves_the_host_namespace_alone() -> None:
    before = _host_links()
    async with NatTopology("restricted-cone", clients=2) as topo:
        assert _host_links() == before  # every link lives inside the run's namespaces
        res = topo.run(topo.client2_ns or "", ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        assert f"{topo.client2_ip}/24" in res.stdout
        tag = topo.lab.tag
    assert _namespaces(tag) == []
    assert _host_links() == before


def test_a_failing_command_is_one_line_with_what_to_do() -> None:
    from natkit.lab.netns import NetnsError

    with NetnsLab() as lab:
        ns = lab.add_ns("dup")
        with pytest.raises(NetnsError) as err:
            lab.add_bridge(ns, "lo")  # exists: the kernel refuses
    text = str(err.value)
    assert err.value.exit_code == 2 and isinstance(err.value, PrerequisiteError)
    assert "\n" not in text and "ip -n" in text and "failed: " in text and "natkit lab clean" in text, text


def test_the_cli_turns_an_engine_failure_into_one_line_and_exit_2(tmp_path: Path) -> None:
    # The host refuses: here a PATH whose `ip` fails every command, as without CAP_NET_ADMIN.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ip").write_text("#!/bin/sh\necho 'RTNETLINK answers: Operation not permitted' >&2\nexit 2\n")
    (fake / "ip").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "natkit", "lab", "run", "--stacks", "aiortc", "--no-capture", "--only", "open:open"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Operation not permitted" in lines[0] and "run as root" in lines[0], lines[0]
