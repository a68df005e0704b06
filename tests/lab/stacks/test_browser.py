"""The browser stacks (Chromium, Firefox) as lab peers on loopback: every browser as caller and
callee against itself, the other browser and aiortc, over host and TURN (UDP and TCP).

The browsers start once for the module (a caller-side and a callee-side process of each, as
two peer namespaces would have) and every case opens a tab of its own; the module prints
the start and per-case times (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from natkit.ice.browsers.process import group_alive
from natkit.lab.signaling import SignalingServer
from natkit.lab.stacks import PeerConfig, PeerResult, get
from natkit.lab.stacks.aiortc import AiortcPeer
from natkit.lab.stacks.browser import BrowserPeer, _contract_case, case_params, contract_main, pages
from natkit.lab.stacks.capabilities import Capabilities
from natkit.lab.stacks.chromium import ChromiumPeer
from natkit.lab.stacks.firefox import FirefoxPeer
from natkit.server.turn import TurnServer

pytestmark = pytest.mark.timeout(120)
aio = pytest.mark.asyncio(loop_scope="module")  # the module's browsers live on its loop

HAVE = {"chromium": shutil.which("chromium") is not None,
        "firefox": shutil.which("firefox-esr") is not None or shutil.which("firefox") is not None,
        "aiortc": True}
INSTALL = {"chromium": "apt-get install chromium", "firefox": "apt-get install firefox-esr"}
DEADLINE_S = 12.0


def _need(*names: str) -> None:
    for name in names:
        if not HAVE[name]:
            pytest.skip(f"{name} is not installed ({INSTALL[name]})")


# --------------------------------------------------------------------------------------------
# no browser needed


def test_both_browsers_are_registered_stacks_for_both_roles() -> None:
    for name, cls in (("chromium", ChromiumPeer), ("firefox", FirefoxPeer)):
        peer = get(name)
        assert isinstance(peer, cls) and peer.roles == ("caller", "callee") and peer.heavy
        caps = cls.capabilities
        assert isinstance(caps, Capabilities) and caps.known
        assert caps.turn and caps.consent_freshness is True and caps.prflx is True
    assert FirefoxPeer.capabilities.turn_tls_ip_literal is False
    assert ChromiumPeer.capabilities.turn_tls_ip_literal is True


def test_case_params_follow_the_path() -> None:
    ice = [{"urls": ["turn:203.0.113.4:3478"], "username": "u", "credential": "p"}]
    relay = case_params("callee", PeerConfig("r1", "relay", ("203.0.113.4", 8080), ice, 9.5))
    assert relay["candidateTypes"] == ["relay"] and relay["iceTransportPolicy"] == "relay"
    assert relay["role"] == "callee" and relay["deadlineMs"] == 9500 and relay["iceServers"] == ice
    srflx = case_params("caller", PeerConfig("r1", "srflx", ("203.0.113.4", 8080), [], 10))
    assert srflx["candidateTypes"] == ["srflx"] and srflx["iceTransportPolicy"] == "all"
    assert case_params("caller", PeerConfig("r", "relay-tls", ("h", 1), [], 4))["candidateTypes"] == ["relay"]


def _contract_env(**over: str) -> dict[str, str]:
    env = {"NATKIT_PEER_CONTRACT": "1", "NATKIT_ROLE": "callee", "NATKIT_ROOM": "r1",
           "NATKIT_SIGNALING_URL": "ws://203.0.113.4:8080/ws", "NATKIT_PATH": "relay",
           "NATKIT_ICE_CONFIG": json.dumps({"iceServers": [{"urls": "turn:203.0.113.4:3478"}],
                                            "iceTransportPolicy": "relay"}),
           "NATKIT_CANDIDATE_TYPES": "relay", "NATKIT_DEADLINE_S": "10", "NATKIT_STACK": "chromium"}
    env.update(over)
    return env


def test_the_contract_environment_becomes_a_case() -> None:
    url, params, deadline = _contract_case(_contract_env())
    assert url == "http://203.0.113.4:8080/browser" and deadline == 10
    assert params["role"] == "callee" and params["candidateTypes"] == ["relay"]
    assert params["iceTransportPolicy"] == "relay" and params["signalingUrl"].startswith("ws://")
    _, params, _ = _contract_case(_contract_env(NATKIT_CANDIDATE_TYPES="host,srflx", NATKIT_PATH="srflx",
                                                NATKIT_ICE_CONFIG="{}"))
    assert params["candidateTypes"] == ["host", "srflx"] and params["iceTransportPolicy"] == "all"


@pytest.mark.parametrize("bad", [{"NATKIT_ROLE": "boss"}, {"NATKIT_SIGNALING_URL": "http://x/ws"},
                                 {"NATKIT_ICE_CONFIG": "[not json"}, {"NATKIT_DEADLINE_S": "soon"}])
def test_a_bad_contract_environment_exits_2_without_a_browser(
        bad: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert contract_main(ChromiumPeer(), _contract_env(**bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith("chromium peer: ") and len(err.strip().splitlines()) == 1
    env = _contract_env()
    del env["NATKIT_ROOM"]
    assert contract_main(ChromiumPeer(), env) == 2
    assert "NATKIT_ROOM" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# on loopback: natkit's TURN (UDP and TCP) and signaling server on 127.0.0.1


@dataclass
class Loopback:
    signaling: tuple[str, int]
    turn: dict[str, str]  # transport -> turn: URL
    peers: dict[str, tuple[Any, Any]]  # stack -> (caller-side adapter, callee-side adapter)
    times: list[tuple[str, float]]

    def ice(self, transport: str, password: str = "secret") -> list[dict[str, Any]]:
        return [{"urls": [self.turn[transport]], "username": "lab", "credential": password}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loopback() -> AsyncIterator[Loopback]:
    turn = TurnServer([("127.0.0.1", 0)], users={"lab": "secret"}, realm="lab.natkit",
                      relay_ip="127.0.0.1", allow_peers=["127.0.0.0/8"])
    peers: dict[str, tuple[Any, Any]] = {
        "chromium": (ChromiumPeer(), ChromiumPeer()), "firefox": (FirefoxPeer(), FirefoxPeer()),
        "aiortc": (AiortcPeer(), AiortcPeer())}
    lab = Loopback(("127.0.0.1", 0), {}, peers, [])
    async with turn, SignalingServer(pages=pages()) as sig:
        lab.signaling = (sig.host, sig.port)
        lab.turn = {u.rsplit("=", 1)[1]: u for u in turn.urls}
        try:
            yield lab
        finally:
            for pair in peers.values():
                for p in pair:
                    if isinstance(p, BrowserPeer):
                        await p.close()
    starts = [f"{p.name} {t:.2f} s" for pair in peers.values() for p in pair
              if isinstance(p, BrowserPeer) for t in p.start_times]
    print("\nbrowser starts: " + ", ".join(starts))
    print("cases: " + ", ".join(f"{name} {t:.2f} s" for name, t in lab.times))


def _typ(candidate: str) -> str:
    parts = candidate.split()
    return parts[parts.index("typ") + 1]


PAIRS = [("chromium", "chromium"), ("firefox", "firefox"), ("firefox", "chromium"),
         ("chromium", "firefox"), ("chromium", "aiortc"), ("aiortc", "chromium"),
         ("firefox", "aiortc"), ("aiortc", "firefox")]
PATHS = ["host", "relay-udp", "relay-tcp"]


async def _case(lab: Loopback, caller: str, callee: str, path: str, ice: list[dict[str, Any]],
                deadline: float = DEADLINE_S) -> tuple[PeerResult, PeerResult, float]:
    a, b = lab.peers[caller][0], lab.peers[callee][1]
    room = f"{caller}-{callee}-{path}-{os.urandom(3).hex()}"
    # Each side waits for the other's start on top of the case's deadline, as in a lab run.
    cfg_a = PeerConfig(room, path, lab.signaling, ice, deadline + b.start_s)
    cfg_b = PeerConfig(room, path, lab.signaling, ice, deadline + a.start_s)
    t0 = time.monotonic()
    ra, rb = await _pair(asyncio.ensure_future(a.start("caller", cfg_a)),
                         asyncio.ensure_future(b.start("callee", cfg_b)))
    return ra, rb, time.monotonic() - t0


async def _pair(*sides: asyncio.Future[PeerResult]) -> tuple[PeerResult, PeerResult]:
    """Both sides; once one has failed the other gets a second, then is cancelled (what the
    orchestrator does)."""
    done, _ = await asyncio.wait(sides, return_when=asyncio.FIRST_COMPLETED)
    if not done.pop().result().connected:
        for other in sides:
            try:
                await asyncio.wait_for(asyncio.shield(other), 1.0)
            except TimeoutError:
                other.cancel()
    out = []
    for role, side in zip(("caller", "callee"), sides):
        try:
            out.append(await side)
        except asyncio.CancelledError:
            out.append(PeerResult(role, "", error="cancelled after the other side failed"))
    return out[0], out[1]


@aio
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
async def test_browsers_connect_as_caller_and_callee(loopback: Loopback, pair: tuple[str, str], path: str) -> None:
    _need(*pair)
    kind, _, transport = path.partition("-")
    ice = loopback.ice(transport) if kind == "relay" else []
    caller, callee, took = await _case(loopback, *pair, kind, ice)
    loopback.times.append((f"{pair[0]}->{pair[1]} {path}", took))
    for r in (caller, callee):
        assert r.outcome == "connected", (r.stack, r.role, r.error, json.dumps(r.report)[:1500])
        assert r.t_connect_ms is not None and 0 < r.t_connect_ms < DEADLINE_S * 1000
        local = r.selected["local"] if r.selected else None
        assert local is not None and local["type"] == kind, (r.stack, r.role, r.selected)
        if r.stack == "aiortc":
            if kind == "relay":
                assert local["relay_transport"] == transport, r.selected
            continue
        # the browser's own getStats view of the selected pair
        assert local["protocol"] == "udp" and r.selected["remote"]["type"] == kind, r.selected
        assert r.report is not None and r.report["user_agent"]
        if kind == "relay":
            assert local["address"] == "127.0.0.1" and local["relay_protocol"] == transport, r.selected
            assert r.report["relay_protocol"] == transport and r.report["local_types"] == ["relay"]
            assert r.signaled and all(_typ(c) == "relay" for c in r.signaled)
        else:
            assert r.report["relay_protocol"] is None
            assert r.signaled and all(_typ(c) == "host" for c in r.signaled)
        assert r.report["candidates"]["mdns"] == 0  # raw addresses in the lab
    assert caller.rtt_ms is not None and caller.rtt_ms >= 0
    assert took < DEADLINE_S


@aio
@pytest.mark.parametrize("stack", ["chromium", "firefox"])
async def test_a_wrong_turn_password_fails_by_the_deadline(loopback: Loopback, stack: str) -> None:
    _need(stack)
    caller, callee, took = await _case(loopback, stack, "aiortc", "relay",
                                       loopback.ice("udp", "wrong"), deadline=3.0)
    loopback.times.append((f"{stack} wrong password", took))
    assert caller.outcome == "failed" and callee.outcome == "failed"
    assert caller.error and "deadline" in caller.error, caller.error
    assert caller.report is not None and "relay" not in caller.report["local_types"]
    assert took < 3.0 + 2


@aio
async def test_a_browser_that_died_is_started_again(loopback: Loopback) -> None:
    _need("chromium")
    peer = loopback.peers["chromium"][0]
    driver, _ = await peer.browser()
    driver.process.kill()
    await asyncio.to_thread(driver.process.process.wait, 5)
    starts = len(peer.start_times)
    caller, callee, _ = await _case(loopback, "chromium", "aiortc", "relay", loopback.ice("udp"))
    assert caller.outcome == "connected" and callee.outcome == "connected", caller.error
    assert len(peer.start_times) == starts + 1
    assert caller.report is not None and caller.report["timing"]["browser_start_s"] is not None
    assert not driver.process.root.exists()


@aio
@pytest.mark.parametrize("stack", ["firefox", "chromium"])
async def test_a_browser_at_fault_is_started_again_and_the_old_one_examined(loopback: Loopback, stack: str) -> None:
    """What the orchestrator asks before a second attempt (natkit.lab.retry): a new browser
    process, and what a new tab of the old one on the cases' page gathered (here: it worked)."""
    _need(stack, "aiortc")
    peer = loopback.peers[stack][1]
    cfg = PeerConfig("prepare", "host", loopback.signaling, [], DEADLINE_S)
    old, _ = await peer.browser(cfg)
    took, before = await peer.restart(cfg)
    assert took > 0 and peer._driver is not None and peer._driver is not old
    assert before.startswith("a new tab of it gathered") and "gathered 0 " not in before, before
    assert "iceGatheringState complete" in before, before
    assert not old.process.root.exists() and not group_alive(old.process.process.pid)
    # the new one takes cases
    caller, callee, _ = await _case(loopback, "aiortc", stack, "host", [])
    assert caller.outcome == callee.outcome == "connected", (caller.error, callee.error)
    # a browser that had exited is only started
    assert peer._driver is not None
    peer._driver.process.kill()
    await asyncio.to_thread(peer._driver.process.process.wait, 5)
    _, before = await peer.restart(cfg)
    assert before == "it had exited" and peer._driver.process.alive()


@aio
async def test_cases_in_one_browser_run_side_by_side(loopback: Loopback) -> None:
    """Three cases at once through the same two Firefox processes: a tab each, no crosstalk."""
    _need("firefox")
    results = await asyncio.gather(*(_case(loopback, "firefox", "firefox", "relay", loopback.ice(t))
                                     for t in ("udp", "tcp", "udp")))
    for caller, callee, _ in results:
        assert caller.outcome == callee.outcome == "connected", (caller.error, callee.error)
    ports = {c.selected["local"]["port"] for c, _, _ in results if c.selected}
    assert len(ports) == 3


@aio
async def test_browsers_leave_nothing_behind(loopback: Loopback) -> None:
    roots = []
    for name in ("chromium", "firefox"):
        for p in loopback.peers[name]:
            if p._driver is not None:
                roots.append(p._driver.process)
                await p.close()
    assert roots, "no browser ran"
    for proc in roots:
        assert not proc.root.exists(), proc.root
        assert not group_alive(proc.process.pid)


# --------------------------------------------------------------------------------------------
# a browser as a contract peer command (docs/lab-peers.md), against aiortc


@aio
async def test_chromium_runs_as_a_contract_peer_command(loopback: Loopback) -> None:
    _need("chromium")
    room = f"contract-{os.urandom(3).hex()}"
    host, port = loopback.signaling
    env = {**os.environ, **_contract_env(
        NATKIT_ROOM=room, NATKIT_SIGNALING_URL=f"ws://{host}:{port}/ws",
        NATKIT_ICE_CONFIG=json.dumps({"iceServers": loopback.ice("tcp"), "iceTransportPolicy": "relay"}),
        NATKIT_DEADLINE_S="15")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "natkit.lab.stacks.chromium", env=env, cwd="/",
        stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    caller = await AiortcPeer().start("caller", PeerConfig(room, "relay", loopback.signaling,
                                                           loopback.ice("udp"), 15))
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-800:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["natkit_peer"] == 1 and report["connected"] is True
    assert report["selected"]["local"]["type"] == "relay" and report["relay_protocol"] == "tcp"
    assert report["stack"].startswith("chromium ")
    assert caller.outcome == "connected", caller.error



# --------------------------------------------------------------------------------------------
# in a lab: the netns engine, two NATs, the browsers in the peers' agents like any stack



@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                    reason="needs root, network namespaces and nftables")
def test_browsers_behind_nats_in_a_lab(tmp_path: Any) -> None:
    """Each browser as caller and callee, over srflx and relay, behind real NATs (the
    orchestration API as any engine drives it): the cases pass with packet evidence."""
    _need("chromium", "firefox")
    from natkit.lab.engines import netns
    from natkit.lab.orchestrate import check_stacks, orchestrate
    from natkit.lab.runner import finish
    from natkit.lab.topology import Case, load
    from tests.lab.stacks.test_chromium import _LAB_TOML  # the same two NATs

    src = tmp_path / "lab.toml"
    src.write_text(_LAB_TOML.format(engine="natkit"))
    topo = load(src)
    cases = [
        Case(("full-cone", "full-cone"), "srflx", stacks=("chromium", "firefox")),
        Case(("symmetric", "full-cone"), "relay", stacks=("firefox", "chromium")),
        Case(("symmetric", "full-cone"), "srflx", stacks=("aiortc", "firefox")),
        Case(("full-cone", "full-cone"), "relay", stacks=("chromium", "aiortc")),
    ]
    check_stacks(cases)
    plan = topo.plan(cases)
    t0 = time.monotonic()
    with netns.open_lab(topo, plan, capture=True) as built:
        t1 = time.monotonic()
        orch = asyncio.run(orchestrate(topo, plan, cases, built.agents, turn_engine="natkit"))
        t2 = time.monotonic()
        result = finish(built, topo, plan, orch, turn_engine="natkit", started=t0, browser=True)
    print(f"\nlab up {t1 - t0:.1f} s, {len(cases)} browser cases {t2 - t1:.1f} s "
          f"(browser_s {orch.timings.get('browser_s', 0):.1f}), total {time.monotonic() - t0:.1f} s")
    by = {(c.case.stacks, c.case.path): c for c in result.cases}
    for c in result.cases:
        caller, callee = c.caller, c.callee
        print(f"  {c.case.id}: {c.observed} route={c.route} "
              f"caller {caller.selected and caller.selected['local']} "
              f"timing {caller.report and caller.report.get('timing')}")
        assert c.passed, json.dumps(c.to_json(), default=str)[:2500]
        assert c.observed == "connected" and caller.connected and callee.connected
    relay = by[(("firefox", "chromium"), "relay")]
    for side in (relay.caller, relay.callee):
        assert side.selected["local"]["type"] == "relay", side.selected
        assert side.selected["local"]["address"] == topo.servers.turn_address
        assert side.report is not None and side.report["relay_protocol"] == "udp"
    srflx = by[(("chromium", "firefox"), "srflx")]
    assert srflx.route == "direct"
    caller_pub = plan.router("full-cone-1").public_ip
    assert srflx.caller.selected["local"]["address"] == caller_pub, srflx.caller.selected
    assert srflx.callee.selected["remote"]["address"] == caller_pub, srflx.callee.selected
