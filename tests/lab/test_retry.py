"""Which browsers a failed case's second attempt starts again (natkit.lab.retry), from the
sides' reports as the browser peers give them."""

from __future__ import annotations

from typing import Any

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
    assert why is not None and "no candidate" in why


def test_a_page_that_gathered_but_did_not_connect_is_the_networks_doing() -> None:
    # host candidates gathered, dropped for the srflx path: the browser works
    dropped = {**GATHERED_NOTHING, "local_types": ["host"], "candidates": {"kept": 0, "dropped": 2, "mdns": 0}}
    assert broken_browser(_side(dropped)) is None
    kept = {**GATHERED_NOTHING, "local_types": ["host", "srflx"], "candidates": {"kept": 1, "dropped": 1, "mdns": 0}}
    assert broken_browser(_side(kept)) is None
    # candidates in its SDP, though getStats lists none (a closed connection): it gathered
    listed = {**GATHERED_NOTHING, "candidates": {"kept": 1, "dropped": 0, "mdns": 0}}
    assert broken_browser(_side(listed)) is None


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
