"""Run a server (StunServer, TurnServer) until SIGTERM/SIGINT, optionally as N processes
sharing the ports.

``--workers N``: this process binds first (resolving port 0), then starts N-1 more processes
that bind the very same addresses with SO_REUSEPORT; the kernel spreads clients over them.
Worker ``n``'s server is ``type(first)(**first.worker_options(n))``: the first server says
what its siblings need (the resolved ports, and for TURN the worker's share of relay ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, cast


class WorkerServer(AbstractAsyncContextManager[Any], Protocol):
    def worker_options(self, worker: int) -> dict[str, Any]:
        """Keyword arguments of worker ``worker``'s server (1 .. N-1), ports resolved."""
        ...


def raise_fd_limit() -> None:
    """One descriptor per TCP/TLS client and per TURN relay socket: lift the soft limit to
    the hard one, and the hard one too where the process may (root: room for several relay
    IPs' worth of allocations)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(hard, 1 << 18), max(hard, 1 << 16), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
            return
        except (ValueError, OSError):
            continue


def _install_loop_policy() -> None:
    try:
        import uvloop  # optional speed extra
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_until_signal(
    server: WorkerServer, ready: Callable[[WorkerServer], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with server:
            if ready is not None:
                ready(server)
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


_START_TIMEOUT = 60.0  # seconds the first process waits for the others to be serving


def _worker_main(cls: type[WorkerServer], options: dict[str, Any], up: Connection) -> None:
    raise_fd_limit()
    _install_loop_policy()

    def ready(_: WorkerServer) -> None:
        with contextlib.suppress(OSError):
            up.send(True)
            up.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_until_signal(cls(**options), ready))


def _wait_until_up(children: Sequence[tuple[multiprocessing.process.BaseProcess, Connection]]) -> None:
    """Until every child serves (or died): a socket joining an SO_REUSEPORT group moves some
    sources to it, so "ready" waits until the group is complete."""
    deadline = time.monotonic() + _START_TIMEOUT
    pending = {conn: proc for proc, conn in children}
    while pending and time.monotonic() < deadline:
        for ready in wait(list(pending), timeout=0.2):
            conn = cast(Connection, ready)  # (wait() gives back what it was given)
            with contextlib.suppress(EOFError, OSError):
                conn.recv()
            conn.close()
            pending.pop(conn)
        for conn, proc in list(pending.items()):
            if not proc.is_alive():
                conn.close()
                del pending[conn]


def serve(
    server: WorkerServer,
    *,
    workers: int = 1,
    name: str = "natkit-worker",
    ready: Callable[[Any], None] | None = None,
    done: Callable[[Any], None] | None = None,
) -> None:
    """Serve ``server`` (made with SO_REUSEPORT when ``workers`` > 1) until SIGTERM or Ctrl-C,
    with ``workers - 1`` more processes on the same ports; ``ready`` is called once every
    address is up, ``done`` after it stopped (both in this process)."""
    raise_fd_limit()
    _install_loop_policy()
    children: list[multiprocessing.process.BaseProcess] = []

    def on_ready(srv: WorkerServer) -> None:
        ctx = multiprocessing.get_context("spawn")
        started = []
        for n in range(1, workers):
            mine, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker_main,
                args=(type(srv), srv.worker_options(n), theirs),
                name=f"{name}-{n}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            children.append(proc)
            started.append((proc, mine))
        _wait_until_up(started)
        if ready is not None:
            ready(srv)

    try:
        asyncio.run(_run_until_signal(server, on_ready))
    finally:
        for proc in children:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker stops cleanly
        for proc in children:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(1)
        if done is not None:
            done(server)
