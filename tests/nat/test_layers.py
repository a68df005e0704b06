"""Port allocation patterns from a probe's exchanges (sans-IO part of natkit.nat.layers)."""

from __future__ import annotations

from natkit.nat.classify import Exchange, Reply
from natkit.nat.layers import port_pattern


def _ex(local: int, mapped: int) -> Exchange:
    reply = Reply(source=("203.0.113.2", 3478), mapped=("198.51.100.1", mapped), plain_mapped=None, other=None,
                  origin=None, error=None, rtt=0.01)
    return Exchange("t", ("203.0.113.2", 3478), ("203.0.113.2", 3478), 0, reply, 1, ("10.0.0.2", local))


def test_patterns() -> None:
    assert port_pattern([_ex(5000, 5000), _ex(5000, 5000)]) == (True, "preserved")
    assert port_pattern([_ex(5000, 40961), _ex(5000, 40962), _ex(5000, 40963)]) == (False, "sequential")
    assert port_pattern([_ex(5000, 1234), _ex(5000, 40962), _ex(5000, 60001)]) == (False, "random")
    assert port_pattern([_ex(5000, 7000)]) == (False, "changed")
    assert port_pattern([]) == (None, None)


def test_count_layers_from_a_trace() -> None:
    from natkit.nat.layers import ANSWERED, count_layers

    assert count_layers(["10.0.0.1", ANSWERED, ANSWERED]) == 1  # one home NAT, then the server
    assert count_layers(["10.64.1.1", "100.64.3.1", ANSWERED]) == 2  # home NAT behind a carrier NAT
    assert count_layers(["192.168.1.1", "198.51.100.1", "198.51.100.9"]) == 1  # a public router next
    assert count_layers(["10.0.0.1", "10.1.0.1", None]) == 2  # two NATs seen: more than one, whatever follows
    # a silent hop before the count is known: unknown, not "one NAT"
    assert count_layers([None, ANSWERED]) is None
    assert count_layers(["10.0.0.1", None, ANSWERED]) is None
    assert count_layers([ANSWERED]) == 1  # the NAT is the server's own router (the probe saw another address)
