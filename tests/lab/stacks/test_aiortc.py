"""aiortc lab peers: offer/answer through the signaling server, per-path candidate filtering,
TURN over UDP and TCP, the data-channel echo and the bounded deadline.

The peers run inside a network namespace of their own (a bridge with one address), with natkit's
STUN responder, TURN relay and signaling server beside them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from natkit.lab.stacks import PeerConfig, PeerResult
from natkit.lab.stacks.aiortc import filter_sdp, main, run_peer

pytestmark = pytest.mark.timeout(60)

needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None,
    reason="needs root on Linux (network namespaces)",
)

IP = "10.99.0.1"
SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\n"
    "a=candidate:2 1 udp 1694498815 203.0.113.9 6000 typ srflx raddr 10.0.0.2 rport 5000\r\n"
    "a=candidate:3 1 udp 16777215 203.0.113.4 7000 typ relay raddr 203.0.113.9 rport 6001\r\n"
    "a=end-of-candidates\r\n"
)


@pytest.mark.parametrize("path", ["host", "srflx", "relay"])
def test_filter_sdp_keeps_only_the_path_candidates(path: str) -> None:
    sdp, kept = filter_sdp(SDP, path)
    assert len(kept) == 1 and f" typ {path}" in kept[0]
    assert sdp.count("a=candidate:") == 1
    assert "a=end-of-candidates" in sdp and sdp.startswith("v=0\r\n")


def test_cli_rejects_a_bad_signaling_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--role", "caller", "--room", "r", "--path", "host", "--signaling", "nowhere"])
    assert exc.value.code == 2
    assert "--signaling nowhere" in capsys.readouterr().err


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root on Linux (network namespaces)")
    from natkit.lab.netns import NetnsLab

    with NetnsLab() as lab:
        ns = lab.add_ns("peer")
        lab.add_bridge(ns, "br0")
        lab.add_addr(ns, "br0", f"{IP}/24")
        yield ns


def in_ns(ns: str, fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``fn()`` on a fresh event loop in a thread that entered ``ns``."""
    from natkit.lab.netns import enter_netns

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(ns)
            box["value"] = asyncio.run(fn())
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=target)
    th.start()
    th.join(50)
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _pair(path: str, ice: list[dict[str, Any]], deadline: float = 8.0) -> tuple[PeerResult, PeerResult]:
    from natkit.lab.signaling import SignalingServer
    from natkit.server.stun import StunServer
    from natkit.server.turn import TurnServer

    async with (
        SignalingServer(IP, 0) as sig,
        StunServer([(IP, 3478)], tcp=False),
        TurnServer([(IP, 3479)], users={"u": "p"}, realm="lab", relay_ip=IP, allow_peers=[f"{IP}/24"],
                   relay_to_relay=True),
    ):
        cfg = PeerConfig("room", path, (IP, sig.port), ice, deadline)
        a, b = await asyncio.gather(run_peer("caller", cfg), run_peer("callee", cfg))
        assert sig.relayed >= 3  # offer, answer, done
        return a, b


@pytest.mark.root
@needs_root
def test_host_path_connects_and_echoes(netns: str) -> None:
    a, b = in_ns(netns, lambda: _pair("host", []))
    assert (a.outcome, b.outcome) == ("connected", "connected"), (a.error, b.error)
    assert a.selected["local"]["type"] == "host" and a.selected["remote"]["type"] == "host"
    assert a.selected["local"]["address"] == IP
    # The caller's remote is the callee's local and vice versa.
    assert a.selected["remote"]["port"] == b.selected["local"]["port"]
    assert a.rtt_ms is not None and 0 < a.rtt_ms < 1000
    assert a.t_connect_ms is not None and a.t_connect_ms > 0
    assert all(" typ host" in c for c in a.signaled + b.signaled)


@pytest.mark.root
@needs_root
def test_srflx_path_signals_only_srflx(netns: str) -> None:
    a, b = in_ns(netns, lambda: _pair("srflx", [{"urls": f"stun:{IP}:3478"}]))
    assert (a.outcome, b.outcome) == ("connected", "connected"), (a.error, b.error)
    assert a.signaled and all(" typ srflx " in c for c in a.signaled + b.signaled)


@pytest.mark.root
@needs_root
@pytest.mark.parametrize("transports", [["udp"], ["tcp"], ["udp", "tcp"]])
def test_relay_path_over_turn(netns: str, transports: list[str]) -> None:
    ice = [{"urls": [f"turn:{IP}:3479?transport={t}" for t in transports], "username": "u", "credential": "p"}]
    a, b = in_ns(netns, lambda: _pair("relay", ice))
    assert (a.outcome, b.outcome) == ("connected", "connected"), (a.error, b.error)
    assert a.selected["local"]["type"] == "relay" and a.selected["remote"]["type"] == "relay"
    assert a.selected["local"]["relay_transport"] in transports
    assert sorted(r["transport"] for r in a.relays) == sorted(transports)
    assert all(" typ relay " in c for c in a.signaled + b.signaled)
    assert len(a.signaled) == len(transports)
    for r in a.relays:
        assert r["mapped"][0] == IP  # the address the TURN server saw


@pytest.mark.root
@needs_root
def test_a_lonely_caller_fails_at_its_deadline(netns: str) -> None:
    async def lonely() -> tuple[PeerResult, float]:
        from natkit.lab.signaling import SignalingServer

        async with SignalingServer(IP, 0) as sig:
            t0 = time.monotonic()
            res = await run_peer("caller", PeerConfig("alone", "host", (IP, sig.port), [], 2.0))
            return res, time.monotonic() - t0

    res, took = in_ns(netns, lonely)
    assert res.outcome == "failed" and "within 2 s" in (res.error or "")
    assert 1.9 < took < 6


@pytest.mark.root
@needs_root
def test_unreachable_signaling_is_a_failed_case_not_a_crash(netns: str) -> None:
    async def nowhere() -> PeerResult:
        return await run_peer("callee", PeerConfig("r", "host", (IP, 9), [], 3.0))

    res = in_ns(netns, nowhere)
    assert res.outcome == "failed" and "signaling" in (res.error or "")
