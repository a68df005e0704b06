"""Headless Firefox (ESR), driven over WebDriver BiDi: no geckodriver needed.

Debian ships no geckodriver, but Firefox carries its own remote agent:
``--remote-debugging-port 0`` makes it listen for WebDriver BiDi on a free port of 127.0.0.1
(written to ``WebDriverBiDiServer.json`` in the profile), a WebSocket at ``/session`` that
:class:`BiDi` speaks (W3C WebDriver BiDi: ``session.new``, ``browsingContext.create``,
``browsingContext.navigate``, ``script.evaluate``, ``browser.close``).

:class:`FirefoxBrowser` starts Firefox with a fresh profile whose ``user.js`` keeps it off the
network (:data:`OFFLINE_PREFS`: no telemetry, updates, captive-portal or connectivity checks,
Safe Browsing, Normandy/Nimbus, Remote Settings, push, add-on or plugin downloads) and sets
the WebRTC prefs the caller asks for (:func:`webrtc_prefs`). It implements
:class:`~natkit.ice.browsers.driver.Driver`; ``natkit check --browser firefox``
(:class:`FirefoxGatherer`) and the lab's Firefox peer (:mod:`natkit.lab.stacks.firefox`) use it.
The BiDi port is only on the loopback of the browser's network namespace; with ``netns`` the
connection is opened from inside that namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from natkit.errors import PrerequisiteError
from natkit.ice.browsers.base import BrowserGathering, BrowserServer
from natkit.ice.browsers.driver import BrowserError, CommandChannel, gather_in
from natkit.ice.browsers.process import BrowserProcess
from natkit.ice.websocket import WebSocket, WebSocketError

__all__ = ["OFFLINE_PREFS", "BiDi", "FirefoxBrowser", "FirefoxGatherer", "find_firefox", "policies_json",
           "private_files", "user_js", "webrtc_prefs"]

START_TIMEOUT = 30.0  # a first start on a loaded 2-core machine takes several seconds
MAX_MESSAGE = 16 * 1024 * 1024
SERVER_FILE = "WebDriverBiDiServer.json"

PrefValue = bool | int | str

# Written to user.js, so they hold from the first moment (the remote agent's own recommended
# prefs, remote/shared/RecommendedPreferences.sys.mjs, only arrive once it has started).
OFFLINE_PREFS: dict[str, PrefValue] = {
    # updates of Firefox, add-ons, search engines, system add-ons, plugins (OpenH264, Widevine)
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "extensions.update.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False,
    "browser.search.update": False,
    "media.gmp-manager.url": "data:,",
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "media.gmp-widevinecdm.enabled": False,
    "media.gmp-provider.enabled": False,
    # telemetry and studies
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.server": "data:,",
    "toolkit.telemetry.newProfilePing.enabled": False,
    "toolkit.telemetry.shutdownPingSender.enabled": False,
    "toolkit.telemetry.firstShutdownPing.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.usage.uploadEnabled": False,
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "nimbus.rollouts.enabled": False,
    "browser.ping-centre.telemetry": False,
    "browser.newtabpage.activity-stream.feeds.telemetry": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    # Remote Settings, certificate revocation fetches, region and geo look-ups
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "security.OCSP.enabled": 0,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "geo.provider.network.url": "",
    "network.sntp.pools": "",
    # captive portal and connectivity probes, DNS over HTTPS, prefetch and speculation
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.trr.mode": 5,
    "doh-rollout.disable-heuristics": True,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "browser.urlbar.speculativeConnect.enabled": False,
    "browser.urlbar.suggest.searches": False,
    "browser.places.speculativeConnect.enabled": False,
    # no proxy from the environment: it would carry the page and TURN/TCP elsewhere
    "network.proxy.type": 0,
    # Safe Browsing and tracking-protection list downloads
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.safebrowsing.provider.mozilla.gethashURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.google4.gethashURL": "",
    "privacy.trackingprotection.enabled": False,
    # push
    "dom.push.enabled": False,
    "dom.push.connection.enabled": False,
    "dom.push.serverURL": "",
    # first-run pages, new-tab content, sync and other services
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.topsites.contile.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.uitour.enabled": False,
    "browser.discovery.enabled": False,
    "browser.translations.enable": False,
    "browser.ml.enable": False,
    "identity.fxaccounts.enabled": False,
    "browser.cache.disk.enable": False,
    "browser.sessionstore.resume_from_crash": False,
    "toolkit.startup.max_resumed_crashes": -1,
    # cases in background tabs must not be throttled, and their clocks stay precise
    "dom.min_background_timeout_value": 4,
    "privacy.reduceTimerPrecision": False,
    "dom.timeout.enable_budget_timer_throttling": False,
    "remote.force-local": True,
}


def webrtc_prefs(*, mdns: bool = True, loopback: bool = False) -> dict[str, PrefValue]:
    """Firefox's WebRTC prefs for the run (defaults in modules/libpref/init/all.js).

    ``mdns=False``: ``media.peerconnection.ice.obfuscate_host_addresses`` off, so host
    candidates carry the interface address instead of a ``<uuid>.local`` name (Firefox
    obfuscates them for every page without camera/microphone permission; nothing in a lab
    answers mDNS). ``loopback=True``: ``media.peerconnection.ice.loopback``, so ICE gathers on
    127.0.0.1 (servers on this host; "set only for testing in offline environments").
    """
    return {
        "media.peerconnection.enabled": True,
        "media.peerconnection.ice.obfuscate_host_addresses": mdns,
        "media.peerconnection.ice.loopback": loopback,
        "media.peerconnection.ice.no_host": False,
        "media.peerconnection.ice.default_address_only": False,
        "media.peerconnection.ice.relay_only": False,
        "media.peerconnection.ice.proxy_only": False,
        "media.peerconnection.use_document_iceservers": True,
    }


def user_js(prefs: Mapping[str, PrefValue]) -> str:
    """A user.js that sets ``prefs``."""
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


def find_firefox() -> str:
    """The Firefox binary, or a PrerequisiteError saying what to install."""
    for name in ("firefox-esr", "firefox"):
        path = shutil.which(name)
        if path:
            return path
    raise PrerequisiteError("Firefox is not installed: apt-get install firefox-esr")


class BiDi(CommandChannel):
    """A WebDriver BiDi connection: commands with ids, answered in any order."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        super().__init__()

    async def _next(self) -> dict[str, Any]:
        while True:
            try:
                message = json.loads(await self.ws.recv_text())
            except ValueError:
                continue
            except WebSocketError as exc:
                raise BrowserError(f"the browser closed the connection ({exc})") from None
            if isinstance(message, dict):
                return message

    async def _write(self, message: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(message))

    def _answer(self, message: dict[str, Any]) -> tuple[int, Any, str | None] | None:
        if message.get("type") == "event" or "id" not in message:
            return None
        if message.get("type") == "error":
            return message["id"], None, f"{message.get('error')}: {message.get('message')}"
        return message["id"], message.get("result", {}), None

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.request({"method": method, "params": params or {}})

    async def aclose(self) -> None:
        self.close()
        await self.ws.close()


class FirefoxBrowser:
    """A running headless Firefox (a :class:`~natkit.ice.browsers.driver.Driver`)."""

    name = "firefox"

    def __init__(self, process: BrowserProcess, bidi: BiDi, version: str | None) -> None:
        self.process = process
        self.bidi = bidi
        self.version = version

    @classmethod
    async def launch(cls, *, binary: str | None = None, netns: str | None = None,
                     mdns: bool = True, loopback: bool = False,
                     prefs: Mapping[str, PrefValue] | None = None,
                     hosts: Mapping[str, str] | None = None, ca_pem: str | None = None) -> FirefoxBrowser:
        """Start Firefox (in namespace ``netns`` if given) with a fresh profile of
        :data:`OFFLINE_PREFS`, :func:`webrtc_prefs` and ``prefs``. ``hosts`` (name ->
        address) are names it resolves (a ``turns:`` URL needs one: nICEr drops IP literals
        there); ``ca_pem`` a CA it trusts for TLS (the TURN/TLS server's). Both reach only this
        Firefox (:func:`private_files`). PrerequisiteError if it is not installed,
        BrowserError if it does not come up."""
        exe = binary or find_firefox()
        all_prefs = {**OFFLINE_PREFS, **webrtc_prefs(mdns=mdns, loopback=loopback), **(prefs or {})}
        files, binds = private_files(exe, hosts, ca_pem)

        def prepare(profile: Path) -> None:
            (profile / "user.js").write_text(user_js(all_prefs))
            for name, text in files.items():
                target = profile.parent / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            if "distribution/ca.pem" in files:
                ca_file = profile.parent / "distribution" / "ca.pem"
                (ca_file.parent / "policies.json").write_text(policies_json(str(ca_file)))

        process = BrowserProcess.spawn(
            "firefox",
            lambda profile: [exe, "--headless", "--no-remote", "--new-instance",
                             "--profile", str(profile), "--remote-debugging-port", "0",
                             "about:blank"],
            netns=netns, prepare=prepare, env={"MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_REMOTE_SETTINGS_DEVTOOLS": "1"},
            binds=binds)
        bidi: BiDi | None = None
        try:
            port = await _bidi_port(process, START_TIMEOUT)
            sock = await _connect_in(netns, "127.0.0.1", port) if netns else None
            ws = await WebSocket.connect("127.0.0.1", port, "/session", limit=MAX_MESSAGE, sock=sock)
            bidi = BiDi(ws)
            session = await asyncio.wait_for(bidi.send("session.new", {"capabilities": {}}), START_TIMEOUT)
            version = session.get("capabilities", {}).get("browserVersion")
            return cls(process, bidi, version if isinstance(version, str) else None)
        except BaseException as exc:
            if bidi is not None:
                await bidi.aclose()
            await asyncio.shield(process.close())
            if isinstance(exc, WebSocketError):
                raise BrowserError(f"Firefox's WebDriver BiDi: {exc}") from None
            if isinstance(exc, TimeoutError):
                raise BrowserError(f"Firefox did not answer within {START_TIMEOUT:g} s") from None
            raise

    def alive(self) -> bool:
        return self.process.alive() and self.bidi.closed is None

    async def new_tab(self, url: str) -> str:
        # A tab (a window costs several times as much); the prefs keep background tabs'
        # timers unthrottled.
        created = await self.bidi.send("browsingContext.create", {"type": "tab", "background": True})
        context: str = created["context"]
        if url != "about:blank":
            await self.bidi.send("browsingContext.navigate",
                                 {"context": context, "url": url, "wait": "complete"})
        return context

    async def evaluate(self, tab: str, expression: str, *, timeout: float) -> Any:
        # BiDi returns its own serialisation of values; a JSON string is simplest to read back.
        wrapped = f"(async () => JSON.stringify(await ({expression})))()"
        answer = await asyncio.wait_for(self.bidi.send("script.evaluate", {
            "expression": wrapped, "target": {"context": tab}, "awaitPromise": True,
            "resultOwnership": "none",
        }), timeout)
        if answer.get("type") == "exception":
            details = answer.get("exceptionDetails", {})
            raise BrowserError(f"the page script failed: {details.get('text')}")
        value = answer.get("result", {})
        if value.get("type") != "string":
            return None
        try:
            return json.loads(value.get("value", "null"))
        except ValueError:
            raise BrowserError("the page script returned no JSON") from None

    async def close_tab(self, tab: str) -> None:
        with contextlib.suppress(BrowserError, TimeoutError):
            await asyncio.wait_for(self.bidi.send("browsingContext.close", {"context": tab}), 5)

    async def close(self) -> None:
        # Killed, not asked: a graceful shutdown takes a second and the profile is thrown away.
        await self.bidi.aclose()
        await self.process.close()


HOSTS_HEAD = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"


def private_files(exe: str, hosts: Mapping[str, str] | None, ca_pem: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """The files one Firefox gets in its scratch directory and where it sees them: (file
    name -> text, host path -> file name) for :meth:`BrowserProcess.spawn`.

    ``hosts``: an ``/etc/hosts`` of localhost and those names (Firefox resolves through the
    system, and nothing else in a lab namespace answers for the lab's names). ``ca_pem``: an
    enterprise policy (``Certificates`` / ``Install``) in a ``distribution`` directory of its
    own, shown over the installation's one, so the CA lands in this profile's certificate
    store only (no certutil needed; the installation's own ``distribution`` holds only search
    plugins, which a lab's Firefox does not use)."""
    files: dict[str, str] = {}
    binds: dict[str, str] = {}
    if hosts:
        files["etc/hosts"] = HOSTS_HEAD + "".join(f"{ip} {name}\n" for name, ip in hosts.items())
        binds["/etc/hosts"] = "etc/hosts"
    dist = Path(exe).resolve().parent / "distribution"
    if ca_pem and dist.resolve().is_dir():
        files["distribution/ca.pem"] = ca_pem
        binds[str(dist.resolve())] = "distribution"
    return files, binds


def policies_json(ca_file: str) -> str:
    """An enterprise policy document that installs the CA at ``ca_file`` (absolute)."""
    return json.dumps({"policies": {"Certificates": {"Install": [ca_file]}}})


async def _bidi_port(process: BrowserProcess, timeout: float) -> int:
    """The port Firefox chose, from the file it writes into the profile once it listens."""
    path = process.profile / SERVER_FILE
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(path.read_text())["ws_port"])
        if process.process.poll() is not None:
            raise BrowserError(f"Firefox exited with status {process.process.returncode}: "
                               f"{process.log_tail(3)}")
        await asyncio.sleep(0.05)
    raise BrowserError(f"Firefox did not open WebDriver BiDi within {timeout:g} s: {process.log_tail(3)}")


_CLONE_NEWNET = 0x40000000


async def _connect_in(netns: str, host: str, port: int) -> socket.socket:
    """A TCP connection to ``host:port`` opened inside namespace ``netns`` (root only)."""
    out: dict[str, Any] = {}

    def run() -> None:  # a thread of its own: setns() changes only the calling thread
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open("/proc/thread-self/ns/net") as mine, open(f"/run/netns/{netns}") as theirs:
                if libc.setns(theirs.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"cannot enter namespace {netns}")
                try:
                    out["sock"] = socket.create_connection((host, port), timeout=5)
                finally:
                    libc.setns(mine.fileno(), _CLONE_NEWNET)
        except OSError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, 10)
    if "sock" not in out:
        raise BrowserError(f"cannot reach Firefox's WebDriver BiDi in {netns}: {out.get('error')}")
    sock: socket.socket = out["sock"]
    sock.setblocking(False)
    return sock


class FirefoxGatherer:
    """:class:`~natkit.ice.browsers.base.IceBrowser` for headless Firefox."""

    name = "firefox"

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary

    async def gather(self, servers: Sequence[BrowserServer], ice_servers: list[dict[str, Any]],
                     *, timeout: float) -> BrowserGathering:
        # As a browser on the web (mDNS host names), but allowed to reach servers on this host.
        return await gather_in(self.name, lambda: FirefoxBrowser.launch(
            binary=self.binary, loopback=True), servers, ice_servers, timeout)

