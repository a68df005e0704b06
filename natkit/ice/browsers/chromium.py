"""Headless Chromium gathering candidates per URL, driven over the DevTools protocol.

The Trickle ICE page, automated: Chromium starts with a fresh profile and
``--remote-debugging-pipe`` (the protocol on file descriptors 3 and 4, NUL-separated JSON: no
port to open, nothing another local user could connect to), opens ``about:blank`` and
evaluates a script that creates one ``RTCPeerConnection`` per URL, gathers until complete or
the time is up, and returns every candidate (with the URL Chromium says produced it) and every
``icecandidateerror``. Chromium, its helper processes and the profile are removed afterwards,
also on failure and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from natkit.errors import PrerequisiteError
from natkit.ice.browsers.base import BrowserGathering, BrowserServer, BrowserUrlResult

__all__ = ["FLAGS", "ChromiumGatherer", "DevToolsPipe", "find_chromium"]

FLAGS = (
    "--headless",
    "--no-sandbox",  # as root the setuid sandbox cannot start
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-pipe",
    # Servers on loopback (a test, a server on this host) need the loopback interface.
    "--allow-loopback-in-peer-connection",
)
MAX_MESSAGE = 16 * 1024 * 1024

# Runs in the page: gather per URL, and try the whole list in one constructor.
_SCRIPT = r"""
async (servers, whole, timeoutMs) => {
  const one = (server) => new Promise((resolve) => {
    const out = {path: server.path, url: server.url, candidates: [], errors: [],
                 exception: null, complete: false};
    let pc;
    try {
      pc = new RTCPeerConnection({iceServers: [server.ice], iceCandidatePoolSize: 0});
    } catch (e) {
      out.exception = `${e.name}: ${e.message}`;
      resolve(out);
      return;
    }
    const done = () => { try { pc.close(); } catch (e) {} resolve(out); };
    const timer = setTimeout(done, timeoutMs);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate) { out.complete = true; clearTimeout(timer); done(); return; }
      const c = ev.candidate;
      out.candidates.push({candidate: c.candidate, type: c.type, protocol: c.protocol,
                           address: c.address, port: c.port, relayProtocol: c.relayProtocol,
                           url: ev.url || null});
    };
    pc.onicecandidateerror = (ev) => {
      out.errors.push({errorCode: ev.errorCode, errorText: ev.errorText, url: ev.url,
                       address: ev.address, port: ev.port});
    };
    pc.createDataChannel("natkit");
    pc.createOffer().then((o) => pc.setLocalDescription(o)).catch((e) => {
      out.exception = `${e.name}: ${e.message}`; clearTimeout(timer); done();
    });
  });
  let wholeError = null;
  try { new RTCPeerConnection({iceServers: whole}).close(); }
  catch (e) { wholeError = `${e.name}: ${e.message}`; }
  const urls = await Promise.all(servers.map(one));
  return {userAgent: navigator.userAgent, configException: wholeError, urls};
}
"""


def find_chromium() -> str:
    """The Chromium binary, or a PrerequisiteError saying what to install."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise PrerequisiteError("--browser chromium needs Chromium: apt-get install chromium")


class DevToolsError(Exception):
    """The DevTools protocol answered with an error, or the browser went away."""


class DevToolsPipe:
    """The DevTools protocol over a pair of pipes (``--remote-debugging-pipe``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.WriteTransport) -> None:
        self.reader = reader
        self.writer = writer
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.reader.readuntil(b"\0")
                message = json.loads(raw[:-1])
                fut = self.pending.pop(message.get("id", -1), None)
                if fut is None or fut.done():
                    continue  # an event
                if "error" in message:
                    fut.set_exception(DevToolsError(str(message["error"].get("message"))))
                else:
                    fut.set_result(message.get("result", {}))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ConnectionError) as exc:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(DevToolsError(f"the browser closed the pipe ({exc})"))
            self.pending.clear()

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        self.writer.write(json.dumps(message).encode() + b"\0")
        return await fut

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


class ChromiumGatherer:
    """:class:`~natkit.ice.browsers.base.IceBrowser` for headless Chromium."""

    name = "chromium"

    def __init__(self, binary: str | None = None, extra_flags: Sequence[str] = ()) -> None:
        self.binary = binary
        self.extra_flags = tuple(extra_flags)

    async def gather(self, servers: Sequence[BrowserServer], ice_servers: list[dict[str, Any]],
                     *, timeout: float) -> BrowserGathering:
        started = time.monotonic()
        result = BrowserGathering(self.name)
        try:
            exe = self.binary or find_chromium()
        except PrerequisiteError as exc:
            result.error = str(exc)
            return result
        try:
            # Chromium's start (about a second) comes on top of the gathering time.
            async with asyncio.timeout(timeout + 20):
                data = await self._run(exe, servers, ice_servers, timeout)
        except (DevToolsError, OSError, TimeoutError) as exc:
            result.error = f"Chromium failed: {exc or 'no answer in time'}"
            result.duration_s = time.monotonic() - started
            return result
        result.version = _version(data.get("product")) or _version(data.get("userAgent"))
        result.config_exception = data.get("configException")
        for item in data.get("urls", []):
            result.urls.append(BrowserUrlResult(
                url=item["url"], path=item["path"], candidates=item["candidates"],
                errors=item["errors"], exception=item["exception"], complete=item["complete"]))
        result.duration_s = time.monotonic() - started
        return result

    async def _run(self, exe: str, servers: Sequence[BrowserServer],
                   ice_servers: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
        profile = tempfile.mkdtemp(prefix="natkit-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def child_fds() -> None:  # in the child, before exec: the pipe on fds 3 and 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)
            with contextlib.suppress(Exception):
                import ctypes

                ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with us

        log = open(Path(profile) / "chromium.log", "wb")  # noqa: SIM115 - closed below
        proc: subprocess.Popen[bytes] | None = None
        pipe: DevToolsPipe | None = None
        try:
            proc = subprocess.Popen(
                [exe, *FLAGS, f"--user-data-dir={profile}", *self.extra_flags, "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                close_fds=False,  # our own descriptors are close-on-exec (PEP 446)
                preexec_fn=child_fds, start_new_session=True,
                env={**os.environ, "HOME": profile},
            )
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
            version = await pipe.send("Browser.getVersion")
            target = await pipe.send("Target.createTarget", {"url": "about:blank"})
            attached = await pipe.send("Target.attachToTarget",
                                       {"targetId": target["targetId"], "flatten": True})
            session = attached["sessionId"]
            args = [[{"url": s.url, "path": s.path, "ice": s.ice_server()} for s in servers],
                    ice_servers, int(timeout * 1000)]
            answer = await pipe.send("Runtime.evaluate", {
                "expression": f"({_SCRIPT})(...{json.dumps(args)})",
                "awaitPromise": True, "returnByValue": True,
            }, session)
            if "exceptionDetails" in answer:
                text = answer["exceptionDetails"].get("exception", {}).get("description")
                raise DevToolsError(f"the page script failed: {text}")
            value = answer.get("result", {}).get("value")
            if not isinstance(value, dict):
                raise DevToolsError("the page script returned nothing")
            value["product"] = version.get("product")
            with contextlib.suppress(DevToolsError, TimeoutError):
                await asyncio.wait_for(pipe.send("Browser.close"), 2)
            return value
        finally:
            if pipe is not None:
                pipe.close()
            for fd in (to_browser_r, to_browser_w, from_browser_r, from_browser_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 5)
                for _ in range(100):  # helpers die a moment after the leader
                    try:
                        os.killpg(proc.pid, 0)
                    except (ProcessLookupError, PermissionError):
                        break
                    await asyncio.sleep(0.03)
            log.close()
            shutil.rmtree(profile, ignore_errors=True)


def _version(user_agent: Any) -> str | None:
    if not isinstance(user_agent, str):
        return None
    for token in user_agent.split():
        if token.startswith("HeadlessChrome/") or ("/" not in token and token[:1].isdigit()):
            return token.split("/", 1)[-1]
        if token.startswith(("HeadlessChrome/", "Chrome/")):
            return token.split("/", 1)[1]
    return None
