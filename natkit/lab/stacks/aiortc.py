"""The aiortc stack: one aiortc ``RTCPeerConnection`` per case, run inside the peer's namespace.

The offer/answer flow is WebRTC's. Both peers join a room on the signaling server; the caller
does createOffer -> setLocalDescription -> sends the offer; the callee setRemoteDescription ->
createAnswer -> setLocalDescription -> sends the answer; the caller setRemoteDescription. The
candidates travel inside the descriptions (aiortc gathers before it answers), filtered to the
path under test; candidates the other side trickles (docs/lab-peers.md) are added as they come:

* ``host``: no ICE servers; host candidates.
* ``srflx``: a STUN server only; only srflx candidates are signaled (the checks still leave
  from the host socket, the srflx candidate's base).
* ``relay``: a TURN server only, over every transport given (UDP and TCP), with the relay ICE
  transport policy; only relay candidates are signaled.

A data channel ``echo`` proves the path: the caller sends pings, the callee echoes them, the
caller measures the round trip. Each peer reports the selected candidate pair (types and
addresses, from aioice's nominated pair), the time from offer to an open channel, and the RTT.
Every case ends by ``deadline_s``: failing ICE checks would otherwise run for half a minute.

aiortc uses one TURN server per connection; :func:`_gather_relays` asks every TURN URL in
parallel so that a peer behind a UDP-blocking firewall still gets a relay over TCP.

:class:`AiortcPeer` is the :class:`~natkit.lab.stacks.base.Peer` adapter. Run one peer by hand:
``python -m natkit.lab.stacks.aiortc --role caller --room r1 --path srflx --signaling
203.0.113.4:8080 --ice-servers '[{"urls": "stun:203.0.113.2:3478"}]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import statistics
import sys
import time
from typing import Any, ClassVar

from natkit.lab.signaling import SignalingClient, SignalingError
from natkit.lab.stacks.base import ROLES, PeerConfig, PeerResult
from natkit.lab.stacks.capabilities import AIORTC, Capabilities

__all__ = ["AiortcPeer", "filter_sdp", "run_peer"]

GATHER_TIMEOUT = 3.0  # STUN/TURN answer in ms inside the lab; this bounds the dead ones
RELAY_GRACE = 0.5  # after the first relay candidate, how long the other transports may take
PINGS = 5


def filter_sdp(sdp: str, path: str, family: str | None = None) -> tuple[str, list[str]]:
    """``sdp`` with only the candidates of ``path``'s type (a path name or a candidate type)
    and, for host and srflx candidates, of ``family`` (``ipv4``/``ipv6``; ``nat64`` and None
    keep both); also those candidate lines."""
    want = {"relay-tls": "relay", "longevity": "srflx"}.get(path, path)
    keep: list[str] = []
    out: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            typ = parts[parts.index("typ") + 1] if "typ" in parts else ""
            if typ != want:
                continue
            v6 = len(parts) > 4 and ":" in parts[4]
            if typ != "relay" and family in ("ipv4", "ipv6") and v6 != (family == "ipv6"):
                continue
            keep.append(line[2:])
        out.append(line)
    return "\r\n".join(out) + "\r\n", keep


def _cand(c: Any, transports: dict[tuple[str, int], str] | None = None) -> dict[str, Any]:
    info = {"type": c.type, "address": c.host, "port": c.port}
    if transports and (c.host, c.port) in transports:
        info["relay_transport"] = transports[(c.host, c.port)]
    return info


def _turn_urls(ice_servers: list[dict[str, Any]]) -> list[tuple[tuple[str, int], str, str, str]]:
    """Every ``turn:``/``turns:`` URL as ((host, port), transport, username, password); a
    ``turns:`` URL's transport is ``tls``."""
    out = []
    for server in ice_servers:
        urls = server.get("urls", [])
        for url in [urls] if isinstance(urls, str) else urls:
            scheme, _, rest = url.partition(":")
            if scheme not in ("turn", "turns"):
                continue
            rest, _, query = rest.partition("?")
            host, _, port = rest.rpartition(":")
            transport = "udp"
            for kv in query.split("&"):
                if kv.startswith("transport="):
                    transport = kv.split("=", 1)[1]
            if scheme == "turns":
                transport = "tls"
            out.append(((host.strip("[]"), int(port)), transport, server.get("username", ""), server.get("credential", "")))
    return out


def _resolve_servers(ice_servers: list[dict[str, Any]], resolver: tuple[str, int] | None, family: str) -> list[dict[str, Any]]:
    """The ICE servers with host names replaced by addresses, asked of ``resolver`` (AAAA first
    for an IPv6 family, as an IPv6-only host would); literals and no resolver: unchanged."""
    if resolver is None:
        return ice_servers
    import dns.message
    import dns.query
    import dns.rdatatype

    cache: dict[str, str] = {}

    def lookup(name: str) -> str:
        if _is_ip(name) or name in cache:
            return cache.get(name, name)
        for rtype in (("AAAA", "A") if family != "ipv4" else ("A", "AAAA")):
            q = dns.message.make_query(name, rtype)
            with contextlib.suppress(Exception):
                resp = dns.query.udp(q, resolver[0], port=resolver[1], timeout=2.0)
                for rrset in resp.answer:
                    if rrset.rdtype == dns.rdatatype.from_text(rtype):
                        cache[name] = next(iter(rrset)).to_text()
                        return cache[name]
        return name

    out = []
    for server in ice_servers:
        urls = server.get("urls", [])
        fixed = []
        for url in [urls] if isinstance(urls, str) else urls:
            scheme, _, rest = url.partition(":")
            hostport, sep, query = rest.partition("?")
            host, _, port = hostport.rpartition(":")
            if host and not host.startswith("["):
                addr = lookup(host)
                host = f"[{addr}]" if ":" in addr else addr
            fixed.append(f"{scheme}:{host}:{port}{sep}{query}")
        out.append({**server, "urls": fixed})
    return out


def _tls_context(ca_pem: str | None) -> Any:
    """The context a ``turns:`` connection checks the server with: the lab CA only."""
    import ssl

    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    return ctx


async def _srflx6(connection: Any, protocol: Any, server: tuple[str, int], component: int) -> Any:
    """A server-reflexive candidate of an IPv6 host socket (aioice queries STUN over IPv4 only)."""
    from aioice import stun
    from aioice.candidate import Candidate, candidate_foundation, candidate_priority

    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    response, _ = await protocol.request(request, server)
    host, port = response.attributes["XOR-MAPPED-ADDRESS"]
    local = protocol.local_candidate
    return Candidate(
        foundation=candidate_foundation("srflx", "udp", local.host), component=component, transport="udp",
        priority=candidate_priority(component, "srflx"), host=host, port=port, type="srflx",
        related_address=local.host, related_port=local.port,
    )


def _gather_relays(connection: Any, turns: list[tuple[tuple[str, int], str, str, str]], relays: list[dict[str, Any]],
                   stun6: tuple[str, int] | None = None, ca_pem: str | None = None, family: str | None = None) -> None:
    """Make ``connection`` (an aioice Connection) allocate on every TURN URL in parallel,
    keep what answers within the grace period, and bound STUN gathering by GATHER_TIMEOUT;
    with ``stun6`` (an IPv6 STUN server) also gather IPv6 server-reflexive candidates. An
    ``ipv4`` case gathers on no IPv6 address: a candidate it does not signal would still answer
    checks, and the other side would select it as peer-reflexive over the wrong family."""
    from aioice import ice
    from aioice.candidate import candidate_foundation, candidate_priority

    original = connection.get_component_candidates
    connection.turn_server = None  # the relays are made here instead, one per URL
    if stun6 is not None and connection.stun_server == stun6:
        connection.stun_server = None  # aioice would resolve it as an IPv4 name

    async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5) -> list[Any]:
        if family == "ipv4":
            addresses = [a for a in addresses if ":" not in a]
        base = asyncio.ensure_future(original(component, addresses, timeout=GATHER_TIMEOUT))
        if stun6 is not None:
            await asyncio.wait([base], timeout=GATHER_TIMEOUT)
            six = [p for p in connection._protocols if ":" in getattr(p.local_candidate, "host", "")]
            found6 = await asyncio.gather(*(asyncio.wait_for(_srflx6(connection, p, stun6, component), GATHER_TIMEOUT) for p in six),
                                          return_exceptions=True)
            extra = [c for c in found6 if not isinstance(c, BaseException)]
            return [*(await base), *extra]
        tasks = {
            asyncio.ensure_future(
                ice.relayed_candidate(
                    component=component,
                    hide_related_address=False,
                    protocol_factory=lambda: ice.StunProtocol(connection),
                    turn_server=server,
                    turn_username=user,
                    turn_password=password,
                    turn_ssl=_tls_context(ca_pem) if transport == "tls" else False,
                    turn_transport="tcp" if transport == "tls" else transport,
                )
            ): transport
            for server, transport, user, password in turns
        }
        found: list[Any] = []
        pending = set(tasks)
        deadline = time.monotonic() + GATHER_TIMEOUT
        while pending:
            left = deadline - time.monotonic()
            if found:
                left = min(left, RELAY_GRACE)
            if left <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for task in done:
                if task.exception() is None:
                    candidate, protocol = task.result()
                    if tasks[task] in ("tcp", "tls"):
                        # Like browsers: TURN over TCP is the fallback, preferred least, and a
                        # foundation of its own (RFC 8445 §5.1.1.3, §5.1.2.1).
                        candidate.priority = candidate_priority(component, "relay", local_pref=0)
                        candidate.foundation = candidate_foundation("relay", "tcp", candidate.host)
                    connection._protocols.append(protocol)
                    found.append(candidate)
                    mapped = protocol.transport.get_extra_info("related_address")
                    relays.append(
                        {
                            "transport": tasks[task],
                            "relayed": [candidate.host, candidate.port],
                            "mapped": list(mapped) if mapped else None,
                        }
                    )
        for task in pending:
            task.cancel()
        return [*(await base), *found]

    connection.get_component_candidates = get_component_candidates


def _ice_connection(pc: Any) -> Any:
    return pc.sctp.transport.transport.iceGatherer._connection


def _selected(pc: Any, relays: list[dict[str, Any]]) -> dict[str, Any] | None:
    with contextlib.suppress(AttributeError):
        conn = _ice_connection(pc)
        pair = conn._nominated.get(1)
        if pair is None:
            return None
        transports = {tuple(r["relayed"]): r["transport"] for r in relays}
        return {"local": _cand(pair.local_candidate, transports), "remote": _cand(pair.remote_candidate)}
    return None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Inbox:
    """The other peer's messages, read by one task for the whole case: trickled candidates
    (``{"type": "candidate"}``, docs/lab-peers.md) go to the connection as they come, kept
    until the remote description is set; the rest wait for :meth:`wait`."""

    def __init__(self, sig: SignalingClient, pc: Any) -> None:
        self.sig, self.pc = sig, pc
        self.queue: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self.pending: list[Any] = []
        self.remote_set = False
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.sig.recv()
                if msg.get("type") == "peer-left":
                    self.queue.put_nowait(SignalingError("the other peer left the room"))
                    continue
                data = msg.get("data")
                if msg.get("type") != "relay" or not isinstance(data, dict):
                    continue
                if data.get("type") == "candidate":
                    await self._candidate(data.get("candidate"))
                else:
                    self.queue.put_nowait(data)
        except (SignalingError, ConnectionError, OSError, ValueError) as exc:
            self.queue.put_nowait(exc if isinstance(exc, SignalingError) else SignalingError(str(exc)))

    async def _candidate(self, cand: Any) -> None:
        from aiortc.sdp import candidate_from_sdp

        if not isinstance(cand, dict) or not isinstance(cand.get("candidate"), str) or not cand["candidate"]:
            return  # null: the end of the other side's gathering
        try:
            ice = candidate_from_sdp(cand["candidate"].removeprefix("a=").removeprefix("candidate:"))
        except (ValueError, IndexError):
            return
        ice.sdpMid, ice.sdpMLineIndex = cand.get("sdpMid"), cand.get("sdpMLineIndex")
        if not self.remote_set:
            self.pending.append(ice)
            return
        with contextlib.suppress(Exception):  # a candidate aiortc cannot use is the peer's loss
            await self.pc.addIceCandidate(ice)

    async def remote_applied(self) -> None:
        """The remote description is set: add the candidates that came before it."""
        self.remote_set = True
        pending, self.pending = self.pending, []
        for ice in pending:
            with contextlib.suppress(Exception):
                await self.pc.addIceCandidate(ice)

    async def wait(self, kind: str) -> dict[str, Any]:
        """The next relayed message of ``kind`` (the caller's loop ends at the overall deadline)."""
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                self.queue.put_nowait(item)
                raise item
            if item.get("type") == kind:
                return item

    def close(self) -> None:
        self.task.cancel()


async def run_peer(role: str, cfg: PeerConfig) -> PeerResult:
    """Run one side of a case; never raises for a failed case (see ``PeerResult.error``)."""
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCIceTransportPolicy,
        RTCPeerConnection,
        RTCSessionDescription,
    )

    result = PeerResult(role, cfg.path, AiortcPeer.name)
    ice_servers = await asyncio.get_running_loop().run_in_executor(
        None, _resolve_servers, cfg.ice_servers, cfg.resolver, cfg.family)
    turns = _turn_urls(ice_servers)
    stun6 = _stun6(ice_servers)
    # aiortc takes no turns: URLs and resolves STUN names itself: give it only what it handles.
    servers = [RTCIceServer(**s) for s in ice_servers if all(u.startswith("stun:") for u in _urls(s))]
    servers = [s for s in servers if stun6 is None]
    policy = RTCIceTransportPolicy.RELAY if cfg.candidate_type == "relay" else RTCIceTransportPolicy.ALL
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))
    sig: SignalingClient | None = None
    inbox: _Inbox | None = None
    opened = asyncio.get_running_loop().create_future()
    done = asyncio.get_running_loop().create_future()

    relays: list[dict[str, Any]] = []
    result.relays = relays

    def prepare_gathering() -> None:
        _gather_relays(_ice_connection(pc), turns, relays, stun6, cfg.ca_pem, cfg.family)

    async def body() -> None:
        nonlocal sig, inbox
        sig = await SignalingClient.connect(*cfg.signaling)
        members = await sig.join(cfg.room)
        if role == "caller":
            if members < 2:
                while (await sig.recv()).get("type") != "peer-joined":
                    pass
            inbox = _Inbox(sig, pc)
            start = time.monotonic()
            channel = pc.createDataChannel("echo")
            echoes: asyncio.Queue[str] = asyncio.Queue()
            channel.on("open", lambda: _resolve(opened))
            channel.on("message", lambda m: echoes.put_nowait(m))
            prepare_gathering()
            await pc.setLocalDescription(await pc.createOffer())
            sdp, result.signaled = filter_sdp(pc.localDescription.sdp, cfg.path, cfg.family)
            await sig.relay({"type": "offer", "sdp": sdp})
            answer = await inbox.wait("answer")
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            await inbox.remote_applied()
            await opened
            result.t_connect_ms = round((time.monotonic() - start) * 1000, 1)
            rtts = []
            for n in range(PINGS):
                sent = time.monotonic()
                channel.send(f"ping {n}")
                while await echoes.get() != f"ping {n}":
                    pass
                rtts.append((time.monotonic() - sent) * 1000)
            result.rtt_ms = round(statistics.median(rtts), 2)
            if cfg.idle_s:
                # Mapping expiry mid-call: only ICE's own consent checks cross the NATs now.
                result.selected = _selected(pc, relays)
                await asyncio.sleep(cfg.idle_s)
                channel.send("after idle")
                while await echoes.get() != "after idle":
                    pass
            result.outcome = "connected"
            result.selected = _selected(pc, relays)
            await sig.relay({"type": "done"})
        else:
            inbox = _Inbox(sig, pc)
            offer = await inbox.wait("offer")
            start = time.monotonic()

            @pc.on("datachannel")
            def on_channel(channel: Any) -> None:
                _resolve(opened)
                channel.on("message", lambda m: channel.send(m))

            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await inbox.remote_applied()
            prepare_gathering()
            await pc.setLocalDescription(await pc.createAnswer())
            sdp, result.signaled = filter_sdp(pc.localDescription.sdp, cfg.path, cfg.family)
            await sig.relay({"type": "answer", "sdp": sdp})
            await opened
            result.t_connect_ms = round((time.monotonic() - start) * 1000, 1)
            # Read the pair now: once the caller is done it closes, and so does this side.
            result.selected = _selected(pc, relays)
            await inbox.wait("done")
            result.outcome = "connected"
            # The caller may close once it has this (a browser is killed from outside).
            with contextlib.suppress(ConnectionError, OSError):
                await sig.relay({"type": "bye"})
        done.set_result(None)

    try:
        await asyncio.wait_for(body(), cfg.deadline_s)
    except TimeoutError:
        result.error = f"not connected within {cfg.deadline_s:g} s"
        if result.t_connect_ms is not None:
            result.error = f"connected but the echo did not finish within {cfg.deadline_s:g} s"
            result.outcome = "failed"
    except (SignalingError, ConnectionError, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if result.selected is None:
            result.selected = _selected(pc, relays)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), 3)
        if inbox is not None:
            inbox.close()
        if sig is not None:
            await sig.close()
    return result


class AiortcPeer:
    """aiortc (aioice underneath) as a lab stack: caller and callee, reports its allocations."""

    name: ClassVar[str] = "aiortc"
    roles: ClassVar[tuple[str, ...]] = ROLES
    heavy: ClassVar[bool] = False
    parallel: ClassVar[int] = 0  # the orchestrator's CPU-aware limit
    start_s: ClassVar[float] = 0.0
    capabilities: ClassVar[Capabilities] = AIORTC

    def check(self) -> None:
        """Import aiortc now: it is heavy, and forked agents then share it."""
        import aiortc  # noqa: F401

    def max_duration_s(self, config: PeerConfig) -> float:
        return config.deadline_s + 3.0  # pc.close() is bounded by 3 s (the deadline includes idle_s)

    async def start(self, role: str, config: PeerConfig) -> PeerResult:
        return await run_peer(role, config)


def _urls(server: dict[str, Any]) -> list[str]:
    urls = server.get("urls", [])
    return [urls] if isinstance(urls, str) else list(urls)


def _stun6(ice_servers: list[dict[str, Any]]) -> tuple[str, int] | None:
    """The first ``stun:`` server given by an IPv6 address, if any."""
    for server in ice_servers:
        for url in _urls(server):
            if url.startswith("stun:["):
                host, _, port = url[5:].partition("]:")
                return host.strip("["), int(port.split("?")[0])
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run one peer and print its result as JSON (exit 0 when it connected, 1 otherwise)."""
    ap = argparse.ArgumentParser(prog="python -m natkit.lab.stacks.aiortc", description="run one natkit lab peer (aiortc)")
    ap.add_argument("--role", choices=("caller", "callee"), required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--path", choices=("host", "srflx", "relay"), required=True)
    ap.add_argument("--signaling", required=True, metavar="IP:PORT")
    ap.add_argument("--ice-servers", default="[]", metavar="JSON")
    ap.add_argument("--deadline", type=float, default=10.0)
    args = ap.parse_args(argv)
    host, _, port = args.signaling.rpartition(":")
    if not _is_ip(host) or not port.isdigit():
        ap.error(f"--signaling {args.signaling}: expected IP:PORT")
    try:
        servers = json.loads(args.ice_servers)
    except ValueError as exc:
        ap.error(f"--ice-servers: not JSON: {exc}")
    cfg = PeerConfig(args.room, args.path, (host, int(port)), servers, args.deadline)
    result = asyncio.run(run_peer(args.role, cfg))
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0 if result.outcome == "connected" else 1


if __name__ == "__main__":
    sys.exit(main())
