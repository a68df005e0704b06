"""The Chromium stack: headless Chromium (libwebrtc inside) as a lab peer, caller and callee.

:class:`ChromiumPeer` is a :class:`~natkit.lab.stacks.browser.BrowserPeer`: one Chromium per
peer namespace, started on the first case over the DevTools pipe
(:class:`natkit.ice.browsers.chromium.ChromiumBrowser`, the same launcher and flags as
``natkit check --browser chromium``), one window per case on the lab's peer page. Host
addresses are raw, not mDNS names (``--disable-features=WebRtcHideLocalIpsWithMdns``), since
nothing in a lab answers mDNS; ``mdns=True`` keeps the browser's default, and the names are
then dropped before the SDP leaves (counted in ``candidates.mdns``).

:func:`run_browser_case` runs one Chromium↔aiortc case outside the lab's agents (Chromium
and the aiortc callee in namespaces of the caller's choosing), for tests and for a quick look.
``python -m natkit.lab.stacks.chromium`` is the stack as a contract peer command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from natkit.ice.browsers.chromium import ChromiumBrowser, find_chromium
from natkit.ice.browsers.driver import Driver
from natkit.lab.labca import spki_sha256
from natkit.lab.stacks.base import PeerConfig
from natkit.lab.stacks.browser import (
    PAGE,
    PAGE_PATH,
    BrowserPeer,
    _check_path,
    contract_main,
    page_url,
    pages,
)
from natkit.lab.stacks.capabilities import CHROMIUM, Capabilities

__all__ = ["PAGE", "PAGE_PATH", "ChromiumPeer", "page_url", "pages", "run_browser_case"]


class ChromiumPeer(BrowserPeer):
    """Headless Chromium as a lab stack (see the module docstring)."""

    name: ClassVar[str] = "chromium"
    title: ClassVar[str] = "Chromium"
    parallel: ClassVar[int] = 6  # connecting cases at once, over all its namespaces
    start_s: ClassVar[float] = 6.0  # measured ~0.5-1.5 s alone; more beside other browsers
    # What it does, for the expectations (sources in stacks/capabilities.py).
    capabilities: ClassVar[Capabilities] = CHROMIUM

    def check(self) -> None:
        find_chromium()

    async def launch(self, *, loopback: bool) -> Driver:
        # Trust the lab CA for TURN over TLS: the network service's verifier accepts a chain
        # holding a key on this list (it needs --user-data-dir, which the launch sets).
        flags = [f"--ignore-certificate-errors-spki-list={spki_sha256(self.ca_pem)}"] if self.ca_pem else []
        return await ChromiumBrowser.launch(netns=self.netns, mdns=self.mdns, loopback=loopback, extra_flags=flags)


async def run_browser_case(
    signaling: tuple[str, int],
    path: str,
    ice_servers: Sequence[dict[str, Any]],
    *,
    room: str | None = None,
    browser_netns: str | None = None,
    peer_netns: str | None = None,
    deadline_s: float = 15.0,
    python: str = sys.executable,
    mdns: bool = False,
) -> dict[str, Any]:
    """Run one Chromium↔aiortc case over ``path`` outside the lab's agents; return its record.

    ``signaling`` is the lab's signaling server (serving :func:`pages`) as both peers reach
    it. Chromium (the caller, a browser of its own, closed afterwards) runs in
    ``browser_netns`` and the aiortc peer (the callee) in ``peer_netns`` as ``python -m
    natkit.lab.stacks.aiortc`` when given, else on this host. Record::

        {"path", "observed": "connected"|"failed", "t_connect_ms", "rtt_ms",
         "selected": Chromium's selected pair | None,
         "browser": Chromium's whole report | None,
         "peer": the aiortc callee's result (PeerResult as JSON) | None,
         "error": str | None, "wall_s": float}
    """
    from natkit.lab.stacks.aiortc import run_peer

    _check_path(path)
    room = room or f"browser-{os.urandom(6).hex()}"
    started = time.monotonic()
    ice = list(ice_servers)
    callee_deadline = deadline_s + ChromiumPeer.start_s  # the callee waits for Chromium's start too
    peer: dict[str, Any] | None = None
    error: str | None = None
    if peer_netns is None:
        callee: Any = asyncio.create_task(run_peer("callee", PeerConfig(room, path, signaling, ice, callee_deadline)))
    else:
        callee = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", peer_netns, python, "-m", "natkit.lab.stacks.aiortc",
            "--role", "callee", "--room", room, "--path", path,
            "--signaling", f"{signaling[0]}:{signaling[1]}", "--ice-servers", json.dumps(ice),
            "--deadline", str(callee_deadline),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    ended: asyncio.Future[Any] = callee if isinstance(callee, asyncio.Task) else asyncio.ensure_future(callee.communicate())
    caller = ChromiumPeer(browser_netns, mdns=mdns)
    try:
        mine = await caller.start("caller", PeerConfig(room, path, signaling, ice, deadline_s))
    finally:
        await caller.close()
    browser = mine.report
    try:
        wait = callee_deadline + 5 if mine.connected else CALLEE_GRACE_S
        if isinstance(callee, asyncio.Task):
            peer = (await asyncio.wait_for(callee, wait)).to_json()
        else:
            out, err = await asyncio.wait_for(ended, wait)
            try:
                peer = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                error = f"the aiortc peer gave no report: {err.decode(errors='replace')[-300:]}"
    except TimeoutError:
        if mine.connected:
            error = "the aiortc peer did not end in time"
    finally:
        ended.cancel()
        if isinstance(callee, asyncio.Task):
            callee.cancel()
        elif callee.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                callee.kill()
            await callee.wait()
    return {
        "path": path,
        "observed": "connected" if mine.connected else "failed",
        "t_connect_ms": mine.t_connect_ms,
        "rtt_ms": mine.rtt_ms,
        "selected": mine.selected,
        "browser": browser,
        "peer": peer,
        "error": error or mine.error,
        "wall_s": round(time.monotonic() - started, 3),
    }


# A failed page sends no "done": the callee would only end at its own deadline; it is
# stopped this long after the browser's report instead.
CALLEE_GRACE_S = 1.0


if __name__ == "__main__":
    sys.exit(contract_main(ChromiumPeer()))
