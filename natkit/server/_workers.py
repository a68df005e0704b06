"""Run a StunServer until SIGTERM/SIGINT, optionally as N processes sharing the ports.

``--workers N``: this process binds first (resolving port 0), then starts N-1 more processes
that bind the very same addresses with SO_REUSEPORT; the kernel spreads clients over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
from collections.abc import Callable
from typing import Any

from natkit.server.stun import StunServer


def _raise_fd_limit() -> None:
    """One descriptor per TCP/TLS client: lift the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _install_loop_policy() -> None:
    try:
        import uvloop  # optional speed extra
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_until_signal(server: StunServer, ready: Callable[[StunServer], None] | None) -> None:
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


def _worker_main(options: dict[str, Any]) -> None:
    _raise_fd_limit()
    _install_loop_policy()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_until_signal(StunServer(reuse_port=True, **options), None))


def serve(
    options: dict[str, Any],
    *,
    workers: int = 1,
    ready: Callable[[StunServer], None] | None = None,
    done: Callable[[StunServer], None] | None = None,
) -> None:
    """Serve with ``StunServer(**options)`` until SIGTERM or Ctrl-C; ``ready`` is called once
    every address is up, ``done`` after it stopped (both in this process)."""
    _raise_fd_limit()
    _install_loop_policy()
    server = StunServer(reuse_port=workers > 1, **options)
    children: list[multiprocessing.process.BaseProcess] = []

    def on_ready(srv: StunServer) -> None:
        ctx = multiprocessing.get_context("spawn")
        for n in range(workers - 1):
            proc = ctx.Process(
                target=_worker_main,
                args=(srv.same_ports_options(),),
                name=f"natkit-stun-worker-{n + 1}",
                daemon=True,
            )
            proc.start()
            children.append(proc)
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
