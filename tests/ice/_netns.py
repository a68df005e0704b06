"""Two network namespaces joined by a veth pair, for tests that need a network the host does
not have: a client side whose nftables drops UDP, a blackhole address, a resolv.conf of its
own. Everything is named ``nk`` + a random tag and removed at the end, also on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# RFC 2544 benchmarking addresses: never a real host, and only inside our namespaces.
CLIENT_IP = "198.18.{n}.1"
SERVER_IP = "198.18.{n}.2"
BLACKHOLE_NET = "198.19.{n}.0/24"  # routed from the client namespace into nothing


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=check)


def require_root_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install iproute2 nftables)")


@dataclass
class NsPair:
    tag: str
    client: str  # namespace names
    server: str
    client_ip: str
    server_ip: str
    blackhole_ip: str  # an address the client routes into nothing (no answer, no ICMP)

    def exec_argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def block_udp(self) -> None:
        """The client namespace may send and receive no UDP at all (EPERM on send)."""
        rules = (f"table inet {self.tag} {{\n"
                 "  chain out { type filter hook output priority 0; meta l4proto udp drop; }\n"
                 "  chain in { type filter hook input priority 0; meta l4proto udp drop; }\n"
                 "}\n")
        subprocess.run(self.exec_argv(self.client, "nft", "-f", "-"), input=rules, text=True,
                       capture_output=True, timeout=20, check=True)

    def resolv_conf(self, nameserver: str) -> None:
        """/etc/resolv.conf as ``ip netns exec`` shows it inside the client namespace."""
        directory = Path("/etc/netns") / self.client
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:1\n")


@contextlib.contextmanager
def ns_pair() -> Iterator[NsPair]:
    require_root_netns()
    tag = "nk" + uuid.uuid4().hex[:8]
    n = 1 + int(tag[2:6], 16) % 250
    pair = NsPair(tag, f"{tag}c", f"{tag}s", CLIENT_IP.format(n=n), SERVER_IP.format(n=n),
                  BLACKHOLE_NET.format(n=n).replace(".0/24", ".53"))
    try:
        _run("ip", "netns", "add", pair.client)
        _run("ip", "netns", "add", pair.server)
        _run("ip", "link", "add", f"{tag}a", "netns", pair.client, "type", "veth", "peer",
             "name", f"{tag}b", "netns", pair.server)
        for ns, dev, ip in ((pair.client, f"{tag}a", pair.client_ip),
                            (pair.server, f"{tag}b", pair.server_ip)):
            _run(*pair.exec_argv(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev))
            _run(*pair.exec_argv(ns, "ip", "link", "set", dev, "up"))
            _run(*pair.exec_argv(ns, "ip", "link", "set", "lo", "up"))
        # The blackhole: routed to the server namespace, which does not forward and drops
        # what is not its own without a word (no ICMP), as a dead network does.
        _run(*pair.exec_argv(pair.server, "sysctl", "-qw", "net.ipv4.ip_forward=0"))
        _run(*pair.exec_argv(pair.client, "ip", "route", "add", BLACKHOLE_NET.format(n=n),
                             "via", pair.server_ip))
        yield pair
    finally:
        for ns in (pair.client, pair.server):
            _run("ip", "netns", "pids", ns, check=False)
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(Path("/etc/netns") / pair.client, ignore_errors=True)
