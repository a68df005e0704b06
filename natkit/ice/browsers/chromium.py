"""Headless Chromium, driven over the DevTools protocol on a pipe.

:class:`ChromiumBrowser` starts Chromium (:class:`~natkit.ice.browsers.process.BrowserProcess`:
a fresh profile, its own ``TMPDIR``, nothing left behind) with ``--remote-debugging-pipe``
(the protocol on file descriptors 3 and 4, NUL-separated JSON: no port to open, nothing
another local user could connect to) and implements :class:`~natkit.ice.browsers.driver.Driver`:
tabs are DevTools targets, scripts run through ``Runtime.evaluate``. Both ``natkit check
--browser chromium`` (:class:`ChromiumGatherer`) and the lab's Chromium peer
(:mod:`natkit.lab.stacks.chromium`) use it, with the one flag list :func:`chromium_flags`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

from natkit.errors import PrerequisiteError
from natkit.ice.browsers.base import BrowserGathering, BrowserServer
from natkit.ice.browsers.driver import BrowserError, CommandChannel, gather_in
from natkit.ice.browsers.process import BrowserProcess

__all__ = [
    "FLAGS",
    "GOOGLE_SERVICES",
    "ChromiumBrowser",
    "ChromiumGatherer",
    "DevToolsError",
    "DevToolsPipe",
    "chromium_flags",
    "find_chromium",
    "url_host",
]

FLAGS = (
    "--headless",
    "--no-sandbox",  # as root (and in a namespace) the setuid sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",  # a proxy in the environment must not carry the page or TURN/TCP
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--mute-audio",
    # Cases in other tabs must not be throttled while one tab has the focus.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--remote-debugging-pipe",
)
MDNS_OFF = "--disable-features=WebRtcHideLocalIpsWithMdns"  # raw host addresses in candidates
LOOPBACK = "--allow-loopback-in-peer-connection"  # ICE over 127.0.0.1 (servers on this host)
MAX_MESSAGE = 16 * 1024 * 1024
START_TIMEOUT = 20.0


# Chromium's own services (component and extension updates, account look-ups) that
# --disable-background-networking and --disable-component-update do not stop in Chromium 156:
# seen as DNS queries for clients2.google.com, update.googleapis.com, accounts.google.com.
GOOGLE_SERVICES = ("*.google.com", "*.googleapis.com", "*.gvt1.com", "*.gstatic.com",
                   "*.googleusercontent.com")


def chromium_flags(*, mdns: bool = True, loopback: bool = False,
                   allow: Sequence[str] = ()) -> list[str]:
    """Chromium's command line but the binary and the profile. ``mdns=False`` puts raw host
    addresses in host candidates instead of ``<uuid>.local`` names (nothing in a lab answers
    mDNS); ``loopback=True`` lets ICE use 127.0.0.1 (STUN/TURN on this host).

    Names under :data:`GOOGLE_SERVICES` fail to resolve at once (no DNS query leaves), except
    those in ``allow``: the ICE servers' names (``stun.l.google.com`` must still resolve when
    a user checks it)."""
    flags = list(FLAGS)
    if not mdns:
        flags += [MDNS_OFF, "--force-webrtc-ip-handling-policy=default"]
    if loopback:
        flags.append(LOOPBACK)
    rules = [*(f"EXCLUDE {name}" for name in allow), *(f"MAP {p} ~NOTFOUND" for p in GOOGLE_SERVICES)]
    flags.append("--host-resolver-rules=" + ", ".join(rules))
    return flags


def url_host(url: str) -> str | None:
    """The host name of a stun:/turn: URL, or None for an IP literal (nothing to resolve)."""
    rest = url.split(":", 1)[1] if ":" in url else url
    rest = rest.split("?", 1)[0].lstrip("/")
    if rest.startswith("["):
        return None
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower() if host and all(c.isalnum() or c in "-._" for c in host) else None
    return None


def find_chromium() -> str:
    """The Chromium binary, or a PrerequisiteError saying what to install."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise PrerequisiteError("Chromium is not installed: apt-get install chromium")


class DevToolsError(BrowserError):
    """The DevTools protocol answered with an error, or the browser went away."""


class DevToolsPipe(CommandChannel):
    """The DevTools protocol over a pair of pipes (``--remote-debugging-pipe``)."""

    error = DevToolsError

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.WriteTransport) -> None:
        self.reader = reader
        self.writer = writer
        super().__init__()

    async def _next(self) -> dict[str, Any]:
        try:
            message = json.loads((await self.reader.readuntil(b"\0"))[:-1])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ConnectionError) as exc:
            raise DevToolsError(f"the browser closed the pipe ({exc})") from None
        return message if isinstance(message, dict) else {}

    async def _write(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message).encode() + b"\0")

    def _answer(self, message: dict[str, Any]) -> tuple[int, Any, str | None] | None:
        if "id" not in message:
            return None
        if "error" in message:
            return message["id"], None, str(message["error"].get("message"))
        return message["id"], message.get("result", {}), None

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> Any:
        message: dict[str, Any] = {"method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        return await self.request(message)

    def close(self) -> None:
        super().close()
        self.writer.close()


class ChromiumBrowser:
    """A running headless Chromium (a :class:`~natkit.ice.browsers.driver.Driver`)."""

    name = "chromium"

    def __init__(self, process: BrowserProcess, pipe: DevToolsPipe, version: str | None) -> None:
        self.process = process
        self.pipe = pipe
        self.version = version
        self._targets: dict[str, str] = {}  # session id (the tab) -> target id

    @classmethod
    async def launch(cls, *, binary: str | None = None, netns: str | None = None,
                     mdns: bool = True, loopback: bool = False, allow: Sequence[str] = (),
                     extra_flags: Sequence[str] = ()) -> ChromiumBrowser:
        """Start Chromium (in namespace ``netns`` if given); see :func:`chromium_flags`.
        PrerequisiteError if it is not installed, BrowserError if it does not come up."""
        exe = binary or find_chromium()
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        flags = [*chromium_flags(mdns=mdns, loopback=loopback, allow=allow), *extra_flags]
        process: BrowserProcess | None = None
        pipe: DevToolsPipe | None = None
        try:
            process = BrowserProcess.spawn(
                "chromium", lambda profile: [exe, *flags, f"--user-data-dir={profile}", "about:blank"],
                netns=netns, child_fds={3: to_browser_r, 4: from_browser_w})
            os.close(to_browser_r)
            os.close(from_browser_w)
            to_browser_r = from_browser_w = -1
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=MAX_MESSAGE)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                         os.fdopen(from_browser_r, "rb", buffering=0))
            from_browser_r = -1
            transport, _ = await loop.connect_write_pipe(
                asyncio.Protocol, os.fdopen(to_browser_w, "wb", buffering=0))
            to_browser_w = -1
            pipe = DevToolsPipe(reader, transport)
            try:
                info = await asyncio.wait_for(pipe.send("Browser.getVersion"), START_TIMEOUT)
            except TimeoutError:
                raise DevToolsError(f"Chromium did not answer within {START_TIMEOUT:g} s") from None
            except DevToolsError as exc:
                raise DevToolsError(f"{exc}: {process.log_tail(3)}") from None
            return cls(process, pipe, _version(info.get("product")) or _version(info.get("userAgent")))
        except BaseException:
            if pipe is not None:
                pipe.close()
            if process is not None:
                await asyncio.shield(process.close())
            raise
        finally:
            for fd in (to_browser_r, to_browser_w, from_browser_r, from_browser_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def alive(self) -> bool:
        return self.process.alive() and self.pipe.closed is None

    async def new_tab(self, url: str) -> str:
        target = await self.pipe.send("Target.createTarget", {"url": url})
        attached = await self.pipe.send("Target.attachToTarget",
                                        {"targetId": target["targetId"], "flatten": True})
        session: str = attached["sessionId"]
        self._targets[session] = target["targetId"]
        return session

    async def evaluate(self, tab: str, expression: str, *, timeout: float) -> Any:
        answer = await asyncio.wait_for(self.pipe.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True,
        }, tab), timeout)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"the page script failed: {text}")
        return answer.get("result", {}).get("value")

    async def close_tab(self, tab: str) -> None:
        target = self._targets.pop(tab, None)
        if target is not None:
            with contextlib.suppress(BrowserError, TimeoutError):
                await asyncio.wait_for(self.pipe.send("Target.closeTarget", {"targetId": target}), 5)

    async def close(self) -> None:
        # Killed, not asked: the profile is thrown away anyway.
        self.pipe.close()
        await self.process.close()


class ChromiumGatherer:
    """:class:`~natkit.ice.browsers.base.IceBrowser` for headless Chromium."""

    name = "chromium"

    def __init__(self, binary: str | None = None, extra_flags: Sequence[str] = ()) -> None:
        self.binary = binary
        self.extra_flags = tuple(extra_flags)

    async def gather(self, servers: Sequence[BrowserServer], ice_servers: list[dict[str, Any]],
                     *, timeout: float) -> BrowserGathering:
        # As a browser on the web (host addresses behind mDNS names), but allowed to reach
        # servers on this host, and to resolve the servers' names whatever they are.
        names = sorted({h for s in servers for h in [url_host(s.url)] if h})
        return await gather_in(self.name, lambda: ChromiumBrowser.launch(
            binary=self.binary, loopback=True, allow=names, extra_flags=self.extra_flags),
            servers, ice_servers, timeout)


def _version(user_agent: Any) -> str | None:
    if not isinstance(user_agent, str):
        return None
    for token in user_agent.split():
        if token.startswith(("HeadlessChrome/", "Chrome/")):
            return token.split("/", 1)[1]
        if "/" not in token and token[:1].isdigit():
            return token
    return None
