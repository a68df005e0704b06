"""The lab's DNS64 resolver (sans-IO part): A as is, AAAA synthesized, nothing else answered."""

from __future__ import annotations

import dns.message
import dns.rcode

from natkit.lab.dns64 import answer, synthesize

ZONE = {"turn.lab.natkit": "203.0.113.4"}


def test_aaaa_is_the_ipv4_address_under_the_nat64_prefix() -> None:
    assert synthesize("203.0.113.4") == "2001:db8:64::cb00:7104"
    resp = dns.message.from_wire(answer(dns.message.make_query("turn.lab.natkit", "AAAA").to_wire(), ZONE) or b"")
    assert [r.to_text() for r in resp.answer[0]] == ["2001:db8:64::cb00:7104"]
    resp = dns.message.from_wire(answer(dns.message.make_query("TURN.lab.natkit.", "A").to_wire(), ZONE) or b"")
    assert [r.to_text() for r in resp.answer[0]] == ["203.0.113.4"]


def test_other_names_and_garbage() -> None:
    resp = dns.message.from_wire(answer(dns.message.make_query("example.org", "A").to_wire(), ZONE) or b"")
    assert resp.rcode() == dns.rcode.NXDOMAIN
    assert answer(b"\x00" * 5, ZONE) is None
