"""A real browser as a lab peer: headless Chromium against the lab's aiortc peer.

One case: Chromium (the caller) loads ``static/browser_peer.html`` from the lab's signaling
server (:class:`~natkit.lab.signaling.SignalingServer` given :func:`pages`), with the case in
the URL (:func:`page_url`: room, path, the lab's ICE servers). The page joins the room over the
server's WebSocket and speaks the lab peers' messages (:mod:`natkit.lab.peer`), so the callee is
the lab's own aiortc peer, unchanged: it runs ``RTCPeerConnection`` with the case's ICE servers
(``iceTransportPolicy: "relay"`` for relay cases), waits for ICE gathering, relays its offer,
applies the answer, proves the path with a data-channel echo and reports what Chromium itself
says through ``getStats()`` (selected candidate pair, candidate types, RTT) as one console line
``NATKIT_RESULT {json}``, which :class:`Chromium` reads from the browser's log.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from natkit.errors import UsageError

__all__ = [
    "CHROMIUM_FLAGS",
    "PAGE",
    "PAGE_PATH",
    "Chromium",
    "browser_cases",
    "browser_record",
    "chromium",
    "find_chromium",
    "page_url",
    "pages",
    "run_browser_caller",
    "run_browser_case",
    "run_lab_browser_case",
]

PAGE = Path(__file__).resolve().parent / "static" / "browser_peer.html"
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
        raise UsageError(f"unknown path {path!r}; expected one of: {', '.join(PATH_TYPES)}")


# --------------------------------------------------------------------------------------------
# Chromium


def find_chromium() -> str:
    """The Chromium binary, or a UsageError saying what to install."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise UsageError("the browser peer needs Chromium: apt-get install chromium")


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
    callee_done: Awaitable[Any] | None = None,
    hold_s: float = 0.0,
) -> dict[str, Any] | None:
    """Chromium as the caller of ``room`` (in namespace ``netns`` if given); its report or None.

    ``callee_done``: once the page reports a connection, Chromium is kept running until this
    completes (at most ``hold_s``): the page relays "done" to the callee just after writing its
    report, and a browser closed in between makes the callee see the caller leave instead.

    The report: ``connected``, ``t_connect_ms``, ``rtt_ms``, ``selected`` ({local, remote}:
    type, address, port, protocol, relay_protocol; current_rtt_ms), ``local_types``,
    ``remote_types``, ``offer_candidates`` ({kept, dropped, mdns}), ``error``, ``user_agent``.
    The callee is any lab peer (``natkit.lab.peer`` with role ``callee``) in the same room.
    ``mdns``: let Chromium hide its host addresses behind mDNS names (they are then dropped
    from the offer and counted in ``offer_candidates.mdns``).
    """
    host, port = signaling
    url = page_url(f"http://{host}:{port}", room, path, ice_servers, deadline_s=deadline_s)
    async with chromium(url, netns=netns, mdns=mdns) as browser:
        # Chromium's start (about 1 s) comes on top of the page's own deadline.
        report = await browser.wait_result(deadline_s + 10)
        if report and report.get("connected") and callee_done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(callee_done), hold_s)
        return report


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
    """Run one Chromium↔aiortc case over ``path`` and return its record.

    ``signaling`` is the lab's signaling server (serving :func:`pages`) as both peers reach
    it. Chromium runs in ``browser_netns`` and the lab's aiortc peer (the callee) in
    ``peer_netns`` as ``python -m natkit.lab.peer`` when given, else on this host. Record::

        {"path", "observed": "connected"|"failed", "t_connect_ms", "rtt_ms",
         "selected": Chromium's selected pair (see run_browser_caller) | None,
         "browser": Chromium's whole report | None,
         "peer": the aiortc callee's result (natkit.lab.peer.PeerResult as JSON) | None,
         "error": str | None, "wall_s": float}
    """
    from natkit.lab.peer import PeerConfig, run_peer

    _check_path(path)
    room = room or f"browser-{os.urandom(6).hex()}"
    started = time.monotonic()
    ice = list(ice_servers)
    # The callee's deadline covers Chromium's start as well.
    callee_deadline = deadline_s + 5
    peer: dict[str, Any] | None = None
    error: str | None = None
    if peer_netns is None:
        callee: Any = asyncio.create_task(
            run_peer(PeerConfig("callee", room, path, signaling, ice, callee_deadline))
        )
    else:
        callee = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", peer_netns, python, "-m", "natkit.lab.peer",
            "--role", "callee", "--room", room, "--path", path,
            "--signaling", f"{signaling[0]}:{signaling[1]}", "--ice-servers", json.dumps(ice),
            "--deadline", str(callee_deadline),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    # The callee's end, awaited by Chromium's side too (see run_browser_caller's callee_done).
    ended: asyncio.Future[Any] = callee if isinstance(callee, asyncio.Task) else asyncio.ensure_future(callee.communicate())
    browser: dict[str, Any] | None = None
    try:
        browser = await run_browser_caller(
            signaling, room, path, ice, netns=browser_netns, deadline_s=deadline_s, mdns=mdns,
            callee_done=ended, hold_s=callee_deadline + 5,
        )
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
        error = "Chromium reported nothing (see its log)"
    connected = bool(browser and browser.get("connected"))
    return {
        "path": path,
        "observed": "connected" if connected else "failed",
        "t_connect_ms": _round(browser.get("t_connect_ms")) if browser and connected else None,
        "rtt_ms": _round(browser.get("rtt_ms")) if browser and connected else None,
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


# --------------------------------------------------------------------------------------------
# browser cases inside the lab (natkit lab run --browser)

CHROMIUM_START_S = 5.0  # the callee's deadline covers Chromium's start on top of the case's


def browser_cases(topology: Any, paths: Sequence[str] = ("srflx", "relay"), callee: str | None = None) -> list[Any]:
    """The browser cases of ``topology``: Chromium behind every matrix NAT (the caller), against
    the lab's aiortc peer behind ``callee`` (default: the first full-cone NAT, else the first
    NAT), over each of ``paths``. ``Case.nats`` is (Chromium's NAT, aiortc's NAT)."""
    from natkit.lab.topology import Case

    rows = list(topology.matrix_nats)
    if not rows:
        return []
    if callee is None:
        callee = next((n.name for n in rows if n.type == "full-cone"), rows[0].name)
    elif callee not in {n.name for n in rows}:
        raise UsageError(f"--browser-callee {callee!r}: not a NAT of {topology.source}")
    for p in paths:
        _check_path(p)
    return [Case((n.name, callee), p) for p in paths for n in rows]


def browser_record(
    case: Any,
    expectation: Any,
    caller_router: Any,
    browser: dict[str, Any] | None,
    callee: dict[str, Any] | None,
    callee_router: Any = None,
) -> dict[str, Any]:
    """One browser case in the shape of the lab's cases (``natkit lab run --json``), plus
    ``browser``: Chromium's whole report (getStats: selected pair, candidate types).

    ``evidence`` stays None here: the runner judges the packets once its capture is complete
    (:func:`natkit.lab.evidence.judge_browser`), from the working fields ``_callee`` (the aiortc
    peer's result) and ``_routers`` (caller's and callee's router ids), which it strips from
    its JSON."""
    from natkit.lab.evidence import claimed_route

    callee = callee or {}
    connected = bool(browser and browser.get("connected")) and callee.get("outcome") == "connected"
    observed = "connected" if connected else "failed"
    selected = (browser or {}).get("selected") if connected else None
    route = claimed_route(selected, caller_router.lan_net, caller_router.public_ip) if connected else None
    out = {
        "nats": list(case.nats),
        "path": case.path,
        "same_lan": False,
        "caller": "chromium",
        "expected": expectation.outcome,
        "observed": observed,
        "expected_route": expectation.route,
        "route": route,
        "reason": expectation.reason,
        "selected": selected,
        "callee_selected": callee.get("selected") if connected else None,
        "t_connect_ms": _round((browser or {}).get("t_connect_ms")) if connected else None,
        "rtt_ms": _round((browser or {}).get("rtt_ms")) if connected else None,
        "error": None if connected else ((browser or {}).get("error") or callee.get("error")
                                         or "Chromium reported nothing"),
        "evidence": None,
        "browser": browser,
        "_callee": callee,
        "_routers": [caller_router.id, callee_router.id] if callee_router is not None else [caller_router.id],
    }
    out["pass"] = observed == out["expected"] and (not connected or route == expectation.route)
    return out


async def run_lab_browser_case(
    topology: Any,
    plan: Any,
    case: Any,
    *,
    browser_netns: str,
    call_callee: Callable[..., Awaitable[dict[str, Any]]],
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """Run a browser case of :func:`browser_cases` in a built lab and return its record.

    ``browser_netns`` is the namespace of the caller's peer (``plan.peers_of(case)[0]``);
    ``call_callee(room=, path=, signaling=, ice_servers=, deadline_s=)`` runs the lab's aiortc
    peer as the callee behind the other NAT and returns its result (``PeerResult`` as JSON),
    e.g. ``functools.partial(agent.call, timeout, op="case", role="callee")`` in the runner.
    The lab's signaling server must serve :func:`pages`.
    """
    from natkit.lab.expect import expect

    (ra, _), (rb, _) = plan.peers_of(case)
    srv = topology.servers
    exp = expect(ra.nat.behaviour, rb.nat.behaviour, case.path, turn_transports=srv.turn_transports)
    deadline = deadline_s or topology.case_deadline_s
    room = f"browser:{case.id}"
    ice = srv.ice_servers(case.path)
    signaling = (srv.signaling_address, srv.signaling_port)
    callee_task: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(call_callee(
        room=room, path=case.path, signaling=list(signaling), ice_servers=ice,
        deadline_s=deadline + CHROMIUM_START_S,
    ))
    report: dict[str, Any] | None = None
    callee: dict[str, Any] | None = None
    try:
        report = await run_browser_caller(
            signaling, room, case.path, ice, netns=browser_netns, deadline_s=deadline,
            callee_done=callee_task, hold_s=deadline + CHROMIUM_START_S + 5,
        )
        with contextlib.suppress(TimeoutError):
            callee = await asyncio.wait_for(callee_task, _callee_wait(report, deadline + CHROMIUM_START_S))
    finally:
        callee_task.cancel()
    return browser_record(case, exp, ra, report, callee, rb)
