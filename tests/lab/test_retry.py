"""Which browsers a failed case's second attempt starts again (natkit.lab.retry), from the
sides' reports as the browser peers give them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from typing import Any

import pytest

from natkit.lab.retry import broken_browser, restarts
from natkit.lab.stacks.base import PeerResult


def _side(report: dict[str, Any] | None, error: str | None = None, *, outcome: str = "failed",
          stack: str = "firefox") -> PeerResult:
    return PeerResult("callee", "host", stack, outcome=outcome, error=error or (report or {}).get("error"),
                      relays=None, report=report)


# The Firefox of shard 3 (/tmp/icetcp-full-3.json, aiortc-firefox:open~symmetric/host): it got
# the offer (remote host candidates known), its own SDP had no candidate at all.
GATHERED_NOTHING = {
    "natkit_peer": 1, "role": "callee", "path": "host", "connected": False, "selected": None,
    "local_types": [], "remote_types": ["host"], "candidates": {"kept": 0, "dropped": 0, "mdns": 0},
    "signaled": [], "error": "the data channel's opening did not happen before the deadline",
    "timing": {"page_s": 1.254, "browser_start_s": None, "case_s": 11.536},
}


def test_a_page_that_gathered_nothing_has_its_browser_started_again() -> None:
    why = broken_browser(_side(GATHERED_NOTHING))
    assert why is not None and "no candidate at all" in why and "no local candidate either" in why
    # candidates gathered but none in the SDP (a browser that hides its host candidates on
    # the host path): it signaled nothing all the same
    hidden = {**GATHERED_NOTHING, "local_types": ["host"]}
    why = broken_browser(_side(hidden))
    assert why is not None and "knew local host candidates" in why


def test_a_page_that_gathered_but_did_not_connect_is_the_networks_doing() -> None:
    # host candidates gathered, dropped for the srflx path: the browser works
    dropped = {**GATHERED_NOTHING, "local_types": ["host"], "candidates": {"kept": 0, "dropped": 2, "mdns": 0}}
    assert broken_browser(_side(dropped)) is None
    kept = {**GATHERED_NOTHING, "local_types": ["host", "srflx"], "candidates": {"kept": 1, "dropped": 1, "mdns": 0}}
    assert broken_browser(_side(kept)) is None
    # candidates in its SDP, though getStats lists none (a closed connection): it gathered
    listed = {**GATHERED_NOTHING, "candidates": {"kept": 1, "dropped": 0, "mdns": 0}}
    assert broken_browser(_side(listed)) is None
    mdns_only = {**GATHERED_NOTHING, "candidates": {"kept": 0, "dropped": 0, "mdns": 2}}
    assert broken_browser(_side(mdns_only)) is None


def test_a_page_that_never_got_to_gathering_says_nothing_of_its_browser() -> None:
    # the callee never joined: the caller's page stopped before its offer (no candidate counts)
    waiting = {**GATHERED_NOTHING, "candidates": None, "remote_types": [],
               "error": "the callee did not come before the deadline"}
    assert broken_browser(_side(waiting)) is None
    # cancelled once the other side had failed: no report at all
    assert broken_browser(_side(None, "cancelled by the orchestrator")) is None
    assert broken_browser(_side(None, "the other peer left the room")) is None


def test_a_page_or_driver_that_did_not_answer_has_its_browser_started_again() -> None:
    for error in ("TimeoutError: \"document.readyState === 'complete'\" did not hold within 10 s",
                  "BrowserError: the browser closed the connection (EOF)",
                  "the page returned no report"):
        why = broken_browser(_side({"connected": False, "error": error}))
        assert why is not None and error in why, error
    why = broken_browser(_side(None, "Firefox did not start: timed out"))
    assert why is not None and "did not start" in why


def test_a_connected_side_is_never_restarted() -> None:
    assert broken_browser(_side(GATHERED_NOTHING, outcome="connected")) is None


def test_each_browser_is_restarted_once_and_only_a_heavy_stack() -> None:
    bad = _side(GATHERED_NOTHING)
    fine = _side(None, "cancelled by the orchestrator", stack="aiortc")
    failed = [
        [("open-1-p1", "aiortc", fine), ("symmetric-1-p1", "firefox", bad)],
        [("symmetric-1-p1", "firefox", _side(None, "the page returned no report")), ("open-1-p1", "pion", bad)],
        [("symmetric-1-p1", "chromium", bad), ("full-cone-1-p1", "firefox", _side(None, "gave up"))],
    ]
    heavy = {"firefox", "chromium"}.__contains__
    got = restarts(failed, heavy)
    assert list(got) == [("symmetric-1-p1", "firefox"), ("symmetric-1-p1", "chromium")]
    assert "no candidate" in got[("symmetric-1-p1", "firefox")]  # the first reason found
    assert restarts([], heavy) == {}


# --------------------------------------------------------------------------------------------
# a real lab: one node's Firefox comes up signaling no candidate (its first start only)

needs_lab_and_firefox = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("dumpcap") is None
    or (shutil.which("firefox-esr") is None and shutil.which("firefox") is None),
    reason="needs root on Linux (namespaces, nftables), dumpcap and firefox-esr",
)


@pytest.mark.root
@pytest.mark.timeout(180)
@needs_lab_and_firefox
def test_a_real_lab_starts_a_firefox_that_signals_nothing_again_and_the_case_connects() -> None:
    """The fault of shard 3, made on purpose: the first Firefox of a node hides its host
    candidates (``media.peerconnection.ice.no_host``), so on the host path its SDP has none.
    The case fails, that node's Firefox is started again (normally this time) before the second
    attempt, and the second attempt connects."""
    from natkit.ice.browsers.firefox import FirefoxBrowser
    from natkit.lab import stacks
    from natkit.lab.cases import select_cases
    from natkit.lab.runner import run
    from natkit.lab.stacks.firefox import FirefoxPeer
    from natkit.lab.topology import load

    class FirstStartBroken(FirefoxPeer):
        name = "firstbrokenfox"

        def __init__(self) -> None:
            super().__init__()
            self.launches = 0  # per agent: each node's agent has its own copy after the fork

        async def launch(self, *, loopback: bool) -> FirefoxBrowser:
            self.launches += 1
            prefs = {"media.peerconnection.ice.no_host": True} if self.launches == 1 else None
            return await FirefoxBrowser.launch(netns=self.netns, mdns=self.mdns, loopback=loopback,
                                               hosts=self.hosts or None, ca_pem=self.ca_pem, prefs=prefs)

    stacks.register(FirstStartBroken())
    try:
        topo = dataclasses.replace(load(), case_deadline_s=6.0)
        host = next(c for c in select_cases(topo, ["open:symmetric"]) if c.path == "host")
        case = dataclasses.replace(host, stacks=("firstbrokenfox", "aiortc"))
        result = run(topo, cases=[case])
    finally:
        stacks.STACKS.pop("firstbrokenfox", None)
        stacks._cache.pop("firstbrokenfox", None)
    (c,) = result.cases
    assert c.attempts == 2 and c.first_error  # its first attempt failed
    assert c.observed == "connected" and c.passed, (c.error, c.first_error, c.restarted)
    (note,) = c.restarted
    assert note.startswith("firstbrokenfox in open-1-p1 started again") and "no candidate at all" in note, note
    assert "a new tab of it gathered 0 host candidates" in note, note  # the old one was at fault
    assert "restart_s" in result.timings
