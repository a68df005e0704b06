"""natkit's STUN and TURN servers on loopback and an iceServers list for them, for the
browser gathering tests: a STUN URL, both TURN URLs (UDP, TCP), and one with a wrong password."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from natkit.server.stun import StunServer
from natkit.server.turn import TurnServer


@contextlib.asynccontextmanager
async def loopback_servers() -> AsyncIterator[tuple[dict[str, Any], list[str]]]:
    """(configuration, the TURN server's URLs) while the servers run."""
    async with TurnServer(["127.0.0.1:0"], users={"alice": "secret"}, relay_ip="127.0.0.1",
                          allow_peers=["127.0.0.0/8"]) as turn, \
            StunServer(["127.0.0.1:0"]) as stun:
        stun_port = stun.addresses[0][1][1]
        yield {"iceServers": [
            {"urls": f"stun:127.0.0.1:{stun_port}"},
            {"urls": turn.urls, "username": "alice", "credential": "secret"},
            {"urls": turn.urls[0], "username": "alice", "credential": "wrong"},
        ]}, list(turn.urls)
