"""What a probe can tell beyond RFC 5780: the port allocation pattern and how many NATs deep.

* :func:`port_pattern`: from the Binding exchanges of a probe, whether the NAT kept the local
  port (port preservation, RFC 4787 §4.2.1) and, with several mappings from one socket (an
  address-and-port-dependent NAT gives one per destination), whether their ports are
  sequential or random.
* :func:`nat_layers`: UDP Binding requests with TTL 1, 2, ... toward the server, all at once;
  each router on the way answers ICMP time exceeded from its inside address (read from the
  socket's error queue, IP_RECVERR). Routers with private or shared (RFC 6598, 100.64.0.0/10)
  addresses before the first public one are NATs the host sits behind: two of them is a home
  NAT behind a carrier NAT (a 100.64.0.0/10 hop) or behind another home NAT. Linux only; None
  elsewhere, and None when a router stays silent before the count is known (routers
  rate-limit their ICMP errors: by default Linux sends a burst of 6 per destination, then
  one a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import select
import socket
import struct
import time
from collections.abc import Sequence

from natkit.nat.classify import Exchange

__all__ = ["ANSWERED", "SEQUENTIAL_SPREAD", "Trace", "count_layers", "nat_layers", "port_pattern", "trace_hops"]

Address = tuple[str, int]
SEQUENTIAL_SPREAD = 16  # largest gap between sorted mapped ports still called sequential
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3
# The address space a NAT's inside may use: RFC 1918, RFC 6598's shared space, link-local, and
# IPv6 unique-local. Not ipaddress's is_private: that also counts the documentation ranges,
# which the lab (and RFC 5737 / RFC 3849 examples) use as the public internet.
_INSIDE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "fc00::/7", "fe80::/10",
))
TRIES = 2
ANSWERED = "answered"  # a TTL that reached the server: its answer, no ICMP error


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
    return any(a.version == n.version and a in n for n in _INSIDE)


class Trace:
    """A TTL trace toward ``server`` in flight: UDP Binding requests with TTL 1 to ``max_ttl``,
    each from its own socket, sent when the object is made (so a caller can make sure they
    leave before anything else it sends draws ICMP errors from the same routers, which
    rate-limit them per destination); :meth:`collect` waits for what comes back."""

    def __init__(self, server: Address, max_ttl: int = 4) -> None:
        self.server = server
        self.v6 = ":" in server[0]
        self.hops: list[str | None] = [None] * max_ttl
        self.socks: dict[int, socket.socket] = {}
        self.limit = max_ttl  # TTLs past a send failure (no route) are not asked
        self._send(list(range(1, max_ttl + 1)))

    def _send(self, ttls: list[int]) -> None:
        from natkit.stun import Class, Message, Method

        fam = socket.AF_INET6 if self.v6 else socket.AF_INET
        for ttl in ttls:
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            self.socks[ttl] = sock
            try:
                if self.v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                sock.setblocking(False)
                sock.sendto(Message(Method.BINDING, Class.REQUEST).encode(), self.server)
            except OSError:
                self.limit = min(self.limit, ttl - 1)
                break

    def _close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks = {}

    def collect(self, wait: float = 0.3, tries: int = TRIES) -> list[str | None]:
        """What each TTL gave: a router's address (its ICMP time exceeded), :data:`ANSWERED`
        (the server itself answered) or None (silence). The silent TTLs are asked again (loss,
        rate-limited ICMP) up to ``tries`` rounds in all, ``wait`` seconds each: at most
        ``tries * wait`` seconds. Blocking: run it in a thread."""
        try:
            for round_ in range(max(1, tries)):
                if round_:
                    first_answer = next((i for i, h in enumerate(self.hops) if h == ANSWERED), len(self.hops))
                    # Past the first TTL the server answered, nothing more can be learnt.
                    again = [t for t in range(1, self.limit + 1) if self.hops[t - 1] is None and t - 1 < first_answer]
                    if not again:
                        break
                    self._send(again)
                for ttl, hop in _offenders(self.socks, self.v6, wait).items():
                    self.hops[ttl - 1] = hop
                self._close()
        finally:
            self._close()
        return self.hops[: self.limit]


def trace_hops(server: Address, max_ttl: int = 4, wait: float = 0.3, tries: int = TRIES) -> list[str | None]:
    """What each TTL from 1 to ``max_ttl`` gave toward ``server`` (see :meth:`Trace.collect`):
    every TTL at once, at most ``tries * wait`` seconds."""
    return Trace(server, max_ttl).collect(wait, tries)


def count_layers(hops: Sequence[str | None]) -> int | None:
    """The NATs a host sits behind, from :func:`trace_hops`: the private or shared-space
    (100.64.0.0/10) routers before the first public router or the server's answer. None when
    the count is not known: a silent hop before that, unless two NATs were already seen
    ("behind more than one NAT" holds whatever the silent hop is)."""
    count = 0
    for hop in hops:
        if hop == ANSWERED or (hop is not None and not _private(hop)):
            return max(1, count)
        if hop is None:
            break
        count += 1
    return count if count >= 2 else None


def _offenders(socks: dict[int, socket.socket], v6: bool, wait: float) -> dict[int, str | None]:
    """For each TTL's socket within ``wait`` seconds: the ICMP error's offender address,
    :data:`ANSWERED`, or (silence, or an error that names no router) None."""
    poller = select.poll()
    by_fd = {sock.fileno(): ttl for ttl, sock in socks.items()}
    for sock in socks.values():
        poller.register(sock, select.POLLERR | select.POLLIN)
    out: dict[int, str | None] = {}
    end = time.monotonic() + wait
    while len(out) < len(socks) and (left := end - time.monotonic()) > 0:
        for fd, _events in poller.poll(left * 1000):
            ttl = by_fd[fd]
            if ttl in out:
                continue
            out[ttl] = _read_one(socks[ttl], v6)
            poller.unregister(fd)
    return out


def _read_one(sock: socket.socket, v6: bool) -> str | None:
    try:
        _, anc, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
    except BlockingIOError:
        with contextlib.suppress(OSError):
            sock.recv(2048)  # an answer: the server itself, no router in between
        return ANSWERED
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


async def nat_layers(
    server: Address, public: Address | None, local: Address | None, max_ttl: int = 4, wait: float = 0.3,
    tries: int = TRIES,
) -> int | None:
    """How many NATs stand between this host and ``server``: 0 when the server saw the local
    address, else :func:`count_layers` of a TTL trace (None: unknown). Takes at most
    ``tries * wait`` seconds."""
    if public is None or local is None:
        return None
    if public[0] == local[0]:
        return 0
    try:
        trace = Trace(server, max_ttl)  # sent now, before the caller's next packets
    except OSError:
        return None
    try:
        hops = await asyncio.to_thread(trace.collect, wait, tries)
    except OSError:
        return None
    return count_layers(hops)
