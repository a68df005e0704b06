"""pion and libnice in a real lab: two NATs (full-cone, port-restricted) of the netns engine,
the lab's agents running the adapters by name (``Case.stacks``), srflx and relay cases with each
stack as caller and as callee, judged against the NATs' expectation and the packet evidence."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from natkit.lab import loads, run
from natkit.lab.topology import Case

pytestmark = [pytest.mark.timeout(180), pytest.mark.root]

DEFAULT = Path(__file__).resolve().parents[3] / "natkit" / "lab" / "default.toml"
# The default topology's servers and internet, with two of its NATs.
NATS = """
[[nat]]
name = "full-cone"
type = "full-cone"
[[nat]]
name = "port-restricted"
type = "port-restricted"
"""
# libnice is never the caller against aiortc: webrtcbin's RSA certificate meets aiortc's
# ECDSA-only DTLS client (see the stacks' capabilities and test_interop).
PAIRS = [("pion", "aiortc"), ("aiortc", "pion"), ("libnice", "pion"), ("aiortc", "libnice")]


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("dumpcap") is None,
    reason="needs root on Linux (namespaces, nftables) and dumpcap",
)
def test_srflx_and_relay_cases_of_each_stack_behind_two_nats() -> None:
    head = DEFAULT.read_text().split("\n[[nat]]", 1)[0]
    topo = loads(head + NATS, source="stacks.toml")
    cases = [Case(("full-cone", "port-restricted"), path, stacks=pair) for pair in PAIRS for path in ("srflx", "relay")]
    t0 = time.monotonic()
    result = run(topo, cases=cases)
    took = time.monotonic() - t0
    print(f"\n{len(cases)} lab cases in {took:.1f} s")
    assert not result.errors, result.errors
    for c in result.cases:
        what = (c.case.stacks, c.case.path, c.caller.error, c.callee.error, c.evidence)
        assert c.expected == "connected" and c.observed == "connected", what
        assert c.passed, what  # as expected, and the packet evidence agrees with the claimed pair
        local = c.caller.selected["local"]
        if c.case.path == "relay":
            assert local["type"] == "relay" and c.route == "relay", what
        else:
            assert local["type"] in ("host", "srflx", "prflx") and c.route == "direct", what
    assert took < 90
