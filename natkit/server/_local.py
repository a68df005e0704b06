"""The addresses this host answers on, for the relay's "never a peer" list.

A socket bound to 0.0.0.0 or :: answers on every local address, so a relay listening there
owns all of them. They come from the kernel over rtnetlink (RTM_GETADDR, the request `ip
address` makes): every address of every interface, secondary ones included. An address of
host scope stands for its whole prefix (lo's 127.0.0.1/8: the kernel answers on all of
127.0.0.0/8). Without netlink (not Linux) the fallback is what the resolver knows of the
host name plus loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct

_NLMSG_HDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTA_HDR = struct.Struct("=HH")
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RT_SCOPE_HOST = 254
_MAX_MESSAGES = 100_000  # bounded, whatever the kernel sends


def _align(n: int) -> int:
    return (n + 3) & ~3


def _netlink_addresses() -> list[str]:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    with contextlib.closing(sock):
        sock.settimeout(2.0)
        sock.bind((0, 0))
        seq = os.getpid() & 0xFFFF
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(body), _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0
        )
        sock.send(header + body)
        out: list[str] = []
        for _ in range(_MAX_MESSAGES):
            data = sock.recv(1 << 16)
            pos = 0
            while pos + _NLMSG_HDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, pos)
                if length < _NLMSG_HDR.size:
                    return out
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    raise OSError("netlink refused the address dump")
                if kind == _RTM_NEWADDR:
                    out += _parse_addr(data[pos + _NLMSG_HDR.size : pos + length])
                pos += _align(length)
        return out


def _parse_addr(msg: bytes) -> list[str]:
    if len(msg) < _IFADDRMSG.size:
        return []
    family, prefix, _flags, scope, _index = _IFADDRMSG.unpack_from(msg)
    width = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if width is None:
        return []
    found: dict[int, bytes] = {}
    pos = _IFADDRMSG.size
    while pos + _RTA_HDR.size <= len(msg):
        rta_len, rta_type = _RTA_HDR.unpack_from(msg, pos)
        if rta_len < _RTA_HDR.size:
            break
        value = msg[pos + _RTA_HDR.size : pos + rta_len]
        if rta_type in (_IFA_ADDRESS, _IFA_LOCAL) and len(value) == width:
            found[rta_type] = value
        pos += _align(rta_len)
    raw = found.get(_IFA_LOCAL) or found.get(_IFA_ADDRESS)
    if raw is None:
        return []
    ip = ipaddress.ip_address(raw)
    if scope == _RT_SCOPE_HOST and ip.version == 4:
        return [str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))]
    return [str(ip)]


def local_addresses() -> list[str]:
    """Every address (or, for host-scope ones, prefix) this host answers on, as strings."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        found = _netlink_addresses()
        if found:
            return sorted(set(found))
    out = {"127.0.0.0/8", "::1"}
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            out.add(str(info[4][0]).split("%", 1)[0])
    return sorted(out)
