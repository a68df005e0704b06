"""The lab's servers: the RFC 5780 STUN responder, the TURN relay and the signaling server.

:class:`ServersSpec` says what to run (from the topology and its plan); :func:`run_servers`
runs it in the current network namespace until told to stop, which is what the servers' agent
does (:mod:`natkit.lab.agents`, op ``servers``) under either engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from natkit.lab.topology import Plan, Topology

__all__ = ["WEB_PORT", "ServersSpec", "run_servers"]

# Signaling and a STUN responder also listen on port 80: peers behind egress-443 reach them.
WEB_PORT = 80


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
    # A dual-stack internet: the same servers' IPv6 addresses.
    stun6: tuple[str, str] | None = None
    turn6: str | None = None
    signaling6: str | None = None
    # TURN over TLS: the port and the lab CA's server certificate and key (PEM texts).
    tls_port: int | None = None
    tls_cert_pem: str | None = None
    tls_key_pem: str | None = None

    @classmethod
    def of(cls, topo: Topology, plan: Plan, engine: str, tls: tuple[str, str] | None = None) -> ServersSpec:
        srv = topo.servers
        routed = [r.lan_net for r in plan.routers if not r.nat.behaviour.nat]
        routed += [r.outside_net6 or r.lan_net6 for r in plan.routers if r.lan_net6]
        nets = (topo.internet_net, *((topo.internet_net6,) if topo.internet_net6 else ()), *routed)
        return cls(
            srv.stun_addresses, srv.stun_port, srv.stun_alt_port, srv.turn_address, srv.turn_port, engine,
            srv.turn_realm, srv.turn_username, srv.turn_password, nets,
            srv.signaling_address, srv.signaling_port, srv.stun_addresses6, srv.turn_address6,
            srv.signaling_address6, srv.turn_tls_port if tls else None,
            tls[0] if tls else None, tls[1] if tls else None,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServersSpec:
        out = {**data, "stun": tuple(data["stun"]), "allow_peers": tuple(data["allow_peers"])}
        if data.get("stun6"):
            out["stun6"] = tuple(data["stun6"])
        return cls(**out)


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
        if s.stun6:  # RFC 5780 needs an alternate address of the same family: a second responder
            await stack.enter_async_context(
                StunServer([(s.stun6[0], s.stun_port)], alternate_ip=s.stun6[1], alternate_port=s.stun_alt_port)
            )
        listen = [(s.turn, s.turn_port), *(((s.turn6, s.turn_port),) if s.turn6 else ())]
        turn_kwargs: dict[str, Any] = dict(
            realm=s.realm, users={s.username: s.password}, relay_ip=[s.turn, *((s.turn6,) if s.turn6 else ())],
            allow_peers=list(s.allow_peers),
        )
        if s.tls_port and s.tls_cert_pem and s.tls_key_pem:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="natkit-lab-tls-"))
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_text(s.tls_cert_pem)
            key.write_text(s.tls_key_pem)
            turn_kwargs.update(tls_cert=str(cert), tls_key=str(key), tls_port=s.tls_port)
        if s.engine == "coturn":
            from natkit.server.coturn import CoturnServer

            await stack.enter_async_context(CoturnServer(listen=listen, **turn_kwargs))
        else:
            from natkit.server.turn import TurnServer

            await stack.enter_async_context(TurnServer(listen, **turn_kwargs))
        # The signaling server also serves the browser stack's page.
        hosts = [s.signaling, *((s.signaling6,) if s.signaling6 else ())]  # one server, one set of rooms
        extra = (WEB_PORT,) if s.signaling_port != WEB_PORT else ()
        await stack.enter_async_context(SignalingServer(hosts, s.signaling_port, pages=pages(), extra_ports=extra))
        # STUN over TCP on the web port too: what a probe behind a web-only firewall can reach.
        await stack.enter_async_context(StunServer([(s.stun[0], WEB_PORT)]))
        ready()
        await stop.wait()
