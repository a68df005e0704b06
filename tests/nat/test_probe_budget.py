"""natkit.nat.probe keeps to --timeout as a total budget and says when DNS, not the name,
is the problem: blackholed servers and a DNS server that never answers (loopback and a
namespace of the test's own)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from natkit.nat.probe import probe

from ..ice._dnsserver import silent_dns
from ..ice._netns import ns_pair

pytestmark = pytest.mark.timeout(60)


async def test_a_dns_server_that_never_answers() -> None:
    with silent_dns() as resolver:
        start = time.monotonic()
        result = await probe(["stun:stun.example.test", "stun.example.test:3478"], timeout=2,
                             resolver=resolver)
        elapsed = time.monotonic() - start
    assert elapsed < 1.2  # DNS gets 40 % of the budget, and nothing is left to probe
    assert result.exit_code == 1
    for error in result.errors:
        assert f"DNS server 127.0.0.1:{resolver.port} did not answer within 0.8 s" in error
        assert "does not resolve" not in error


async def test_blackholed_servers_on_loopback_cost_the_timeout() -> None:
    # A bound UDP socket that never answers and a TCP listener that never reads.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp.bind(("127.0.0.1", port))
        tcp.listen(8)
        start = time.monotonic()
        result = await probe([f"127.0.0.1:{port}"], timeout=1.5)
        elapsed = time.monotonic() - start
    assert 1.3 <= elapsed <= 1.9
    assert result.exit_code == 1


@pytest.mark.root
def test_cli_budget_in_a_namespace() -> None:
    with ns_pair() as pair:
        pair.resolv_conf(pair.blackhole_ip)
        start = time.monotonic()
        out = subprocess.run(pair.exec_argv(pair.client, sys.executable, "-m", "natkit",
                                            "probe", "--timeout", "3", "--server",
                                            pair.blackhole_ip, "--json"),
                             capture_output=True, text=True, timeout=30)
        wall = time.monotonic() - start
        data = json.loads(out.stdout)
        assert out.returncode == 1 and data["pass"] is False
        assert data["duration_s"] <= 3.2, data["duration_s"]
        assert wall < 3.2 + 2.0  # interpreter start on a busy machine
        # Default servers (names) with a DNS server that never answers.
        start = time.monotonic()
        out = subprocess.run(pair.exec_argv(pair.client, sys.executable, "-m", "natkit",
                                            "probe"), capture_output=True, text=True,
                             timeout=30)
        wall = time.monotonic() - start
        assert out.returncode == 1
        assert wall < 5.0, wall
        assert f"DNS server {pair.blackhole_ip} did not answer within" in out.stdout
        assert "does not resolve" not in out.stdout
        assert "the DNS server did not answer" in out.stderr
        assert "UDP/TCP" not in out.stderr
        # natkit check says the same.
        cfg = f"/tmp/{pair.tag}.json"
        with open(cfg, "w") as f:
            json.dump([{"urls": "stun:stun.example.test:3478"}], f)
        try:
            out = subprocess.run(pair.exec_argv(pair.client, sys.executable, "-m", "natkit",
                                                "check", cfg, "--timeout", "2"),
                                 capture_output=True, text=True, timeout=30)
        finally:
            import os

            os.unlink(cfg)
        assert out.returncode == 1
        assert f"DNS server {pair.blackhole_ip} did not answer within" in out.stdout
        assert "firewall" not in out.stdout
