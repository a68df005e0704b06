"""The lab's servers: the RFC 5780 STUN responder, the TURN relay and the signaling server.

:class:`ServersSpec` says what to run (from the topology and its plan); :func:`run_servers`
runs it in the current network namespace until told to stop, which is what the servers' agent
does (:mod:`natkit.lab.agents`, op ``servers``) under either engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from natkit.lab.topology import Plan, Topology

__all__ = ["ServersSpec", "run_servers"]


@dataclass(frozen=True)
class ServersSpec:
    stun: tuple[str, str]  # primary and alternate address (RFC 5780)
    stun_port: int
    stun_alt_port: int
    turn: str
    turn_port: int
    engine: str  # "natkit" | "coturn"
    realm: str
    username: str
    password: str
    allow_peers: tuple[str, ...]  # where relayed data may go: the lab's public networks
    signaling: str
    signaling_port: int

    @classmethod
    def of(cls, topo: Topology, plan: Plan, engine: str) -> ServersSpec:
        srv = topo.servers
        routed = [r.lan_net for r in plan.routers if not r.nat.behaviour.nat]
        return cls(
            srv.stun_addresses, srv.stun_port, srv.stun_alt_port, srv.turn_address, srv.turn_port, engine,
            srv.turn_realm, srv.turn_username, srv.turn_password, (topo.internet_net, *routed),
            srv.signaling_address, srv.signaling_port,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServersSpec:
        return cls(**{**data, "stun": tuple(data["stun"]), "allow_peers": tuple(data["allow_peers"])})


async def run_servers(spec: ServersSpec, ready: Callable[[], None], stop: asyncio.Event) -> None:
    """Run STUN, TURN and signaling; call ``ready()`` once all listen; return when ``stop`` is
    set. Cancelled or stopped, the exit stack unwinds, so coturn stops and removes its files."""
    from natkit.lab.signaling import SignalingServer
    from natkit.lab.stacks.browser import pages
    from natkit.server.stun import StunServer

    s = spec
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            StunServer([(s.stun[0], s.stun_port)], alternate_ip=s.stun[1], alternate_port=s.stun_alt_port)
        )
        turn_kwargs: dict[str, Any] = dict(
            realm=s.realm, users={s.username: s.password}, relay_ip=s.turn, allow_peers=list(s.allow_peers)
        )
        if s.engine == "coturn":
            from natkit.server.coturn import CoturnServer

            await stack.enter_async_context(CoturnServer(listen=[(s.turn, s.turn_port)], **turn_kwargs))
        else:
            from natkit.server.turn import TurnServer

            await stack.enter_async_context(TurnServer([(s.turn, s.turn_port)], **turn_kwargs))
        # The signaling server also serves the browser stack's page.
        await stack.enter_async_context(SignalingServer(s.signaling, s.signaling_port, pages=pages()))
        ready()
        await stop.wait()
