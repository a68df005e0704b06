"""A tiny authoritative DNS responder on 127.0.0.1 for tests (dnspython as the codec)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


@contextlib.contextmanager
def dns_server(records: dict[tuple[str, str], list[str]]) -> Iterator[dns.asyncresolver.Resolver]:
    """Serve ``records`` {(name, type): [rdata text]}; unknown names get NXDOMAIN, known names
    with another type an empty answer. Yields a resolver that asks only this server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    names = {name.lower().rstrip(".") for name, _ in records}
    stop = threading.Event()
    queries: list[tuple[str, str]] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            kind = dns.rdatatype.to_text(question.rdtype)
            queries.append((name, kind))
            values = records.get((name, kind))
            if values:
                response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", kind,
                                                                values))
            elif name not in names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(response.to_wire(), addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = sock.getsockname()[1]
    resolver.queries = queries  # type: ignore[attr-defined]
    try:
        yield resolver
    finally:
        stop.set()
        thread.join(2)
        sock.close()


@contextlib.contextmanager
def silent_dns() -> Iterator[dns.asyncresolver.Resolver]:
    """A resolver whose only DNS server (a bound UDP socket on 127.0.0.1) never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = silent.getsockname()[1]
        yield resolver
