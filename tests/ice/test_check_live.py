"""natkit/ice/check.py live, against natkit's own servers: every resolved address of a name,
both families, each step's own message inside the budget (a relay that drops ChannelData, a
DNS server that never answers), and a host that cannot send UDP."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.ice.check import check
from natkit.server.turn import TurnServer

from ._dnsserver import dns_server, silent_dns
from ._netns import NsPair, ns_pair

pytestmark = pytest.mark.timeout(90)

USERS = {"alice": "secret"}
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def _free_port_both() -> int:
    """A port free on 127.0.0.1 and ::1, for UDP and TCP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
            port = int(probe.getsockname()[1])
        try:
            for family, kind, host in ((socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
                                       (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                                       (socket.AF_INET6, socket.SOCK_STREAM, "::1")):
                with socket.socket(family, kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both loopback addresses")


def turn_entry(url: str, password: str = "secret") -> dict:
    return {"urls": url, "username": "alice", "credential": password}


async def test_every_address_of_a_name_is_checked_and_the_dead_one_named() -> None:
    async with TurnServer(["127.0.0.1:0"], users=USERS, relay_ip="127.0.0.1",
                          allow_peers=LOOPBACK) as turn:
        port = turn.addresses_of("udp")[0][1]
        records = {("fleet.example.test", "A"): ["127.0.0.1", "127.0.0.2"]}  # .2: nothing there
        with dns_server(records) as resolver:
            report = await check([turn_entry(f"turn:fleet.example.test:{port}"),
                                  turn_entry(f"turn:fleet.example.test:{port}?transport=tcp")],
                                 timeout=3, resolver=resolver, families=(4,))
    by = {(s.protocol, s.address): s for s in report.servers}
    assert set(by) == {("udp", "127.0.0.1"), ("udp", "127.0.0.2"), ("tcp", "127.0.0.1"),
                       ("tcp", "127.0.0.2")}
    assert by["udp", "127.0.0.1"].status == "pass" and by["tcp", "127.0.0.1"].status == "pass"
    assert by["udp", "127.0.0.2"].status == "fail" and by["tcp", "127.0.0.2"].status == "fail"
    assert not report.ok
    summaries = report.as_dict()["urls"]
    assert [s["failing_addresses"] for s in summaries] == [["127.0.0.2"], ["127.0.0.2"]]
    assert [sorted(s["addresses"]) for s in summaries] == [["127.0.0.1", "127.0.0.2"]] * 2
    from natkit.cli.check import format_report

    text = format_report(report)
    assert "fleet.example.test (turn:fleet.example.test:" in text
    assert "1 of 2 addresses fail: 127.0.0.2" in text


async def test_a_dual_stack_name_is_checked_on_both_families() -> None:
    port = _free_port_both()
    async with TurnServer([f"127.0.0.1:{port}", f"[::1]:{port}"], users=USERS,
                          allow_peers=LOOPBACK) as turn:
        assert turn.addresses_of("udp")
        records = {("dual.example.test", "A"): ["127.0.0.1"],
                   ("dual.example.test", "AAAA"): ["::1"]}
        with dns_server(records) as resolver:
            report = await check([turn_entry(f"turn:dual.example.test:{port}")], timeout=3,
                                 resolver=resolver)
            only4 = await check([turn_entry(f"turn:dual.example.test:{port}")], timeout=3,
                                resolver=resolver, families=(4,))
    assert [(s.address, s.family, s.status) for s in report.servers] == [
        ("127.0.0.1", 4, "pass"), ("::1", 6, "pass")], report.as_dict()
    # Reached over IPv6 (the relay itself is IPv4, the default family of RFC 8656 §7.1).
    assert report.servers[1].mapped_address and report.servers[1].mapped_address.startswith(
        "[::1]:")
    assert [s.address for s in only4.servers] == ["127.0.0.1"]


class _DropChannelData(asyncio.DatagramProtocol):
    """A UDP proxy in front of a TURN server that drops ChannelData from the client."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.dropped = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.server:
            if self.client is not None:
                self.transport.sendto(data, self.client)
            return
        self.client = addr
        if data and 0x40 <= data[0] <= 0x7F:  # ChannelData (RFC 8656 §12.4)
            self.dropped += 1
            return
        self.transport.sendto(data, self.server)


async def test_a_relay_that_drops_channel_data_is_named_within_the_default_budget() -> None:
    loop = asyncio.get_running_loop()
    async with TurnServer(["127.0.0.1:0"], users=USERS, relay_ip="127.0.0.1",
                          allow_peers=LOOPBACK) as turn:
        server = turn.addresses_of("udp")[0]
        transport, proxy = await loop.create_datagram_endpoint(
            lambda: _DropChannelData(server), local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            start = time.monotonic()
            report = await check([turn_entry(f"turn:127.0.0.1:{port}")])  # the default 5 s
            elapsed = time.monotonic() - start
        finally:
            transport.close()
    target = report.servers[0]
    assert elapsed < 5.3
    assert proxy.dropped > 0
    steps = {s.name: s for s in target.checks}
    assert steps["relay-echo"].status == "pass"
    assert steps["channel"].status == "fail"
    assert steps["channel"].detail == ("data sent through the relay (ChannelData) never "
                                       "reached the peer")
    assert target.hint is not None and "ChannelData" in target.hint
    assert "firewall" not in target.hint and "external-ip" not in target.hint


async def test_a_dns_server_that_never_answers_is_named_as_such() -> None:
    with silent_dns() as resolver:
        start = time.monotonic()
        report = await check([{"urls": "stun:stun.example.test:3478"},
                              turn_entry("turn:turn.example.test")], timeout=2,
                             resolver=resolver)
        elapsed = time.monotonic() - start
    assert elapsed < 2.3
    for target in report.servers:
        (step,) = target.checks
        assert step.name == "dns" and step.status == "fail"
        assert step.detail.startswith(f"DNS server 127.0.0.1:{resolver.port} did not answer "
                                      "within ")
        assert "does not resolve" not in step.detail
        assert target.hint is not None and "did not answer" in target.hint
        assert "UDP" not in target.hint and "host name" not in target.hint


# -- from a network that drops UDP ------------------------------------------------------------


@pytest.fixture(params=["relays-to-itself", "refuses-itself"])
def udp_blocked(request: pytest.FixtureRequest) -> Iterator[tuple[NsPair, str]]:
    """natkit's TURN server in one namespace; the other namespace may send no UDP. The server
    relays between its own allocations, or refuses that (as a relay should: issue 12)."""
    with ns_pair() as pair:
        pair.block_udp()
        # natkit relays between its own allocations by default, unless --no-relay-to-relay
        deny = ([] if request.param == "relays-to-itself" else ["--no-relay-to-relay"])
        server = subprocess.Popen(
            pair.exec_argv(pair.server, sys.executable, "-m", "natkit", "serve", "turn",
                           "--listen", f"{pair.server_ip}:3478", "--user", "alice:secret",
                           "--allow-peer", "198.18.0.0/15", *deny, "--json"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_tcp(pair, 3478)
            yield pair, str(request.param)
        finally:
            server.kill()
            server.communicate(timeout=10)


def _wait_tcp(pair: NsPair, port: int) -> None:
    code = (f"import socket,time\nfor _ in range(100):\n try:\n  socket.create_connection("
            f"('{pair.server_ip}',{port}),0.2).close();break\n except OSError: time.sleep(0.1)")
    subprocess.run(pair.exec_argv(pair.client, sys.executable, "-c", code), timeout=30,
                   check=True)


@pytest.mark.root
def test_tcp_relay_from_a_udp_blocked_host_is_never_a_failure(
        udp_blocked: tuple[NsPair, str], tmp_path: Path) -> None:
    pair, server_kind = udp_blocked
    config = tmp_path / "ice.json"
    config.write_text(json.dumps([turn_entry(f"turn:{pair.server_ip}:3478?transport=tcp")]))
    out = subprocess.run(pair.exec_argv(pair.client, sys.executable, "-m", "natkit", "check",
                                        str(config), "--json", "--timeout", "5"),
                         capture_output=True, text=True, timeout=60)
    data = json.loads(out.stdout)
    (target,) = data["servers"]
    steps = {s["name"]: s for s in target["checks"]}
    assert steps["allocate"]["status"] == "pass"
    assert target["status"] in ("pass", "untestable"), target
    echo = steps["relay-echo"]
    if server_kind == "relays-to-itself":
        assert target["status"] == "pass", target
        assert echo["status"] == "pass" and "second allocation" in echo["detail"]
        assert "EPERM" in echo["detail"]
        assert steps["channel"]["status"] == "pass"
    else:
        assert target["status"] == "untestable", target
        assert echo["status"] == "skip" and echo["detail"].startswith("not testable from here")
        assert "403" in echo["detail"] and "channel" not in steps
    assert all(s["status"] != "fail" for s in target["checks"])
    assert out.returncode == 0, out.stdout + out.stderr


async def test_an_ip_literal_of_the_other_family_is_not_testable_not_failed() -> None:
    report = await check([{"urls": "stun:[::1]:9"}], families=(4,), timeout=1)
    (target,) = report.servers
    assert target.status == "untestable" and report.ok
    assert "only IPv4 was asked for" in target.checks[0].detail
