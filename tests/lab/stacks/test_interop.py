"""The lab's stacks against each other: pion, libnice (webrtcbin), the reference peer in
examples/ (through the command adapter, with trickled candidates) and aiortc, each as caller and
as callee, over host candidates and over TURN relays (UDP and TCP).

Everything runs inside one network namespace of the test's own (a bridge with one address),
with natkit's signaling server, STUN responder and TURN relay beside the peers; the whole
matrix runs once per module, its cases at once, and each test checks its cells. A pair whose
DTLS cannot meet (a server certificate type the client does not take, per the stacks'
``capabilities``) must fail, and does: that is the gap it documents.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.errors import PrerequisiteError
from natkit.lab import stacks
from natkit.lab.stacks import PeerConfig, PeerResult
from natkit.lab.stacks.capabilities import AIORTC, Capabilities
from natkit.lab.stacks.command import CommandPeer

pytestmark = [pytest.mark.timeout(120), pytest.mark.root]

IP = "10.99.1.1"
STUN, TURN = 3478, 3479
DEADLINE = 10.0
FAIL_DEADLINE = 4.0
REFERENCE = Path(__file__).resolve().parents[3] / "examples" / "lab-peer" / "peer.py"

ICE = {
    "host": [],
    "relay-udp": [{"urls": [f"turn:{IP}:{TURN}?transport=udp"], "username": "u", "credential": "p"}],
    "relay-tcp": [{"urls": [f"turn:{IP}:{TURN}?transport=tcp"], "username": "u", "credential": "p"}],
}

# (caller, callee, path): each of pion, libnice and the reference peer as caller and as callee
# against aiortc on every path, and against each other.
CASES = [
    *[(a, b, p) for p in ICE for a, b in [
        ("pion", "aiortc"), ("aiortc", "pion"), ("libnice", "aiortc"), ("aiortc", "libnice"),
        ("pion", "libnice"), ("libnice", "pion"),
    ]],
    *[(a, b, "host") for a, b in [("ref", "aiortc"), ("aiortc", "ref"), ("ref-trickle", "pion"),
                                  ("pion", "ref-trickle"), ("ref-trickle", "libnice"), ("ref", "libnice")]],
    ("ref-trickle", "pion", "relay-tcp"),
    ("pion", "ref", "relay-udp"),
    # aiortc's adapter takes trickled candidates: over a relay there is no peer-reflexive rescue.
    ("aiortc", "ref-trickle", "relay-udp"),
    ("ref-trickle", "aiortc", "relay-tcp"),
]


def capabilities(name: str) -> Capabilities:
    return AIORTC if name.startswith("ref") else stacks.get(name).capabilities  # type: ignore[attr-defined]


def dtls_meets(caller: str, callee: str) -> bool:
    """The callee answers as the DTLS client: it must take the caller's certificate type."""
    server, client = capabilities(caller), capabilities(callee)
    return server.dtls_certificate in (client.dtls_client_suites or ())


def _netns_ok() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root on Linux (a network namespace of its own)"
    return None


@pytest.fixture(scope="module")
def matrix() -> Iterator[dict[tuple[str, str, str], tuple[PeerResult, PeerResult]]]:
    why = _netns_ok()
    if why:
        pytest.skip(why)
    for name in ("pion", "libnice"):
        try:
            stacks.get(name).check()
        except PrerequisiteError as exc:
            pytest.fail(f"{name}: {exc}")  # bootstrap installs and builds both
    peers = {
        "ref": CommandPeer("ref", [sys.executable, str(REFERENCE)]),
        "ref-trickle": CommandPeer("ref-trickle", [sys.executable, str(REFERENCE), "--trickle"]),
    }
    from natkit.lab.netns import NetnsLab, enter_netns

    with NetnsLab() as lab:
        ns = lab.add_ns("stacks")
        lab.add_bridge(ns, "br0")
        lab.add_addr(ns, "br0", f"{IP}/24")
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                enter_netns(ns)
                box["value"] = asyncio.run(_run_all(peers))
            except BaseException as exc:
                box["error"] = exc

        t0 = time.monotonic()
        th = threading.Thread(target=target)
        th.start()
        th.join(100)
        if "error" in box:
            raise box["error"]
        print(f"\nstack matrix: {len(CASES)} cases in {time.monotonic() - t0:.1f} s")
        yield box["value"]


async def _run_all(peers: dict[str, CommandPeer]) -> dict[tuple[str, str, str], tuple[PeerResult, PeerResult]]:
    from natkit.lab.signaling import SignalingServer
    from natkit.server.stun import StunServer
    from natkit.server.turn import TurnServer

    def peer(name: str) -> Any:
        return peers.get(name) or stacks.get(name)

    async with (
        SignalingServer(IP, 0) as sig,
        StunServer([(IP, STUN)], tcp=False),
        TurnServer([(IP, TURN)], users={"u": "p"}, realm="lab", relay_ip=IP, allow_peers=[f"{IP}/24"]),
    ):
        sem = asyncio.Semaphore(6)  # connecting cases at once: DTLS and process starts take CPU

        async def one(i: int, case: tuple[str, str, str]) -> tuple[PeerResult, PeerResult]:
            a, b, path = case
            meets = dtls_meets(a, b)
            cfg = PeerConfig(f"case-{i}", path.split("-")[0], (IP, sig.port), ICE[path], DEADLINE if meets else FAIL_DEADLINE)
            if not meets:
                return await _pair(peer(a), peer(b), cfg)
            async with sem:
                return await _pair(peer(a), peer(b), cfg)

        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(CASES)))
    return dict(zip(CASES, results, strict=True))


async def _pair(a: Any, b: Any, cfg: PeerConfig) -> tuple[PeerResult, PeerResult]:
    return tuple(await asyncio.gather(a.start("caller", cfg), b.start("callee", cfg)))  # type: ignore[return-value]


def _relay_protocol(result: PeerResult) -> str | None:
    local = (result.selected or {}).get("local") or {}
    return local.get("relay_protocol") or local.get("relay_transport")


def _check(case: tuple[str, str, str], a: PeerResult, b: PeerResult) -> None:
    caller, callee, path = case
    if not dtls_meets(caller, callee):
        assert (a.outcome, b.outcome) == ("failed", "failed"), f"{case}: expected the DTLS gap to fail it"
        return
    assert (a.outcome, b.outcome) == ("connected", "connected"), (case, a.error, b.error, a.report, b.report)
    assert a.rtt_ms is not None and 0 < a.rtt_ms < 1000
    assert a.t_connect_ms is not None and b.t_connect_ms is not None
    for r in (a, b):
        assert r.selected and r.selected["local"].get("type") and r.selected["remote"].get("type"), (case, r.selected)
    if path == "host":
        for r in (a, b):
            assert r.selected["local"]["type"] == "host", (case, r.selected)
            assert r.selected["remote"]["type"] in ("host", "prflx"), (case, r.selected)
            assert r.selected["local"]["address"] == IP
    else:
        want = path.split("-")[1]
        for r in (a, b):
            assert r.selected["local"]["type"] == "relay", (case, r.selected)
            assert r.selected["remote"]["type"] in ("relay", "prflx"), (case, r.selected)
            assert _relay_protocol(r) == want, (case, r.selected)
    # The caller's remote is the callee's local (no NAT between them here), except when a side
    # only knows the other's relayed address by its peer-reflexive name.
    if a.selected["remote"]["type"] != "prflx":
        assert a.selected["remote"]["port"] == b.selected["local"]["port"], (case, a.selected, b.selected)


@pytest.mark.parametrize("case", [c for c in CASES if "aiortc" in c[:2]], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_against_aiortc(matrix: dict[tuple[str, str, str], tuple[PeerResult, PeerResult]], case: tuple[str, str, str]) -> None:
    _check(case, *matrix[case])


@pytest.mark.parametrize("case", [c for c in CASES if "aiortc" not in c[:2]], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_against_each_other(matrix: dict[tuple[str, str, str], tuple[PeerResult, PeerResult]], case: tuple[str, str, str]) -> None:
    _check(case, *matrix[case])


def test_signaled_candidates_follow_the_path(matrix: dict[tuple[str, str, str], tuple[PeerResult, PeerResult]]) -> None:
    for (caller, callee, path), (a, b) in matrix.items():
        want = "host" if path == "host" else "relay"
        for name, r in ((caller, a), (callee, b)):
            if name in ("pion", "libnice"):
                assert r.signaled, (caller, callee, path, name)
                assert all(f" typ {want}" in c for c in r.signaled), (name, path, r.signaled)


def test_the_dtls_gap_is_what_fails(matrix: dict[tuple[str, str, str], tuple[PeerResult, PeerResult]]) -> None:
    """Only pairs the capabilities say cannot meet failed; their stacks say they failed."""
    failing = {c for c, (a, b) in matrix.items() if not (a.connected and b.connected)}
    assert failing == {c for c in CASES if not dtls_meets(c[0], c[1])}
    assert {(c[0], c[1]) for c in failing} <= {("libnice", "aiortc"), ("libnice", "ref"), ("libnice", "ref-trickle")}


def test_reports_name_the_stack_version(matrix: dict[tuple[str, str, str], tuple[PeerResult, PeerResult]]) -> None:
    a, b = matrix[("pion", "libnice", "host")]
    assert a.report["stack_version"].startswith("pion/webrtc v3")
    assert b.report["stack_version"].startswith("GStreamer webrtcbin 1.")


@pytest.mark.parametrize("name", ["pion", "libnice", "ref"])
def test_every_program_refuses_another_contract_version(name: str) -> None:
    """Exit 2 with one line on stderr, before touching the network (the checklist's first item)."""
    from natkit.lab.stacks.command import contract_env, interpret, run_command

    if name == "ref":
        argv = [sys.executable, str(REFERENCE)]
    else:
        peer = stacks.get(name)
        try:
            peer.check()
        except PrerequisiteError as exc:
            if os.geteuid() == 0:
                pytest.fail(f"{name}: {exc}")  # bootstrap installs and builds both
            pytest.skip(str(exc))
        argv = peer.argv  # type: ignore[attr-defined]
    cfg = PeerConfig("r", "host", ("127.0.0.1", 9), [], 3.0)
    env = {**os.environ, **contract_env(name, "caller", cfg), "NATKIT_PEER_CONTRACT": "2"}
    run = asyncio.run(run_command(argv, env, 3.0))
    res = interpret(run, "caller", cfg, name)
    assert run.returncode == 2 and res.error.startswith("peer error: exit status 2"), (res.error, run.stderr)
    assert "version" in res.error and run.duration_s < 3
