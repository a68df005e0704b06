"""Small topologies for tests: the default servers and one [[nat]] per kind given."""

from __future__ import annotations

_HEAD = """
[lab]
name = "{name}"
case_deadline_s = {deadline}
[internet]
subnet = "203.0.113.0/24"
[stun]
addresses = ["203.0.113.2", "203.0.113.3"]
[turn]
address = "203.0.113.4"
[signaling]
address = "203.0.113.4"
"""


def small_topology(*kinds: str, name: str = "small", deadline: float = 10) -> str:
    """TOML text of a lab with a NAT of each of ``kinds``, each named after its kind."""
    nats = "".join(f'[[nat]]\nname = "{k}"\ntype = "{k}"\n' for k in kinds)
    return _HEAD.format(name=name, deadline=f"{deadline:g}") + nats
