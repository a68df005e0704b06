"""What every browser driver offers (:class:`Driver`), and candidate gathering through one.

A driver is a running headless browser that natkit controls over the browser's own remote
protocol (Chromium: DevTools over a pipe; Firefox: WebDriver BiDi over a local WebSocket):
open a tab on a URL, evaluate a JavaScript expression in it (awaiting a promise; the value
comes back as JSON), close the tab, close the browser. ``natkit check --browser`` gathers
through it (:func:`gather_in`) and the lab's browser peers run their cases through it
(:mod:`natkit.lab.stacks.browser`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from natkit.errors import PrerequisiteError
from natkit.ice.browsers.base import BrowserGathering, BrowserServer, BrowserUrlResult
from natkit.ice.browsers.process import BrowserProcess

__all__ = ["GATHER_SCRIPT", "BrowserError", "CommandChannel", "Driver", "gather_in", "wait_for"]


class BrowserError(Exception):
    """The browser answered with an error, a script threw, or the browser went away."""


class CommandChannel:
    """Commands with ids to a browser, answered in any order (DevTools and WebDriver BiDi
    both work this way). A transport provides :meth:`_next` (the next message; BrowserError
    once the browser has gone), :meth:`_write` and :meth:`_answer` (which message answers
    which command); :meth:`request` sends one and awaits its answer."""

    error: type[BrowserError] = BrowserError

    def __init__(self) -> None:
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed: str | None = None
        self.task = asyncio.ensure_future(self._pump())

    async def _next(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _write(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _answer(self, message: dict[str, Any]) -> tuple[int, Any, str | None] | None:
        """(command id, result, error text) if ``message`` answers a command, else None."""
        raise NotImplementedError

    async def _pump(self) -> None:
        try:
            while True:
                answer = self._answer(await self._next())
                if answer is None:
                    continue  # an event
                cid, result, error = answer
                fut = self.pending.pop(cid, None)
                if fut is None or fut.done():
                    continue
                if error is not None:
                    fut.set_exception(self.error(error))
                else:
                    fut.set_result(result)
        except BrowserError as exc:
            self.closed = str(exc)
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(self.error(self.closed))
            self.pending.clear()

    async def request(self, message: dict[str, Any]) -> Any:
        """Send ``message`` with a fresh id; its result (BrowserError for an error answer)."""
        if self.closed:
            raise self.error(self.closed)
        self.next_id += 1
        cid = self.next_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[cid] = fut
        try:
            await self._write({"id": cid, **message})
        except (OSError, ConnectionError) as exc:
            self.pending.pop(cid, None)
            raise self.error(f"the browser went away ({exc})") from None
        try:
            return await fut
        finally:
            self.pending.pop(cid, None)

    def close(self) -> None:
        self.task.cancel()


class Driver(Protocol):
    """A running browser, driven over its remote protocol."""

    name: str
    version: str | None
    process: BrowserProcess

    async def new_tab(self, url: str) -> str:
        """Open ``url`` in a new top-level tab (window); the tab's id."""
        ...

    async def evaluate(self, tab: str, expression: str, *, timeout: float) -> Any:
        """The JSON value of ``expression`` in ``tab`` (a promise is awaited); BrowserError if
        it throws, TimeoutError after ``timeout`` s."""
        ...

    async def close_tab(self, tab: str) -> None:
        ...

    async def close(self) -> None:
        """Close the browser; its processes and scratch directory are gone afterwards."""
        ...


async def wait_for(driver: Driver, tab: str, expression: str, timeout: float) -> Any:
    """Evaluate ``expression`` in ``tab`` until it is truthy (a page still loading throws or
    answers false); its value, or TimeoutError."""
    until = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < until:
        try:
            value = await driver.evaluate(tab, expression, timeout=max(0.1, until - time.monotonic()))
            if value:
                return value
        except BrowserError as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{expression!r} did not hold within {timeout:g} s" + (f" ({last})" if last else ""))


# Runs in a page: gather per URL, and try the whole list in one constructor.
GATHER_SCRIPT = r"""
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
      if (!ev.candidate || !ev.candidate.candidate) {
        out.complete = true; clearTimeout(timer); done(); return;
      }
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

START_ALLOWANCE_S = 20.0  # a browser's start (1-3 s, more on a loaded machine) on top


async def gather_in(
    name: str,
    launch: Callable[[], Awaitable[Driver]],
    servers: Sequence[BrowserServer],
    ice_servers: list[dict[str, Any]],
    timeout: float,
) -> BrowserGathering:
    """Start a browser with ``launch()``, gather from each of ``servers`` (and try the whole
    ``ice_servers`` list in one constructor) in a blank tab, close the browser. Never raises
    for a browser that is missing or fails: :attr:`BrowserGathering.error` says why."""
    started = time.monotonic()
    result = BrowserGathering(name)
    driver: Driver | None = None
    try:
        async with asyncio.timeout(timeout + START_ALLOWANCE_S):
            driver = await launch()
            tab = await driver.new_tab("about:blank")
            args = [[{"url": s.url, "path": s.path, "ice": s.ice_server()} for s in servers],
                    ice_servers, int(timeout * 1000)]
            data = await driver.evaluate(tab, f"({GATHER_SCRIPT})(...{json.dumps(args)})",
                                         timeout=timeout + 5)
    except PrerequisiteError as exc:
        result.error = str(exc)
        return result
    except (BrowserError, OSError, TimeoutError) as exc:
        result.error = f"{name} failed: {exc or 'no answer in time'}"
        result.duration_s = time.monotonic() - started
        return result
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                await driver.close()
    if not isinstance(data, dict):
        result.error = f"{name} failed: the page script returned nothing"
        return result
    result.version = driver.version
    result.config_exception = data.get("configException")
    for item in data.get("urls", []):
        result.urls.append(BrowserUrlResult(
            url=item["url"], path=item["path"], candidates=item["candidates"],
            errors=item["errors"], exception=item["exception"], complete=item["complete"]))
    result.duration_s = time.monotonic() - started
    return result
