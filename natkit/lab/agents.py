"""The agent RPC: JSON lines over one stream socket per agent, both sides.

An **agent** is a process inside one node of the lab (a peer's namespace or container, or the
servers' node) that runs many commands at once on its own event loop. How it got there is the
engine's business (the netns engine forks it into a namespace; the Compose engine's containers
connect to the runner over TCP); both hand a connected socket to either side of this module:

* the agent: ``await serve(sock)`` until the socket closes;
* the orchestrator: :class:`AgentClient` (``await client.call(timeout, op=..., ...)``).

Wire format, one JSON object per line: a command ``{"id": N, "op": OP, ...}``; its answer
``{"id": N, "result": {...}}`` (``{"error": TEXT}`` inside ``result`` when it failed); and for
``servers`` a ``{"id": N, "ready": true}`` once they listen. Operations:

==================  ==========================================================================
``case``            ``stack``, ``role``, ``config`` (PeerConfig as JSON), ``peer`` (a --peer
                    stack's NAME=COMMAND): one side of a case (:mod:`natkit.lab.stacks`);
                    result: PeerResult as JSON
``prepare``         ``stack``, ``config``: start what the stack keeps across cases (a browser)
                    before the cases; result: ``{"seconds"}`` (``{"error"}`` if it failed)
``restart``         ``stack``, ``config``: stop that and start it again (a browser a failed
                    case showed at fault, before the case runs again); result: as ``prepare``,
                    and ``before``: what a new tab of the old browser gathered
``probe``           ``server`` (stun: URL), ``timeout``: ``natkit probe``; result: its JSON
``servers``         ``spec`` (ServersSpec as JSON): STUN, TURN, signaling until stopped
``stop-servers``    unwind the servers (the ``servers`` command then answers)
``cancel``          ``target`` (an id): cancel that running command (it answers an error)
==================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["AgentClient", "serve"]

LINE_LIMIT = 1 << 20  # one result line (a PeerResult with SDP candidates is a few KiB)


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, default=str) + "\n").encode()


# -- the agent's side -----------------------------------------------------------------------


async def serve(sock: socket.socket) -> None:
    """Answer the commands that arrive on ``sock`` until it closes; then cancel what runs."""
    reader, writer = await asyncio.open_connection(sock=sock, limit=LINE_LIMIT)
    tasks: dict[int, asyncio.Task[None]] = {}
    stop_servers = asyncio.Event()

    async def handle(cmd: dict[str, Any]) -> None:
        try:
            result = await _command(cmd, writer, stop_servers, tasks)
        except asyncio.CancelledError:
            result = {"error": "cancelled by the orchestrator"}
        except Exception as exc:  # reported, not raised: the orchestrator decides what it means
            result = {"error": f"{type(exc).__name__}: {exc}"}
        if not writer.is_closing():
            writer.write(_line({"id": cmd.get("id"), "result": result}))

    def forget(cid: int) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            tasks.pop(cid, None)

        return done

    while line := await reader.readline():
        cmd = json.loads(line)
        cid = int(cmd.get("id", 0))
        tasks[cid] = task = asyncio.create_task(handle(cmd))
        task.add_done_callback(forget(cid))
    for task in list(tasks.values()):
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    from natkit.lab import stacks

    await stacks.close_all()  # browsers kept across cases


async def _command(
    cmd: dict[str, Any], writer: asyncio.StreamWriter, stop_servers: asyncio.Event, tasks: dict[int, asyncio.Task[None]]
) -> dict[str, Any]:
    op = cmd.get("op")
    if op == "case":
        from natkit.lab import stacks

        config = stacks.PeerConfig.from_json(cmd["config"])
        if cmd.get("peer") and cmd["stack"] not in stacks.STACKS:
            # a --peer command the orchestrator registered in its own process (a container's
            # agent was not forked from it): its NAME=COMMAND comes with the case
            from natkit.lab.stacks.command import CommandPeer

            stacks.register(CommandPeer.from_spec(str(cmd["peer"])))
        return (await stacks.get(cmd["stack"]).start(cmd["role"], config)).to_json()
    if op == "prepare":
        from natkit.lab import stacks

        peer = stacks.get(cmd["stack"])
        prepare = getattr(peer, "prepare", None)
        if prepare is None:
            return {"seconds": 0.0}
        return {"seconds": round(await prepare(stacks.PeerConfig.from_json(cmd["config"])), 3)}
    if op == "restart":
        from natkit.lab import stacks

        peer = stacks.get(cmd["stack"])
        restart = getattr(peer, "restart", None)
        if restart is None:
            return {"seconds": 0.0}
        took, before = await restart(stacks.PeerConfig.from_json(cmd["config"]))
        return {"seconds": round(took, 3), "before": before}
    if op == "probe":
        from natkit.nat.probe import probe

        res = await probe([cmd["server"]], families=tuple(cmd.get("families") or (4,)), timeout=cmd["timeout"])
        return res.to_json()
    if op == "lifetime":
        from natkit.nat.discovery import ProbeOptions, binding_lifetime

        host, port = cmd["server"]
        af = socket.AF_INET6 if ":" in host else socket.AF_INET
        return await binding_lifetime((str(host), int(port)), af, ProbeOptions(), 0.005, [float(t) for t in cmd["schedule"]])
    if op == "servers":
        from natkit.lab.servers import ServersSpec, run_servers

        def ready() -> None:
            writer.write(_line({"id": cmd["id"], "ready": True}))

        await run_servers(ServersSpec.from_json(cmd["spec"]), ready, stop_servers)
        return {"stopped": True}
    if op == "stop-servers":
        stop_servers.set()
        return {}
    if op == "cancel":
        task = tasks.get(int(cmd.get("target", -1)))
        if task is not None:
            task.cancel()
        return {"cancelled": task is not None}
    raise ValueError(f"unknown agent command {op!r}")


# -- the orchestrator's side ----------------------------------------------------------------


class AgentClient:
    """The orchestrator's handle on one agent: send commands, await their results."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self._sock = sock
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._sock, limit=LINE_LIMIT)
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, ValueError):
            while line := await reader.readline():
                msg = json.loads(line)
                if msg.get("ready"):
                    if not self.ready.done():
                        self.ready.set_result(True)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    result = msg.get("result")
                    fut.set_result(result if isinstance(result, dict) else {"error": f"bad answer {result!r}"})
        err = {"error": f"agent {self.name} exited"}
        for fut in self._pending.values():
            if not fut.done():
                fut.set_result(err)
        if not self.ready.done():
            self.ready.set_result(False)

    def send(self, **cmd: Any) -> int:
        """Send a command without waiting for its answer; its id."""
        assert self._writer is not None, "start() first"
        self._next += 1
        if not self._writer.is_closing():
            self._writer.write(_line({"id": self._next, **cmd}))
        return self._next

    def submit(self, **cmd: Any) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Send a command; its id and the future of its answer."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        cid = self._next + 1
        self._pending[cid] = fut
        self.send(**cmd)
        return cid, fut

    async def call(self, wait: float, **cmd: Any) -> dict[str, Any]:
        """Send a command and await its answer for at most ``wait`` seconds."""
        cid, fut = self.submit(**cmd)
        return await self.answer(cid, fut, wait)

    async def answer(self, cid: int, fut: asyncio.Future[dict[str, Any]], wait: float) -> dict[str, Any]:
        """The answer of command ``cid`` (from :meth:`submit`), or an error after ``wait`` s."""
        try:
            return await asyncio.wait_for(fut, wait)
        except TimeoutError:
            self._pending.pop(cid, None)
            self.cancel(cid)
            return {"error": f"agent {self.name} did not answer within {wait:g} s"}

    def cancel(self, cid: int) -> None:
        """Ask the agent to cancel command ``cid`` (its answer then says so)."""
        self.send(op="cancel", target=cid)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 3)
