"""The Chromium stack: a real browser as a lab peer (headless Chromium, libwebrtc inside).

One case: Chromium (the caller) loads ``static/browser_peer.html`` from the lab's signaling
server (:class:`~natkit.lab.signaling.SignalingServer` given :func:`pages`), with the case in
the URL (:func:`page_url`: room, path, the lab's ICE servers). The page joins the room over the
server's WebSocket and speaks the lab peers' messages (:mod:`natkit.lab.stacks.base`), so the
callee is any other stack, unchanged: it runs ``RTCPeerConnection`` with the case's ICE servers
(``iceTransportPolicy: "relay"`` for relay cases), waits for ICE gathering, relays its offer,
applies the answer, proves the path with a data-channel echo, relays ``done``, waits for the
callee's ``bye`` and reports what Chromium itself says through ``getStats()`` (selected
candidate pair, candidate types, RTT) as one console line ``NATKIT_RESULT {json}``, which
:class:`Chromium` reads from the browser's log. :class:`ChromiumPeer` is the
:class:`~natkit.lab.stacks.base.Peer` adapter (caller only, for now).

Only candidates of the path's type are signaled. Chromium's mDNS host candidates
(``<uuid>.local``) are avoided with ``--disable-features=WebRtcHideLocalIpsWithMdns``, and any
that still appear are dropped (and counted in ``offer_candidates.mdns``) before the offer
leaves, since nothing in a lab namespace answers mDNS.

Chromium is started with a fresh profile directory and no background networking; it, its
helper processes and the profile are removed when the case ends, whatever happened.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab.stacks.base import PeerConfig, PeerResult

__all__ = [
    "CHROMIUM_FLAGS",
    "PAGE",
    "PAGE_PATH",
    "Chromium",
    "ChromiumPeer",
    "chromium",
    "find_chromium",
    "page_url",
    "pages",
    "run_browser_caller",
    "run_browser_case",
]

PAGE = Path(__file__).resolve().parents[1] / "static" / "browser_peer.html"
PAGE_PATH = "/browser"
PATH_TYPES = {"host": "host", "srflx": "srflx", "relay": "relay"}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a namespace: the setuid sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    # Real host addresses instead of mDNS names: nothing in the lab answers mDNS.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--force-webrtc-ip-handling-policy=default",
    # Console messages go to the log, where the page's report line is read.
    "--enable-logging=stderr",
    "--v=0",
)
RESULT_MARK = "NATKIT_RESULT "


# --------------------------------------------------------------------------------------------
# the page, as served by the lab's signaling server


def pages() -> dict[str, tuple[str, bytes]]:
    """The pages to give :class:`~natkit.lab.signaling.SignalingServer` (its ``pages=``)."""
    return {PAGE_PATH: ("text/html; charset=utf-8", PAGE.read_bytes())}


def page_url(
    base: str,
    room: str,
    path: str,
    ice_servers: Sequence[dict[str, Any]],
    *,
    deadline_s: float = 15.0,
    echo_count: int = 5,
) -> str:
    """The URL that makes Chromium the caller of one case (``base``: ``http://host:port``)."""
    _check_path(path)
    query = urlencode({
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


# --------------------------------------------------------------------------------------------
# Chromium


def find_chromium() -> str:
    """The Chromium binary, or a PrerequisiteError saying what to install."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise PrerequisiteError("the browser peer needs Chromium: apt-get install chromium")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when natkit dies, even by ``kill -9`` (its helpers
    follow the browser process)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Chromium:
    """A running headless Chromium: its process (a process group leader) and profile dir."""

    process: subprocess.Popen[bytes]
    profile: Path

    def log(self) -> str:
        try:
            return (self.profile / "chromium.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        return "\n".join(self.log().strip().splitlines()[-lines:])

    def result(self) -> dict[str, Any] | None:
        """The page's report (its ``NATKIT_RESULT`` console line), once it has been written."""
        return parse_result(self.log())

    async def wait_result(self, timeout: float) -> dict[str, Any] | None:
        """Poll the log for the page's report; None if Chromium exits or time runs out first."""
        until = time.monotonic() + timeout
        while True:
            found = self.result()
            if found is not None or time.monotonic() >= until:
                return found
            if self.process.poll() is not None:
                return self.result()
            await asyncio.sleep(0.05)


def parse_result(log: str) -> dict[str, Any] | None:
    """The report in a Chromium log: ``... "NATKIT_RESULT {json}", source: URL (line)``."""
    for line in log.splitlines():
        start = line.find('"' + RESULT_MARK)
        if start < 0:
            continue
        end = line.rfind('", source:')
        try:
            value = json.loads(line[start + 1 + len(RESULT_MARK) : end if end > start else None])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


@contextlib.asynccontextmanager
async def chromium(
    url: str,
    *,
    netns: str | None = None,
    binary: str | None = None,
    extra_flags: Sequence[str] = (),
    mdns: bool = False,
) -> AsyncIterator[Chromium]:
    """Headless Chromium on ``url`` (inside namespace ``netns`` if given), with a fresh profile.

    ``mdns=True`` keeps Chromium's default of hiding host addresses behind mDNS names, as a
    browser on the web does. The browser, its child processes and the profile directory are
    gone when the block ends.
    """
    exe = binary or find_chromium()
    profile = tempfile.mkdtemp(prefix="natkit-chromium-")
    flags = [f for f in CHROMIUM_FLAGS if not (mdns and "WebRtcHideLocalIpsWithMdns" in f)]
    argv = [exe, *flags, f"--user-data-dir={profile}", *extra_flags, url]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = open(Path(profile) / "chromium.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: the browser and all its helpers
        preexec_fn=_die_with_parent,
        env={**os.environ, "HOME": profile},
    )
    try:
        yield Chromium(proc, Path(profile))
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 5)
        # Helpers die a moment after the leader; wait (bounded) until the whole group is gone.
        for _ in range(100):
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            await asyncio.sleep(0.03)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# one case


async def run_browser_caller(
    signaling: tuple[str, int],
    room: str,
    path: str,
    ice_servers: Sequence[dict[str, Any]],
    *,
    netns: str | None = None,
    deadline_s: float = 15.0,
    mdns: bool = False,
) -> dict[str, Any] | None:
    """Chromium as the caller of ``room`` (in namespace ``netns`` if given); its report or None.

    The report: ``connected``, ``t_connect_ms``, ``rtt_ms``, ``selected`` ({local, remote}:
    type, address, port, protocol, relay_protocol; current_rtt_ms), ``local_types``,
    ``remote_types``, ``offer_candidates`` ({kept, dropped, mdns}), ``error``, ``user_agent``.
    The callee is any lab peer in the same room; the page writes its report after the callee's
    ``bye``, so closing Chromium then cuts nobody off. ``mdns``: let Chromium hide its host
    addresses behind mDNS names (they are then dropped from the offer and counted in
    ``offer_candidates.mdns``).
    """
    host, port = signaling
    url = page_url(f"http://{host}:{port}", room, path, ice_servers, deadline_s=deadline_s)
    async with chromium(url, netns=netns, mdns=mdns) as browser:
        # Chromium's start (about 1 s) comes on top of the page's own deadline.
        return await browser.wait_result(deadline_s + 2 * ChromiumPeer.start_s)


class ChromiumPeer:
    """Headless Chromium as a lab stack (the caller; the page has no callee role yet).

    Inside an agent the browser starts in the agent's namespace; ``netns`` runs it in another
    one (``ip netns exec``) for callers outside the lab's agents.
    """

    name: ClassVar[str] = "chromium"
    roles: ClassVar[tuple[str, ...]] = ("caller",)
    heavy: ClassVar[bool] = True
    parallel: ClassVar[int] = 3  # connecting cases at once: each browser takes ~1 CPU to start
    start_s: ClassVar[float] = 5.0

    def __init__(self, netns: str | None = None, *, mdns: bool = False) -> None:
        self.netns = netns
        self.mdns = mdns

    def check(self) -> None:
        find_chromium()

    def max_duration_s(self, config: PeerConfig) -> float:
        return config.deadline_s + 2 * self.start_s + 5.0  # + killing the browser group

    async def start(self, role: str, config: PeerConfig) -> PeerResult:
        result = PeerResult(role, config.path, self.name, relays=None)
        if role not in self.roles:
            result.error = f"the Chromium stack takes only the roles {', '.join(self.roles)}"
            return result
        try:
            report = await run_browser_caller(
                config.signaling, config.room, config.path, config.ice_servers,
                netns=self.netns, deadline_s=config.deadline_s, mdns=self.mdns,
            )
        except (OSError, PrerequisiteError) as exc:
            result.error = f"Chromium did not start: {exc}"
            return result
        if report is None:
            result.error = "Chromium reported nothing (see its log)"
            return result
        result.report = report
        connected = bool(report.get("connected"))
        result.outcome = "connected" if connected else "failed"
        result.selected = report.get("selected")
        if connected:
            result.t_connect_ms = _round(report.get("t_connect_ms"))
            result.rtt_ms = _round(report.get("rtt_ms"))
        else:
            result.error = report.get("error") or "not connected"
        return result


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
    it. Chromium runs in ``browser_netns`` and the aiortc peer (the callee) in ``peer_netns`` as
    ``python -m natkit.lab.stacks.aiortc`` when given, else on this host. Record::

        {"path", "observed": "connected"|"failed", "t_connect_ms", "rtt_ms",
         "selected": Chromium's selected pair (see run_browser_caller) | None,
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
    mine = await caller.start("caller", PeerConfig(room, path, signaling, ice, deadline_s))
    browser = mine.report
    try:
        wait = _callee_wait(browser, callee_deadline)
        if isinstance(callee, asyncio.Task):
            peer = (await asyncio.wait_for(callee, wait)).to_json()
        else:
            out, err = await asyncio.wait_for(ended, wait)
            try:
                peer = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                error = f"the aiortc peer gave no report: {err.decode(errors='replace')[-300:]}"
    except TimeoutError:
        if browser is not None and browser.get("connected"):
            error = "the aiortc peer did not end in time"
    finally:
        ended.cancel()
        if isinstance(callee, asyncio.Task):
            callee.cancel()
        elif callee.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                callee.kill()
            await callee.wait()
    if browser is None and error is None:
        error = mine.error or "Chromium reported nothing (see its log)"
    connected = bool(browser and browser.get("connected"))
    return {
        "path": path,
        "observed": "connected" if connected else "failed",
        "t_connect_ms": mine.t_connect_ms if connected else None,
        "rtt_ms": mine.rtt_ms if connected else None,
        "selected": browser.get("selected") if browser else None,
        "browser": browser,
        "peer": peer,
        "error": error or (browser.get("error") if browser else None),
        "wall_s": round(time.monotonic() - started, 3),
    }


CALLEE_GRACE_S = 1.0


def _callee_wait(browser: dict[str, Any] | None, callee_deadline: float) -> float:
    """How long to wait for the callee once Chromium has reported: a page that failed sends
    no "done", so the callee would only end at its own deadline; it is stopped instead."""
    return callee_deadline + 5 if browser and browser.get("connected") else CALLEE_GRACE_S


def _round(value: Any) -> float | None:
    return round(float(value), 2) if isinstance(value, int | float) else None
