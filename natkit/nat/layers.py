"""What a probe can tell beyond RFC 5780: the port allocation pattern and how many NATs deep.

* :func:`port_pattern`: from the Binding exchanges of a probe, whether the NAT kept the local
  port (port preservation, RFC 4787 §4.2.1) and, with several mappings from one socket (an
  address-and-port-dependent NAT gives one per destination), whether their ports are
  sequential or random.
* :func:`nat_layers`: a UDP Binding request with TTL 1, 2, ... toward the server; each router
  on the way answers ICMP time exceeded from its inside address (read from the socket's error
  queue, IP_RECVERR). Routers with private or shared (RFC 6598, 100.64.0.0/10) addresses before
  the first public one are NATs the host sits behind: two of them is a home NAT behind a
  carrier NAT (a 100.64.0.0/10 hop) or behind another home NAT. Linux only; None elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import select
import socket
import struct
import time
from collections.abc import Sequence

from natkit.nat.classify import Exchange

__all__ = ["SEQUENTIAL_SPREAD", "nat_layers", "port_pattern", "trace_hops"]

Address = tuple[str, int]
SEQUENTIAL_SPREAD = 16  # largest gap between sorted mapped ports still called sequential
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3
_SHARED = ipaddress.ip_network("100.64.0.0/10")
TRIES = 3
_SILENT, _ANSWERED = "silent", "answered"  # what a hop gave instead of an ICMP error


def port_pattern(tests: Sequence[Exchange]) -> tuple[bool | None, str | None]:
    """(port preserved, allocation) from the answered exchanges: allocation is ``preserved``,
    ``sequential`` or ``random`` (three or more mappings of one socket), ``changed`` (fewer,
    not the local port), or None without answers."""
    by_socket: dict[int, list[int]] = {}
    preserved = True
    seen = False
    for ex in tests:
        r = ex.reply
        if r is None or r.mapped is None or r.error is not None or ex.local is None:
            continue
        seen = True
        preserved = preserved and r.mapped[1] == ex.local[1]
        ports = by_socket.setdefault(ex.local[1], [])
        if r.mapped[1] not in ports:
            ports.append(r.mapped[1])
    if not seen:
        return None, None
    if preserved:
        return True, "preserved"
    widest = max(by_socket.values(), key=len)
    if len(widest) < 3:
        return False, "changed"
    ordered = sorted(widest)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    return False, "sequential" if max(gaps) <= SEQUENTIAL_SPREAD else "random"


def _private(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return a.is_private or a in _SHARED


def trace_hops(server: Address, max_ttl: int = 4, wait: float = 0.3) -> list[str | None]:
    """The inside addresses of the routers toward ``server``, hop by hop, until a hop does not
    answer with ICMP time exceeded (the server or a silent router). Bounded: ``max_ttl`` hops,
    ``wait`` seconds each."""
    v6 = ":" in server[0]
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    hops: list[str | None] = []
    from natkit.stun import Class, Message, Method

    for ttl in range(1, max_ttl + 1):
        hop: str | None = None
        # A router rate-limits its ICMP errors per destination (the first one toward a new
        # host may be held back): a silent hop is asked again, twice at most.
        for _attempt in range(TRIES):
            with socket.socket(fam, socket.SOCK_DGRAM) as sock:
                try:
                    if v6:
                        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
                    else:
                        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                    sock.setblocking(False)
                    sock.sendto(Message(Method.BINDING, Class.REQUEST).encode(), server)
                except OSError:
                    return hops
                hop = _offender(sock, v6, wait)
            if hop != _SILENT:
                break
        if hop in (None, _SILENT, _ANSWERED):
            hops.append(None)
            break
        hops.append(hop)
    return hops


def _offender(sock: socket.socket, v6: bool, wait: float) -> str | None:
    """The ICMP error's offender address, or :data:`_SILENT` / :data:`_ANSWERED` / None."""
    poller = select.poll()
    poller.register(sock, select.POLLERR | select.POLLIN)
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        if not poller.poll(left * 1000):
            return _SILENT
        try:
            _, anc, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            try:
                sock.recv(2048)  # an answer: the server itself, no router in between
            except OSError:
                pass
            return _ANSWERED
        except OSError:
            return None
        for _level, _type, data in anc:
            if len(data) < 16 + 8:
                continue
            origin = data[4]
            if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
                continue
            family = struct.unpack_from("=H", data, 16)[0]
            if family == socket.AF_INET and len(data) >= 24:
                return socket.inet_ntop(socket.AF_INET, data[20:24])
            if family == socket.AF_INET6 and len(data) >= 16 + 24:
                return socket.inet_ntop(socket.AF_INET6, data[24:40])
    return None


async def nat_layers(server: Address, public: Address | None, local: Address | None, max_ttl: int = 4) -> int | None:
    """How many NATs stand between this host and ``server``: 0 when the server saw the local
    address, else the number of private or shared-space routers before the first public one
    (at least 1); None when it cannot tell (no answer, no ICMP)."""
    if public is None or local is None:
        return None
    if public[0] == local[0]:
        return 0
    try:
        hops = await asyncio.to_thread(trace_hops, server, max_ttl)
    except OSError:
        return None
    count = 0
    for hop in hops:
        if hop is None or not _private(hop):
            break
        count += 1
    return max(1, count)
