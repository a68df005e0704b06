"""Which browsers a failed case's second attempt starts afresh.

A browser peer (:class:`~natkit.lab.stacks.browser.BrowserPeer`) is started once per node and
kept for every case of the run, so a browser that stops working fails every later case in its
node, the second attempts included: in one shard of ``--full`` a Firefox signaled no candidate
at all in any of its 68 cases (its SDP had none, and getStats knew no local candidate) while
the same stack in every other node connected. Before a failed case runs again
(:mod:`natkit.lab.orchestrate`, ``RETRIES``), :func:`restarts` names each browser of a failed
attempt that showed such a fault, and that node's browser is started again first, once per
round whatever the number of its cases. The case's report says so (``restarted``).
An expected failure proves nothing about the network when a browser in it was at fault: the
first round's expected failures name broken browsers too (:func:`shows_a_browser_fault`), and
every expected failure a restarted browser took part in runs again after the restart.

What counts as the browser's fault, not the network's (:func:`broken_browser`): its page
**signaled no candidate at all** (none in its SDP, not even one it dropped for the path), or
its **page or driver did not answer** (the tab did not load, the script timed out, the remote
protocol went away, the browser did not start). A page that never got to gathering (the other
side never joined) or a side cancelled once the other had failed is not.
A relay-only page whose TURN server is unreachable also signals nothing; its browser is
started again too, at the cost of one browser start in a case that fails for the network's
reasons anyway. What a tab of the old browser gathers without ICE servers just before it goes
(:meth:`~natkit.lab.stacks.browser.BrowserPeer.restart`) says which it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from natkit.lab.stacks.base import PeerResult, candidate_types

__all__ = ["UNRESPONSIVE", "broken_browser", "restarts", "shows_a_browser_fault"]

# How a browser peer's error begins when its page or driver, not the connection, failed
# (natkit.lab.stacks.browser.run_in_tab: the exception's name; BrowserPeer.start: a start).
UNRESPONSIVE = ("TimeoutError", "BrowserError", "OSError", "ConnectionError", "the page returned no report")


def _signaled_nothing(report: Mapping[str, Any]) -> bool:
    counts = report.get("candidates")
    if not isinstance(counts, Mapping):
        return False  # the page never got to its description (it waited for the other side)
    return sum(v for v in counts.values() if isinstance(v, int) and not isinstance(v, bool)) == 0


def broken_browser(peer: PeerResult) -> str | None:
    """Why the browser behind ``peer`` (one side of a failed attempt) is to be started again,
    or None when nothing says it is at fault (see the module docstring)."""
    if peer.connected:
        return None
    report = peer.report if isinstance(peer.report, Mapping) else None
    if report is not None and _signaled_nothing(report):
        known = [str(t) for t in report.get("local_types") or []]
        return ("its page signaled no candidate at all (its SDP had none; getStats knew "
                + (f"local {', '.join(known)} candidates)" if known else "no local candidate either)"))
    error = str((report or {}).get("error") or peer.error or "")
    if error.startswith(UNRESPONSIVE):
        return f"its page or driver did not answer ({error})"
    if " did not start" in error:
        return f"it did not start ({error})"
    return None


def shows_a_browser_fault(path: str) -> bool:
    """Whether an *expected* failure on ``path`` can show its browser at fault. Not a
    relay-only page's: one whose TURN server the network blocks signals nothing, healthy or
    not (a failure expected to connect is judged on every path: that cost is one start)."""
    return candidate_types(path) != ["relay"]


Side = tuple[str, str, PeerResult]  # the node (peer id), the stack's name, that side's result


def restarts(failed: Iterable[Iterable[Side]], heavy: Callable[[str], bool]) -> dict[tuple[str, str], str]:
    """The browsers to start again before a round of second attempts: (node, stack) -> why,
    from the sides of each failed case (``heavy(stack)``: a stack kept across cases, a
    browser). Each browser once, with the first reason found."""
    out: dict[tuple[str, str], str] = {}
    for sides in failed:
        for node, stack, result in sides:
            if not heavy(stack) or (node, stack) in out:
                continue
            why = broken_browser(result)
            if why is not None:
                out[(node, stack)] = why
    return out
