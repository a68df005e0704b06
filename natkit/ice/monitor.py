"""`natkit check` as a monitor: Prometheus gauges per URL and address.

:func:`prometheus_text` renders a :class:`~natkit.ice.check.CheckReport` in the text
exposition format (what node-exporter's textfile collector reads; ``--prometheus FILE``).
:func:`serve_metrics` answers ``GET /metrics`` by running the check on every scrape, the way
blackbox_exporter probes a web server (``--serve HOST:PORT``): one check at a time (scrapes
that arrive meanwhile share its result), URLs checked at most ``concurrency`` at once, and the
whole check kept inside the scrape's timeout (Prometheus sends it in
``X-Prometheus-Scrape-Timeout-Seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from natkit.ice.check import PASS, CheckReport, ServerResult

__all__ = ["MARKER", "prometheus_text", "serve_metrics"]

MARKER = "# natkit check metrics"
_MAX_REQUEST = 8192


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(target: ServerResult, **extra: str) -> str:
    pairs = {"url": target.url, "path": target.path, "address": target.address or "",
             "protocol": target.protocol, **extra}
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _num(value: float) -> str:
    return repr(round(value, 6)) if math.isfinite(value) else "NaN"


def prometheus_text(report: CheckReport, *, now: float | None = None) -> str:
    """The report as Prometheus gauges (one series per URL and resolved address)."""
    families: dict[str, tuple[str, list[str]]] = {
        "natkit_check_up": ("1 when the URL at this address passed every step", []),
        "natkit_check_status": ("1 for the status of the URL at this address "
                                "(pass, fail, untestable)", []),
        "natkit_check_rtt_seconds": ("round trip of the first answered request (Binding, "
                                     "or the challenged Allocate)", []),
        "natkit_check_allocate_success": ("1 when the authenticated Allocate succeeded", []),
        "natkit_check_relay_success": ("1 when data went through the relay and back, both "
                                       "with Send indications and on a channel", []),
        "natkit_check_step_duration_seconds": ("time each step took", []),
    }
    for target in report.servers:
        labels = _labels(target)
        families["natkit_check_up"][1].append(f"natkit_check_up{labels} "
                                              f"{1 if target.status == PASS else 0}")
        for status in ("pass", "fail", "untestable"):
            families["natkit_check_status"][1].append(
                f"natkit_check_status{_labels(target, status=status)} "
                f"{1 if target.status == status else 0}")
        rtt = target.rtt_s
        if rtt is not None:
            families["natkit_check_rtt_seconds"][1].append(
                f"natkit_check_rtt_seconds{labels} {_num(rtt)}")
        if target.scheme in ("turn", "turns"):
            allocate = target.step("allocate")
            families["natkit_check_allocate_success"][1].append(
                f"natkit_check_allocate_success{labels} "
                f"{1 if allocate is not None and allocate.passed else 0}")
            echo, channel = target.step("relay-echo"), target.step("channel")
            relayed = bool(echo and echo.passed and channel and channel.passed)
            families["natkit_check_relay_success"][1].append(
                f"natkit_check_relay_success{labels} {1 if relayed else 0}")
        for step in target.checks:
            if step.duration_s is not None:
                families["natkit_check_step_duration_seconds"][1].append(
                    f"natkit_check_step_duration_seconds{_labels(target, step=step.name)} "
                    f"{_num(step.duration_s)}")
    lines = [MARKER]
    for name, (help_text, samples) in families.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]
    lines += [
        "# HELP natkit_check_success 1 when no URL failed", "# TYPE natkit_check_success gauge",
        f"natkit_check_success {1 if report.ok else 0}",
        "# HELP natkit_check_duration_seconds wall time of the whole check",
        "# TYPE natkit_check_duration_seconds gauge",
        f"natkit_check_duration_seconds {_num(report.duration_s)}",
        "# HELP natkit_check_timestamp_seconds when the check ended (UNIX time)",
        "# TYPE natkit_check_timestamp_seconds gauge",
        f"natkit_check_timestamp_seconds {_num(time.time() if now is None else now)}",
    ]
    return "\n".join(lines) + "\n"


async def serve_metrics(
    host: str,
    port: int,
    run_check: Callable[[float], Awaitable[CheckReport]],
    *,
    timeout: float,
    started: Callable[[tuple[str, int]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``/metrics`` on ``host:port`` until ``stop`` is set (or cancelled). Each scrape
    calls ``run_check(budget_s)``; ``budget_s`` is ``timeout`` or less when the scraper's own
    timeout is shorter. ``started`` gets the bound address."""
    lock = asyncio.Lock()
    current: dict[str, Any] = {}

    async def scrape(budget: float) -> str:
        async with lock:
            # A scrape that waited for another one's check takes that result if it is fresh.
            done_at = current.get("at", 0.0)
            if time.monotonic() - done_at < 1.0 and "text" in current:
                return str(current["text"])
            try:
                async with asyncio.timeout(budget + 2.0):
                    report = await run_check(budget)
                text = prometheus_text(report)
            except TimeoutError:
                text = (f"{MARKER}\n# TYPE natkit_check_success gauge\nnatkit_check_success 0\n"
                        "# TYPE natkit_check_scrape_timeout gauge\n"
                        "natkit_check_scrape_timeout 1\n")
            current.update(text=text, at=time.monotonic())
            return text

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", "GET only\n", "text/plain"
            elif path == "/metrics":
                budget = timeout
                with contextlib.suppress(ValueError):
                    scraper = float(headers.get("x-prometheus-scrape-timeout-seconds", "inf"))
                    budget = max(0.5, min(timeout, scraper - 0.5))
                body = await scrape(budget)
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            elif path == "/":
                status, ctype = "200 OK", "text/html; charset=utf-8"
                body = ('<html><head><meta name="generator" content="natkit"></head><body>'
                        '<h1>natkit check</h1><p><a href="/metrics">/metrics</a> runs the '
                        "check and reports per URL and address.</p></body></html>\n")
            else:
                status, body, ctype = "404 Not Found", "try /metrics\n", "text/plain"
            data = body.encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: "
                         f"{len(data)}\r\nConnection: close\r\n\r\n".encode()
                         + (b"" if method == "HEAD" else data))
            await writer.drain()
        except (ValueError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST)
    async with server:
        sock = server.sockets[0].getsockname()
        if started is not None:
            started((str(sock[0]), int(sock[1])))
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()
