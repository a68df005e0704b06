"""Browsers as lab stacks: one browser process per peer namespace, one tab per case.

A browser peer (:class:`BrowserPeer`; :class:`~natkit.lab.stacks.chromium.ChromiumPeer` and
:class:`~natkit.lab.stacks.firefox.FirefoxPeer` are the two) starts its browser on its first
case, in the namespace it runs in (the agent's, or ``netns``), through the browser's own
remote protocol (:mod:`natkit.ice.browsers`), and keeps it for every later case of the run:
only the first case waits for a start. Each case gets a window of its own on
``static/browser_peer.html``, served by the lab's signaling server (:func:`pages`), and runs
``natkitPeer.run(CASE)`` there: the page is the peer, caller or callee, speaking the lab
peers' contract (``docs/lab-peers.md``), so a browser pairs with every other stack. The
window is closed when the case ends, whatever happened, so cases share nothing but the
process. The browser goes when the adapter is closed (:meth:`BrowserPeer.close`; the agent
does it when it stops), when natkit exits, and, killed, through its reaper
(:mod:`natkit.ice.browsers.process`).

The page's report, kept whole in :attr:`PeerResult.report`: ``connected``, ``t_connect_ms``
(caller: from creating the offer; callee: from receiving it; to the open data channel),
``rtt_ms`` (median of five echoes), ``selected`` (``local``/``remote``: ``type``, ``address``,
``port``, ``protocol``, ``relay_protocol``; ``current_rtt_ms``), ``relay_protocol``,
``local_types``/``remote_types`` (every candidate the browser knew), ``candidates`` (what the
SDP filter ``kept``, ``dropped`` and the ``mdns`` names it removed), ``signaled``, ``error``,
``user_agent``, and ``timing`` (``browser_start_s`` when this case started the browser,
``page_s``, ``case_s``).

Run as a program (``python -m natkit.lab.stacks.chromium`` / ``...firefox``), a browser peer
follows the contract's environment (``NATKIT_ROLE``, ``NATKIT_SIGNALING_URL``, ...) for one
case with a browser of its own, so it also serves as a ``--peer`` command.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

from natkit.errors import ConfigError, PrerequisiteError
from natkit.ice.browsers.driver import BrowserError, Driver, wait_for
from natkit.lab.stacks.base import ROLES, PeerConfig, PeerResult, candidate_types
from natkit.lab.stacks.capabilities import Capabilities

__all__ = ["PAGE", "PAGE_PATH", "BrowserPeer", "case_params", "contract_main", "page_url", "pages"]

PAGE = Path(__file__).resolve().parents[1] / "static" / "browser_peer.html"
PAGE_PATH = "/browser"
PATH_TYPES = {"host": "host", "srflx": "srflx", "relay": "relay", "longevity": "srflx"}
PAGE_READY_S = 10.0  # a new window loading a page from the lab's server
PAGE_READY = "document.readyState === 'complete' && typeof natkitPeer === 'object'"
CLOSE_S = 5.0  # closing the window after the case
PINGS = 5


def pages() -> dict[str, tuple[str, bytes]]:
    """The pages to give :class:`~natkit.lab.signaling.SignalingServer` (its ``pages=``)."""
    return {PAGE_PATH: ("text/html; charset=utf-8", PAGE.read_bytes())}


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def page_url(
    base: str,
    room: str,
    path: str,
    ice_servers: Sequence[dict[str, Any]],
    *,
    deadline_s: float = 15.0,
    echo_count: int = PINGS,
    role: str = "caller",
) -> str:
    """The URL that runs one case as soon as the page loads (``base``: ``http://host:port``),
    for a browser opened by hand; natkit's own peers call ``natkitPeer.run`` instead."""
    _check_path(path)
    query = urlencode({
        "role": role,
        "room": room,
        "path": path,
        "ice": json.dumps(list(ice_servers), separators=(",", ":")),
        "deadline_ms": int(deadline_s * 1000),
        "gather_ms": int(min(5.0, deadline_s / 2) * 1000),
        "echo": echo_count,
    })
    return f"{base}{PAGE_PATH}?{query}"


def _check_path(path: str) -> None:
    if path not in PATH_TYPES:
        raise ConfigError(f"unknown path {path!r}; expected one of: {', '.join(PATH_TYPES)}", param="path")


def case_params(role: str, config: PeerConfig) -> dict[str, Any]:
    """The CASE that ``natkitPeer.run`` takes for one side of ``config``."""
    types = candidate_types(config.path)
    return {
        "role": role, "room": config.room, "path": config.path, "candidateTypes": types,
        "iceServers": config.ice_servers,
        "iceTransportPolicy": "relay" if types == ["relay"] else "all",
        "deadlineMs": int(config.deadline_s * 1000),
        "gatherMs": int(min(5.0, config.deadline_s / 2) * 1000),
        "echo": PINGS,
        "idleMs": int(config.idle_s * 1000),
    }


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class BrowserPeer:
    """A headless browser as a lab stack, caller and callee (see the module docstring).

    ``netns`` starts the browser in that namespace (``ip netns exec``) instead of the current
    one. ``mdns=True`` keeps the browser's default of hiding host addresses behind mDNS names
    (they are then dropped before the SDP leaves). ``loopback`` lets ICE use 127.0.0.1; by
    default it does when the signaling server is on loopback (a lab on this host).
    """

    name: ClassVar[str] = "browser"
    title: ClassVar[str] = "the browser"
    roles: ClassVar[tuple[str, ...]] = ROLES
    heavy: ClassVar[bool] = True
    parallel: ClassVar[int] = 3
    start_s: ClassVar[float] = 10.0
    ready_s: ClassVar[float] = 3.0  # a started browser opening the case's window
    capabilities: ClassVar[Capabilities] = Capabilities.unknown("browser")

    def __init__(self, netns: str | None = None, *, mdns: bool = False, loopback: bool | None = None) -> None:
        self.netns = netns
        self.mdns = mdns
        self.loopback = loopback
        self.start_times: list[float] = []  # seconds each start of the browser took
        self.ca_pem: str | None = None  # the lab CA the browser is started trusting (TURN over TLS)
        self.hosts: dict[str, str] = {}  # names the browser is started resolving (the lab zone's)
        self._driver: Driver | None = None
        self._lock: asyncio.Lock | None = None

    # -- what a subclass provides

    def check(self) -> None:
        """Raise PrerequisiteError naming what to install if the browser is missing."""
        raise NotImplementedError

    async def launch(self, *, loopback: bool) -> Driver:
        raise NotImplementedError

    # -- the Peer protocol

    def max_duration_s(self, config: PeerConfig) -> float:
        return config.deadline_s + self.start_s + PAGE_READY_S + CLOSE_S

    async def browser(self, config: PeerConfig | None = None) -> tuple[Driver, float | None]:
        """The running browser, started now if there is none (or it died); with the seconds
        its start took when this call started it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._driver is not None and self._alive(self._driver):
                return self._driver, None
            if self._driver is not None:
                with contextlib.suppress(Exception):
                    await self._driver.close()
                self._driver = None
            if config is not None and config.ca_pem:
                self.ca_pem = config.ca_pem
            if config is not None and config.hosts:
                self.hosts = dict(config.hosts)
            loopback = self.loopback
            if loopback is None:
                loopback = config is not None and _is_loopback(config.signaling[0])
                self.loopback = loopback
            t0 = time.monotonic()
            driver = await self.launch(loopback=loopback)
            took = time.monotonic() - t0
            self.start_times.append(took)
            atexit.register(driver.process.close_now)
            self._driver = driver
            return driver, took

    @staticmethod
    def _alive(driver: Driver) -> bool:
        alive = getattr(driver, "alive", None)
        return bool(alive()) if callable(alive) else driver.process.alive()

    async def start(self, role: str, config: PeerConfig) -> PeerResult:
        result = PeerResult(role, config.path, self.name, relays=None)
        if role not in self.roles:
            result.error = f"the {self.name} stack takes only the roles {', '.join(self.roles)}"
            return result
        t0 = time.monotonic()
        try:
            driver, started = await asyncio.wait_for(self.browser(config), self.start_s + 20)
        except (PrerequisiteError, BrowserError, OSError, TimeoutError) as exc:
            result.error = f"{self.title} did not start: {exc or 'timed out'}"
            return result
        url = f"http://{_hostport(*config.signaling)}{PAGE_PATH}"
        report = await run_in_tab(driver, url, case_params(role, config), config.deadline_s)
        timing = report.setdefault("timing", {})
        timing["browser_start_s"] = round(started, 3) if started is not None else None
        timing["case_s"] = round(time.monotonic() - t0, 3)
        return _peer_result(result, report, self.title)

    async def prepare(self, config: PeerConfig) -> float:
        """Start the browser now, before any case (the seconds it took; 0 when it runs)."""
        _, took = await asyncio.wait_for(self.browser(config), self.start_s + 20)
        return took or 0.0

    async def restart(self, config: PeerConfig) -> tuple[float, str]:
        """Stop the browser and start a new one now: a failed case showed it at fault
        (:mod:`natkit.lab.retry`). The seconds the start took, and what a new tab of the old
        browser gathered first (:func:`gathers`: whether the fault was the browser's own). The
        names and CA it was started with stay unless ``config`` brings others."""
        url = f"http://{_hostport(*config.signaling)}{PAGE_PATH}"  # the cases' site (its content process)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            driver, self._driver = self._driver, None
            before = "it was not running"
            if driver is not None:
                before = await gathers(driver, url) if self._alive(driver) else "it had exited"
                with contextlib.suppress(Exception):
                    await driver.close()
        return await self.prepare(config), before

    async def close(self) -> None:
        """Stop the browser (a later case starts a new one)."""
        driver, self._driver = self._driver, None
        if driver is not None:
            with contextlib.suppress(Exception):
                await driver.close()


# A peer connection without ICE servers in a tab of the cases' page: its host candidates (the
# browser's own gathering, whatever a case's servers, NATs or other side do).
GATHERS = """(async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.createDataChannel("natkit");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => { setTimeout(resolve, 3000); pc.addEventListener(
    "icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve()); });
  const n = pc.localDescription.sdp.split("\\r\\n").filter((l) => l.startsWith("a=candidate:")).length;
  const out = {candidates: n, state: pc.iceGatheringState};
  pc.close();
  return out;
})()"""


async def gathers(driver: Driver, url: str) -> str:
    """What a new tab of ``driver`` on ``url`` (the peer page: the site, and so the content
    process, of the cases) gathers without ICE servers, in words (for a report)."""
    tab: str | None = None
    try:
        tab = await asyncio.wait_for(driver.new_tab(url), PAGE_READY_S)
        await wait_for(driver, tab, PAGE_READY, PAGE_READY_S)
        got = await driver.evaluate(tab, GATHERS, timeout=8)
        if not isinstance(got, dict):
            return "a new tab of it answered nothing"
        return (f"a new tab of it gathered {got.get('candidates')} host candidates "
                f"(iceGatheringState {got.get('state')})")
    except (BrowserError, OSError, TimeoutError) as exc:
        return f"a new tab of it did not answer ({type(exc).__name__}: {exc or 'timed out'})"
    finally:
        if tab is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(driver.close_tab(tab), CLOSE_S)


async def run_in_tab(driver: Driver, url: str, params: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    """Open ``url`` (the peer page) in a new window of ``driver``, run ``natkitPeer.run(params)``
    and close the window; the page's report, or ``{"connected": False, "error": ...}``."""
    t0 = time.monotonic()
    tab: str | None = None
    timing: dict[str, Any] = {}
    try:
        tab = await asyncio.wait_for(driver.new_tab(url), PAGE_READY_S)
        await wait_for(driver, tab, PAGE_READY, PAGE_READY_S)
        timing["page_s"] = round(time.monotonic() - t0, 3)
        report = await driver.evaluate(tab, f"natkitPeer.run({json.dumps(params)})", timeout=deadline_s + 5)
        if not isinstance(report, dict):
            report = {"connected": False, "error": "the page returned no report"}
    except (BrowserError, OSError, TimeoutError) as exc:
        report = {"connected": False, "error": f"{type(exc).__name__}: {exc or 'timed out'}"}
    finally:
        if tab is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wait_for(driver.close_tab(tab), CLOSE_S))
    report["timing"] = {**timing, **report.get("timing", {})}
    return report


def _peer_result(result: PeerResult, report: dict[str, Any], title: str) -> PeerResult:
    result.report = report
    connected = bool(report.get("connected"))
    result.outcome = "connected" if connected else "failed"
    result.selected = report.get("selected")
    result.signaled = [s for s in report.get("signaled") or [] if isinstance(s, str)]
    if connected:
        result.t_connect_ms = _round(report.get("t_connect_ms"))
        result.rtt_ms = _round(report.get("rtt_ms"))
    else:
        result.error = report.get("error") or f"{title} did not connect"
    return result


def _round(value: Any) -> float | None:
    return round(float(value), 2) if isinstance(value, int | float) else None


# -- the contract's command line -------------------------------------------------------------


def _contract_case(env: dict[str, str]) -> tuple[str, dict[str, Any], float]:
    """(page URL, CASE, deadline) from the contract's environment; ConfigError if malformed."""
    try:
        role = env["NATKIT_ROLE"]
        url = urlsplit(env["NATKIT_SIGNALING_URL"])
        room = env["NATKIT_ROOM"]
        ice = json.loads(env.get("NATKIT_ICE_CONFIG") or "{}")
        deadline = float(env.get("NATKIT_DEADLINE_S") or 15)
    except KeyError as exc:
        raise ConfigError(f"the peer contract's {exc.args[0]} is not set", param="environment") from None
    except ValueError as exc:
        raise ConfigError(f"the peer contract's environment is malformed: {exc}", param="environment") from None
    if role not in ROLES or url.scheme not in ("ws", "wss") or not url.hostname or not isinstance(ice, dict):
        raise ConfigError("NATKIT_ROLE, NATKIT_SIGNALING_URL or NATKIT_ICE_CONFIG is not what "
                          "docs/lab-peers.md says", param="environment")
    path = env.get("NATKIT_PATH") or "relay"
    types = [t for t in (env.get("NATKIT_CANDIDATE_TYPES") or "").split(",") if t] or candidate_types(path)
    host = url.hostname
    page = f"{'https' if url.scheme == 'wss' else 'http'}://{_hostport(host, url.port or 80)}{PAGE_PATH}"
    params = {
        "role": role, "room": room, "path": path, "candidateTypes": types,
        "iceServers": ice.get("iceServers", []),
        "iceTransportPolicy": ice.get("iceTransportPolicy") or ("relay" if types == ["relay"] else "all"),
        "deadlineMs": int(max(1.0, deadline - 1.0) * 1000),
        "gatherMs": int(min(5.0, deadline / 2) * 1000), "echo": PINGS,
        "signalingUrl": env["NATKIT_SIGNALING_URL"],
    }
    return page, params, deadline


def contract_main(peer: BrowserPeer, env: dict[str, str] | None = None) -> int:
    """Run one case as a contract peer command: exit 0 connected, 1 not, 2 bad environment;
    the report as the last line of stdout."""
    env = dict(os.environ if env is None else env)
    try:
        url, params, deadline = _contract_case(env)
    except ConfigError as exc:
        print(f"{peer.name} peer: {exc}", file=sys.stderr)
        return 2

    async def main() -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            host = urlsplit(env["NATKIT_SIGNALING_URL"]).hostname or ""
            peer.loopback = _is_loopback(host) if peer.loopback is None else peer.loopback
            driver, _ = await asyncio.wait_for(peer.browser(), max(1.0, deadline - 2))
        except (PrerequisiteError, BrowserError, OSError, TimeoutError) as exc:
            return {"natkit_peer": 1, "connected": False, "error": f"{peer.title} did not start: {exc}"}
        try:
            params["deadlineMs"] = int(max(0.5, deadline - 1.5 - (time.monotonic() - t0)) * 1000)
            report = await run_in_tab(driver, url, params, params["deadlineMs"] / 1000)
            report["stack"] = f"{peer.name} {driver.version or ''}".strip()
            return report
        finally:
            await peer.close()

    report = asyncio.run(main())
    report.setdefault("stack", peer.name)
    print(json.dumps(report), flush=True)
    return 0 if report.get("connected") else 1
