"""Headless Chromium as a WebRTC peer against aiortc: on loopback, then behind a real NAT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from natkit.lab.signaling import SignalingServer
from natkit.lab.stacks.chromium import PAGE_PATH, page_url, pages, run_browser_case

pytestmark = pytest.mark.timeout(60)

needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)"
)
needs_coturn = pytest.mark.skipif(
    shutil.which("turnserver") is None, reason="coturn is not installed (apt-get install coturn)"
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None,
    reason="needs root, network namespaces and nftables",
)

def test_page_url_carries_the_case() -> None:
    ice = [{"urls": ["turn:203.0.113.4:3478?transport=udp"], "username": "u", "credential": "p"}]
    url = urlsplit(page_url("http://203.0.113.4:8080", "r1", "relay", ice, deadline_s=8))
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.path == PAGE_PATH and url.netloc == "203.0.113.4:8080"
    assert q["room"] == "r1" and q["path"] == "relay" and q["deadline_ms"] == "8000"
    assert q["role"] == "caller"
    assert json.loads(q["ice"]) == ice
    with pytest.raises(Exception, match="unknown path"):
        page_url("http://x", "r", "bogus", [])


def test_page_is_self_contained() -> None:
    ctype, body = pages()[PAGE_PATH]
    text = body.decode()
    assert ctype.startswith("text/html")
    assert "RTCPeerConnection" in text and "getStats" in text
    # nothing fetched from elsewhere: no external scripts, styles or absolute URLs
    assert "<script src" not in text and "http://" not in text and "https://" not in text


# --------------------------------------------------------------------------------------------
# on loopback: coturn on 127.0.0.1, the lab's signaling server, Chromium and aiortc on this host


ENGINES = ("natkit", "coturn")


def _turn_class(engine: str) -> Any:
    if engine == "coturn":
        if shutil.which("turnserver") is None:
            pytest.skip("coturn is not installed (apt-get install coturn)")
        from natkit.server.coturn import CoturnServer

        return CoturnServer
    from natkit.server.turn import TurnServer

    return TurnServer


@contextlib.asynccontextmanager
async def _turn_loopback(engine: str, password: str = "secret") -> AsyncIterator[tuple[str, int]]:
    turn = _turn_class(engine)(
        listen=[("127.0.0.1", 0)], users={"lab": password}, realm="lab.natkit",
        relay_ip="127.0.0.1", allow_peers=["127.0.0.0/8"],
    )
    async with turn:
        yield turn.addresses_of("udp")[0]


def _relay(ip: str, port: int, password: str = "secret") -> list[dict[str, Any]]:
    return [{"urls": [f"turn:{ip}:{port}?transport=udp"], "username": "lab",
             "credential": password}]


@needs_chromium
@pytest.mark.parametrize("engine", ENGINES)
async def test_chromium_connects_to_aiortc_over_a_turn_relay_on_loopback(engine: str) -> None:
    async with _turn_loopback(engine) as (ip, port), SignalingServer(pages=pages()) as sig:
        rec = await run_browser_case((sig.host, sig.port), "relay", _relay(ip, port), deadline_s=12)
    assert rec["observed"] == "connected", json.dumps(rec)
    sel = rec["selected"]
    # Chromium's own view: its selected local candidate is a relay on our TURN server.
    assert sel["local"]["type"] == "relay" and sel["local"]["address"] == ip, sel
    assert rec["browser"]["local_types"] == ["relay"]
    assert "Chrome" in rec["browser"]["user_agent"]
    assert rec["browser"]["candidates"]["kept"] >= 1
    # the lab's aiortc peer (the callee) saw the same path from its side
    assert rec["peer"]["outcome"] == "connected", rec["peer"]
    assert rec["peer"]["selected"]["local"]["type"] == "relay"
    assert 0 < rec["t_connect_ms"] < 12000 and rec["rtt_ms"] is not None and rec["rtt_ms"] >= 0


@needs_chromium
async def test_wrong_turn_password_fails_within_the_deadline() -> None:
    async with _turn_loopback("natkit") as (ip, port), SignalingServer(pages=pages()) as sig:
        rec = await run_browser_case(
            (sig.host, sig.port), "relay", _relay(ip, port, "wrong"), deadline_s=3
        )
    assert rec["observed"] == "failed", rec
    assert rec["browser"] is not None and rec["browser"]["error"], rec
    assert rec["t_connect_ms"] is None and rec["wall_s"] < 25
    assert "relay" not in rec["browser"]["local_types"]


# --------------------------------------------------------------------------------------------
# behind a real NAT: Chromium in a NATed namespace, aiortc, coturn and signaling on the outside


_SERVERS = """
import asyncio, sys
from natkit.lab.stacks.chromium import pages
from natkit.lab.signaling import SignalingServer
engine, ip, nets = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
if engine == "coturn":
    from natkit.server.coturn import CoturnServer as Turn
else:
    from natkit.server.turn import TurnServer as Turn
async def main():
    turn = Turn(listen=[(ip, 3478)], users={"lab": "secret"}, realm="lab.natkit", relay_ip=ip,
                allow_peers=nets)
    async with turn, SignalingServer(ip, 8080, pages=pages()):
        print("ready", flush=True)
        await asyncio.sleep(120)
asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def _nat_lab(nat: str, engine: str = "natkit") -> AsyncIterator[tuple[Any, str, str]]:
    """(topology, peer namespace, peer IP); TURN + signaling run on the STUN server's host."""
    from natkit.lab.netns import NatTopology

    if engine == "coturn" and shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    async with NatTopology(nat) as topo:
        peer_ip = "203.0.113.20"
        peer_ns = await asyncio.to_thread(topo.add_public_host, "peer", peer_ip)
        srv = topo.server_ips[0]
        proc = topo.popen(
            topo.server_ns,
            [sys.executable, "-c", _SERVERS, engine, srv, ",".join(topo.public_nets)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
            assert line.strip() == "ready", "the lab servers did not start"
            yield topo, peer_ns, peer_ip
        finally:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)


@needs_root
@needs_chromium
@pytest.mark.parametrize("engine", ENGINES)
async def test_chromium_behind_symmetric_nat_relays_through_turn(engine: str) -> None:
    async with _nat_lab("symmetric", engine) as (topo, peer_ns, _peer_ip):
        srv = topo.server_ips[0]
        rec = await run_browser_case(
            (srv, 8080), "relay", _relay(srv, 3478), browser_netns=topo.client_ns,
            peer_netns=peer_ns, deadline_s=12,
        )
    assert rec["observed"] == "connected", json.dumps(rec)
    local, remote = rec["selected"]["local"], rec["selected"]["remote"]
    assert local["type"] == "relay" and local["address"] == srv, rec["selected"]
    assert remote["type"] == "relay" and remote["address"] == srv, rec["selected"]
    assert rec["peer"]["outcome"] == "connected", rec["peer"]


@needs_root
@needs_chromium
async def test_chromium_behind_full_cone_nat_connects_over_srflx() -> None:
    async with _nat_lab("full-cone") as (topo, peer_ns, peer_ip):
        srv = topo.server_ips[0]
        rec = await run_browser_case(
            (srv, 8080), "srflx", [{"urls": [f"stun:{srv}:3478"]}],
            browser_netns=topo.client_ns, peer_netns=peer_ns, deadline_s=12,
        )
    assert rec["observed"] == "connected", json.dumps(rec)
    local, remote = rec["selected"]["local"], rec["selected"]["remote"]
    # Directly between the NAT's public address and the peer: no relay in the path.
    assert local["type"] in ("srflx", "prflx") and local["address"] == topo.router_public_ip, local
    assert remote["type"] != "relay" and remote["address"] == peer_ip, remote
    assert "srflx" in rec["browser"]["local_types"]


@needs_root
@needs_chromium
async def test_chromium_behind_udp_blocking_firewall_fails_over_srflx() -> None:
    async with _nat_lab("udp-blocked") as (topo, peer_ns, _peer_ip):
        srv = topo.server_ips[0]
        rec = await run_browser_case(
            (srv, 8080), "srflx", [{"urls": [f"stun:{srv}:3478"]}],
            browser_netns=topo.client_ns, peer_netns=peer_ns, deadline_s=3,
        )
    assert rec["observed"] == "failed", rec
    assert rec["browser"] is not None and "srflx" not in rec["browser"]["local_types"]


# --------------------------------------------------------------------------------------------
# inside the lab: the netns engine's build of a small topology, Chromium behind each NAT


_LAB_TOML = """
[lab]
name = "browser"
case_deadline_s = 15
[internet]
subnet = "203.0.113.0/24"
[stun]
addresses = ["203.0.113.2", "203.0.113.3"]
[turn]
engine = "{engine}"
address = "203.0.113.4"
transports = ["udp", "tcp"]
[signaling]
address = "203.0.113.4"
port = 8080
[[nat]]
name = "symmetric"
type = "symmetric"
[[nat]]
name = "full-cone"
type = "full-cone"
"""


@needs_root
@needs_chromium
def test_browser_cases_through_the_orchestration_api(tmp_path: Any) -> None:
    """What any engine does: build, hand the agents to orchestrate(), finish(). Chromium runs
    in the caller's agent like any other stack."""
    from natkit.lab.cases import browser_cases
    from natkit.lab.engines import netns
    from natkit.lab.orchestrate import check_stacks, orchestrate
    from natkit.lab.runner import finish
    from natkit.lab.topology import load

    src = tmp_path / "lab.toml"
    src.write_text(_LAB_TOML.format(engine="natkit"))
    topo = load(src)
    cases = browser_cases(topo)
    assert [(c.nats, c.path, c.stacks) for c in cases] == [
        (("symmetric", "full-cone"), "srflx", ("chromium", "aiortc")),
        (("full-cone", "full-cone"), "srflx", ("chromium", "aiortc")),
        (("symmetric", "full-cone"), "relay", ("chromium", "aiortc")),
        (("full-cone", "full-cone"), "relay", ("chromium", "aiortc")),
    ]
    check_stacks(cases)
    plan = topo.plan(cases)
    with netns.open_lab(topo, plan, capture=True) as built:
        orch = asyncio.run(orchestrate(topo, plan, cases, built.agents, turn_engine="natkit"))
        result = finish(built, topo, plan, orch, turn_engine="natkit", started=0.0, browser=True)
    records = result.to_json()["browser_cases"]
    by = {(tuple(r["nats"]), r["path"]): r for r in records}
    for r in records:
        assert r["pass"], json.dumps(r)[:2000]
        assert r["caller_stack"] == "chromium" and r["browser"]["user_agent"]
        assert r["evidence"]["consistent"], r["evidence"]
    relay = by[(("symmetric", "full-cone"), "relay")]
    assert relay["observed"] == "connected" and relay["route"] == "relay"
    assert relay["selected"]["local"]["type"] == "relay"
    assert relay["selected"]["local"]["address"] == topo.servers.turn_address
    srflx = by[(("full-cone", "full-cone"), "srflx")]
    assert srflx["observed"] == "connected" and srflx["route"] == "direct"
    assert srflx["selected"]["local"]["address"] == plan.router("full-cone-1").public_ip


@needs_root
@needs_chromium
async def test_mdns_host_candidates_are_dropped_from_the_offer() -> None:
    async with _nat_lab("full-cone") as (topo, peer_ns, _peer_ip):
        srv = topo.server_ips[0]
        # Chromium as on the web: host addresses hidden behind <uuid>.local names.
        rec = await run_browser_case(
            (srv, 8080), "host", [], browser_netns=topo.client_ns, peer_netns=peer_ns,
            deadline_s=3, mdns=True,
        )
    assert rec["browser"] is not None, rec
    counts = rec["browser"]["candidates"]
    assert counts["mdns"] >= 1 and counts["kept"] == 0, counts
    # what aiortc received held no .local name (it cannot resolve them)
    # aiortc never saw a .local name; it learned Chromium from its checks (peer reflexive, at
    # the NAT's public address), and the case still connects because aiortc is public.
    assert rec["observed"] == "connected", json.dumps(rec)[:1500]
    remote = rec["peer"]["selected"]["remote"]
    assert remote["type"] == "prflx" and remote["address"] == topo.router_public_ip, remote
