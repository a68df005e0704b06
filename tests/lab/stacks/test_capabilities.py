"""Every stack's ``capabilities`` is one :class:`Capabilities` shape, with what the
expectations read (natkit/lab/stack_expect.py) filled in for natkit's own stacks."""

from __future__ import annotations

import pytest

from natkit.lab import stacks
from natkit.lab.stacks.capabilities import Capabilities
from natkit.lab.stacks.command import CommandPeer

READ_BY_EXPECTATIONS = ("turn", "dtls_certificate", "dtls_client_suites", "turn_tls_ip_literal",
                        "redundant_srflx", "gives_up_without_candidates", "prflx", "tcp_candidates")


@pytest.mark.parametrize("name", stacks.names())
def test_every_builtin_stack_has_known_capabilities(name: str) -> None:
    caps = stacks.get(name).capabilities  # type: ignore[attr-defined]
    assert isinstance(caps, Capabilities) and caps.known
    for field in READ_BY_EXPECTATIONS:
        assert getattr(caps, field) is not None, (name, field)
    assert caps.sources, name
    data = caps.to_json()
    assert data["stack"] == caps.stack and isinstance(data["turn"], list)


def test_a_users_peer_is_unknown() -> None:
    peer = CommandPeer.from_spec("mine=true")
    assert isinstance(peer.capabilities, Capabilities) and not peer.capabilities.known
