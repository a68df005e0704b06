"""The lab's DNS64 resolver (RFC 6147): the lab zone's IPv4-only names, AAAA synthesized.

A NAT64 LAN's router runs it (``python -m natkit.lab.dns64 --listen ADDR NAME=IPv4 ...``): a
query for a name of the zone gets its A record, and an AAAA query the IPv4 address embedded in
the lab's NAT64 prefix (:data:`NAT64_PREFIX`, RFC 6052 §2.2), so an IPv6-only peer reaches the IPv4-only
servers by name through the router's NAT64. Other names get NXDOMAIN: the lab resolves nothing
outside itself. :func:`answer` is the sans-IO part (query bytes in, response bytes out).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["NAT64_PREFIX", "answer", "serve", "synthesize"]

# A network-specific prefix (RFC 6052 §2.2): the well-known 64:ff9b::/96 must not carry the
# non-global (RFC 5737 documentation) addresses of the lab's internet, and tayga enforces that.
NAT64_PREFIX = ipaddress.IPv6Network("2001:db8:64::/96")
TTL = 60


def synthesize(ipv4: str, prefix: ipaddress.IPv6Network = NAT64_PREFIX) -> str:
    """The IPv6 address of ``ipv4`` under a /96 NAT64 prefix (RFC 6052 §2.2)."""
    return str(ipaddress.IPv6Address(int(prefix.network_address) | int(ipaddress.IPv4Address(ipv4))))


def answer(query: bytes, zone: Mapping[str, str]) -> bytes | None:
    """The response to DNS ``query`` from ``zone`` (name -> IPv4), or None for bytes that are
    no query."""
    try:
        msg = dns.message.from_wire(query)
    except (dns.exception.DNSException, ValueError):
        return None
    if msg.flags & dns.flags.QR or len(msg.question) != 1:
        return None
    resp = dns.message.make_response(msg)
    resp.flags |= dns.flags.AA
    q = msg.question[0]
    name = q.name.to_text(omit_final_dot=True).lower()
    ip = zone.get(name)
    if ip is None:
        resp.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype == dns.rdatatype.A:
        resp.answer.append(dns.rrset.from_text(q.name, TTL, "IN", "A", ip))
    elif q.rdtype == dns.rdatatype.AAAA:
        resp.answer.append(dns.rrset.from_text(q.name, TTL, "IN", "AAAA", synthesize(ip)))
    return bytes(resp.to_wire())


def serve(listen: str, zone: Mapping[str, str], port: int = 53) -> None:
    """Answer on UDP ``[listen]:port`` until killed (the lab kills it with the namespace)."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((listen, port))
        print("listening", flush=True)
        while True:
            data, addr = sock.recvfrom(4096)
            out = answer(data, zone)
            if out is not None:
                sock.sendto(out, addr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m natkit.lab.dns64", description="the lab's DNS64 resolver")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("records", nargs="*", metavar="NAME=IPv4")
    args = ap.parse_args(argv)
    zone = {}
    for rec in args.records:
        name, _, ip = rec.partition("=")
        zone[name.lower().rstrip(".")] = str(ipaddress.IPv4Address(ip))
    serve(args.listen, zone, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
