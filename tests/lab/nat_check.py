"""Measure a NAT's behaviour with plain UDP/TCP sockets (no STUN), for the netns tests.

Importable (``measure_mapping``, ``measure_filtering``, ...: they take a ``NatTopology`` and use
sockets made inside its namespaces) and runnable: ``python nat_check.py hold PRESET`` builds a
topology with a ``sleep`` inside, prints ``READY <tag> <sleep pid>`` and sleeps (the cleanup
tests kill it); ``crash PRESET`` does the same and exits at once without any teardown.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from natkit.lab.netns import NatTopology

PORT1, PORT2 = 3478, 3479
QUIET = 0.3  # how long "nothing arrives" is waited for; RTT in namespaces is well under 1 ms

Addr = tuple[str, int]


@contextmanager
def servers(topo: NatTopology) -> Iterator[dict[str, socket.socket]]:
    """UDP sockets in the server namespace on (ip1, p1), (ip1, p2), (ip2, p1)."""
    ip1, ip2 = topo.server_ips
    socks: dict[str, socket.socket] = {}
    try:
        for key, addr in (("11", (ip1, PORT1)), ("12", (ip1, PORT2)), ("21", (ip2, PORT1))):
            s = topo.socket(topo.server_ns)
            s.bind(addr)
            socks[key] = s
        yield socks
    finally:
        for s in socks.values():
            s.close()


def client(topo: NatTopology, ns: str | None = None) -> socket.socket:
    s = topo.socket(ns or topo.client_ns)
    s.bind(("0.0.0.0", 0))
    return s


def recv(sock: socket.socket, timeout: float = QUIET) -> tuple[bytes, Addr] | None:
    """One datagram, or None when nothing arrives within ``timeout``."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return None
    data, addr = sock.recvfrom(2048)
    return data, addr


def drain(sock: socket.socket, timeout: float = QUIET) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and len(got) < 100:
        item = recv(sock, left)
        if item is None:
            break
        got.append(item[0])
    return got


def mapped_address(c: socket.socket, srv: socket.socket, tries: int = 6) -> Addr | None:
    """Send from ``c`` to ``srv`` and return the source address ``srv`` saw. An answer is
    expected here, so it is retried generously: only a loaded machine is slow to give it."""
    dest = srv.getsockname()
    while recv(srv, 0) is not None:  # a late answer to an earlier retry is not this one's
        pass
    for _ in range(tries):
        c.sendto(b"who-am-i", dest)
        item = recv(srv, QUIET)
        if item is not None:
            return item[1]
    return None


def measure_mapping(topo: NatTopology, socks: dict[str, socket.socket]) -> dict[str, Any]:
    """Mapped addresses toward (ip1,p1), (ip1,p2), (ip2,p1) from one socket, and the verdict."""
    c = client(topo)
    try:
        local_port = c.getsockname()[1]
        m = {key: mapped_address(c, socks[key]) for key in ("11", "12", "21")}
    finally:
        c.close()
    if any(v is None for v in m.values()):
        verdict = "blocked"
    elif m["11"] == (topo.client_ip, local_port):
        verdict = "none"
    elif m["11"] == m["12"] == m["21"]:
        verdict = "endpoint-independent"
    elif m["11"] == m["12"]:
        verdict = "address-dependent"
    else:
        verdict = "address-and-port-dependent"
    return {"mapped": m, "mapping": verdict}


def measure_filtering(topo: NatTopology, socks: dict[str, socket.socket]) -> dict[str, Any]:
    """From a fresh mapping made toward (ip1,p1): which unsolicited senders get through."""
    c = client(topo)
    try:
        mapped = mapped_address(c, socks["11"])
        if mapped is None:
            return {"filtering": "blocked"}
        socks["21"].sendto(b"other-ip", mapped)
        socks["12"].sendto(b"other-port", mapped)
        socks["11"].sendto(b"same", mapped)  # control: the answer to the request must arrive
        got = set(drain(c))
    finally:
        c.close()
    if b"same" not in got:
        verdict = "broken"
    elif b"other-ip" in got:
        verdict = "endpoint-independent"
    elif b"other-port" in got:
        verdict = "address-dependent"
    else:
        verdict = "address-and-port-dependent"
    return {"got": sorted(got), "filtering": verdict}


def measure_hairpin(topo: NatTopology, socks: dict[str, socket.socket]) -> dict[str, bool]:
    """Whether packets to a mapping's public address come back inside (self and LAN peer)."""
    assert topo.client2_ns is not None
    a, b = client(topo), client(topo, topo.client2_ns)
    try:
        ma = mapped_address(a, socks["11"])
        mb = mapped_address(b, socks["11"])
        assert ma is not None and mb is not None
        a.sendto(b"to-self", ma)
        self_ok = b"to-self" in drain(a)
        b.sendto(b"from-peer", ma)
        peer_ok = b"from-peer" in drain(a)
        return {"self": self_ok, "peer": peer_ok}
    finally:
        a.close()
        b.close()


def tcp_works(topo: NatTopology) -> str | None:
    """Connect over TCP from the client to the server; the source IP the server saw, or None."""
    lst = topo.socket(topo.server_ns, type=socket.SOCK_STREAM)
    c = topo.socket(topo.client_ns, type=socket.SOCK_STREAM)
    try:
        lst.bind((topo.server_ips[0], PORT1))
        lst.listen(1)
        lst.settimeout(1)
        c.settimeout(1)
        try:
            c.connect((topo.server_ips[0], PORT1))
            conn, addr = lst.accept()
        except OSError:
            return None
        conn.close()
        return str(addr[0])
    finally:
        c.close()
        lst.close()


def _hold(preset: str, how: str) -> None:
    topo = NatTopology(preset)
    topo.__enter__()
    sleeper = topo.popen(topo.client_ns, ["sleep", "60"])
    print("READY", topo.lab.tag, sleeper.pid, flush=True)
    if how == "crash":  # die without any teardown, like a crash in C code or a lost container
        os._exit(3)
    try:
        time.sleep(60)
    finally:
        topo.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("hold", "crash"):
        _hold(sys.argv[2], sys.argv[1])
    else:
        sys.exit("usage: nat_check.py hold|crash PRESET")
