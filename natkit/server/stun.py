"""The STUN responder: ``async with natkit.StunServer(...) as server``.

UDP sockets are each served by a dedicated thread (natkit/server/_fastpath.py: plain Binding
requests answered from bytes, in C when it can be compiled), everything else by the general
path (natkit/server/_binding.py). TCP and TLS are asyncio streams with RFC 8489 framing under
the stream limits shared with the TURN relay (natkit/server/_stream.py: per-source and total
connection caps, deadlines for the first message, idleness between complete messages, TLS
failures named). With ``alternate_ip`` the server runs in RFC 5780 mode: four sockets per
primary address (primary/alternate IP x primary/alternate port), OTHER-ADDRESS, CHANGE-REQUEST,
RESPONSE-PORT and PADDING; without it, those attributes get 420 like any unknown one, and a
client that keeps sending CHANGE-REQUEST regardless is named in the log, once per source.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from errno import EADDRINUSE
from types import TracebackType
from typing import Any

from natkit.errors import ConfigError, PrerequisiteError, UsageError
from natkit.server._binding import Address, BindingResponder, Reply, Verdict
from natkit.server._budget import SourceBudget
from natkit.server._fastpath import IP_PKTINFO, Counters, UdpServeThread, describe, helper_status
from natkit.server._stream import StreamCounters, StreamGuard, StreamLimits, StunStreamProtocol
from natkit.server._tls import certificate_names, server_context

log = logging.getLogger("natkit.server.stun")

DEFAULT_PORT = 3478
DEFAULT_TLS_PORT = 5349
DEFAULT_LISTEN: tuple[Address, ...] = (("0.0.0.0", DEFAULT_PORT), ("::", DEFAULT_PORT))
_RCVBUF = 4 << 20


def parse_listen(spec: str | Address, default_port: int = DEFAULT_PORT) -> Address:
    """``"ip:port"``, ``"[v6]:port"``, ``"ip"`` or an ``(ip, port)`` tuple -> (ip, port)."""
    if isinstance(spec, tuple):
        ip, port = spec
    else:
        text = spec.strip()
        if text.startswith("["):
            end = text.find("]")
            ip, rest = text[1:end], text[end + 1 :]
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else -1
            if end < 0 or (rest and port < 0):
                raise UsageError(f"bad listen address '{spec}': expected [IPv6]:PORT")
            if not rest:
                port = default_port
        elif text.count(":") == 1:
            ip, port_text = text.split(":")
            if not port_text.isdigit():
                raise UsageError(f"bad listen address '{spec}': port must be a number")
            port = int(port_text)
        else:
            ip, port = text, default_port
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise UsageError(f"bad listen address '{spec}': '{ip}' is not an IP address") from None
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"bad listen address '{spec}': port must be 0-65535")
    return ip, port


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


_ATTR = struct.Struct("!HH")
_CHANGE_REQUEST = 0x0003


def has_change_request(data: bytes) -> bool:
    """True when the STUN message ``data`` carries a CHANGE-REQUEST (a bounded TLV walk)."""
    pos, end = 20, min(len(data), 20 + int.from_bytes(data[2:4], "big"))
    for _ in range(256):
        if pos + 4 > end:
            return False
        kind, length = _ATTR.unpack_from(data, pos)
        if kind == _CHANGE_REQUEST:
            return True
        pos += 4 + ((length + 3) & ~3)
    return False


class ChangeRequestNotice:
    """Says in the log, once per source, that a client keeps sending CHANGE-REQUEST to a
    server without RFC 5780 mode (pynat and pystun3 re-send on every 420, forever).

    ``threshold`` requests from one source IP make it "keep sending"; at most ``per_minute``
    lines a minute (the rest are counted in the next line); sources remembered are bounded.
    Thread-safe: the UDP serving threads and the event loop both report to it.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        threshold: int = 3,
        per_minute: int = 10,
        max_sources: int = 10_000,
    ) -> None:
        self.log = logger
        self.threshold = threshold
        self.per_minute = per_minute
        self.max_sources = max_sources
        self.count = 0  # CHANGE-REQUESTs seen
        self.sources = 0  # sources named (or that would have been, past the rate limit)
        self._seen: dict[str, int] = {}
        self._told: set[str] = set()
        self._window = (0.0, 0)  # (minute start, lines in it)
        self._suppressed = 0
        self._lock = threading.Lock()

    def saw(self, ip: str) -> None:
        with self._lock:
            self.count += 1
            if ip in self._told:
                return
            if len(self._seen) >= self.max_sources:
                self._seen.clear()
            seen = self._seen[ip] = self._seen.get(ip, 0) + 1
            if seen < self.threshold:
                return
            del self._seen[ip]
            if len(self._told) >= self.max_sources:
                self._told.clear()
            self._told.add(ip)
            self.sources += 1
            now = time.monotonic()
            start, lines = self._window
            if now - start >= 60:
                start, lines = now, 0
            if lines >= self.per_minute:
                self._window = (start, lines)
                self._suppressed += 1
                return
            self._window = (start, lines + 1)
            more, self._suppressed = self._suppressed, 0
        self.log.warning(
            "event=change_request_without_rfc5780 source=%s requests=%d%s: this client keeps "
            "sending CHANGE-REQUEST, which needs RFC 5780 mode; it gets 420 each time. Start "
            "the server with --alternate-ip (a second IP) to serve it, or fix the client "
            "(pynat and pystun3 retry forever)",
            ip,
            seen,
            f" (and {more} more sources not logged)" if more else "",
        )


def _is_wildcard(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


@dataclass
class _UdpSocket:
    sock: socket.socket
    address: Address
    group: _Group | None  # RFC 5780 quartet, None in plain mode
    alt_ip: bool = False
    alt_port: bool = False
    counters: Counters = field(default_factory=Counters)
    slow_replies: int = 0
    slow_garbage: int = 0
    slow_ignored: int = 0
    rate_limited: int = 0
    errors: int = 0
    thread: UdpServeThread | None = None


@dataclass
class _Group:
    """The four UDP sockets of one primary address in RFC 5780 mode, by (alt_ip, alt_port)."""

    members: dict[tuple[bool, bool], _UdpSocket] = field(default_factory=dict)

    def other(self, s: _UdpSocket) -> Address:
        return self.members[(not s.alt_ip, not s.alt_port)].address


class StunServer:
    """A STUN Binding responder on UDP, TCP and (with a certificate) TLS.

    ``listen``: addresses (``"ip:port"`` or tuples; port 0 picks one) served over UDP and TCP,
    default 0.0.0.0:3478 and [::]:3478. ``alternate_ip`` (and ``alternate_port``, default the
    primary port + 1) turn on RFC 5780 mode for the primary addresses of that family, which must
    then be specific addresses. ``tls_cert``/``tls_key`` add TLS on ``tls_port`` (default 5349,
    on the same IPs). ``reuse_port`` sets SO_REUSEPORT so several processes share the ports.
    ``tcp=False`` serves UDP (and TLS) only. ``fast_path``: None (the C extension when it is
    built and NATKIT_NO_CEXT is unset), True/False to force C / pure Python. TCP/TLS limits
    (natkit/server/_stream.py): ``max_connections`` in total, ``max_connections_per_source``
    per source IP, ``first_message_timeout`` for the first complete message, ``idle_timeout``
    between complete messages. ``metrics``: a Prometheus endpoint ``HOST:PORT``.
    Once started, ``addresses`` lists what it serves as ``(transport, (ip, port))``.
    """

    def __init__(
        self,
        listen: Sequence[str | Address] | None = None,
        *,
        alternate_ip: str | None = None,
        alternate_port: int | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_port: int = DEFAULT_TLS_PORT,
        tcp: bool = True,
        software: str | None = None,
        idle_timeout: float = 30.0,
        max_connections: int = 10_000,
        max_connections_per_source: int = 256,
        first_message_timeout: float = 10.0,
        metrics: str | Address | None = None,
        reuse_port: bool = False,
        fast_path: bool | None = None,
        slow_path_rate: float = 2000.0,
        slow_path_burst: float = 200.0,
    ) -> None:
        self.listen = [parse_listen(s) for s in (listen if listen is not None else DEFAULT_LISTEN)]
        if not self.listen:
            raise ConfigError("nothing to listen on: give at least one ADDR:PORT", param="listen")
        self.tcp = tcp
        self.alternate_ip: str | None = None
        if alternate_ip is not None:
            try:
                self.alternate_ip = str(ipaddress.ip_address(alternate_ip))
            except ValueError:
                raise ConfigError(
                    f"'{alternate_ip}' is not an IP address", param="alternate_ip"
                ) from None
            same = [a for a in self.listen if _family(a[0]) == _family(self.alternate_ip)]
            if not same:
                raise ConfigError(
                    f"{self.alternate_ip} has no listen address of its family",
                    param="alternate_ip",
                )
            for ip, _ in same:
                if _is_wildcard(ip):
                    raise ConfigError(
                        f"RFC 5780 mode needs specific listen addresses, not {ip}: "
                        "listen on the primary IP itself (IP:PORT)",
                        param="listen",
                    )
                if ip == self.alternate_ip:
                    raise ConfigError(f"{ip} is also a primary listen address", param="alternate_ip")
        if alternate_port is not None and not 0 < alternate_port <= 65535:
            raise ConfigError(f"bad port {alternate_port}: must be 1-65535", param="alternate_port")
        self.alternate_port = alternate_port
        self._ssl: ssl.SSLContext | None = server_context(tls_cert, tls_key)
        self.tls_port = tls_port
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_connections_per_source = max_connections_per_source
        self.first_message_timeout = first_message_timeout
        self.limits = StreamLimits(
            max_connections=max_connections,
            per_source=max_connections_per_source,
            first_message_timeout=first_message_timeout,
            idle_timeout=idle_timeout,
        )
        self.limits.check({"per_source": "max_connections_per_source"})
        self.metrics = metrics
        try:
            self.metrics_address = parse_listen(metrics, 9642) if metrics else None
        except UsageError as exc:
            raise ConfigError(str(exc), param="metrics") from None
        self.reuse_port = reuse_port
        self.fast_path = fast_path
        self.slow_path_rate, self.slow_path_burst = slow_path_rate, slow_path_burst
        self.responder = BindingResponder(rfc5780=self.alternate_ip is not None, software=software)
        self._udp: list[_UdpSocket] = []
        self._servers: list[tuple[str, asyncio.Server]] = []
        self._stream_counters = StreamCounters()
        self.guard = StreamGuard(
            self.limits,
            cert_names=certificate_names(tls_cert) if tls_cert else None,
            logger=log,
        )
        self.change_requests = ChangeRequestNotice(log)
        self._metrics: Any = None
        self.addresses: list[tuple[str, Address]] = []
        self._resolved_listen: list[Address] = []
        self._resolved_alt_port: int | None = None
        self._started = False
        self._auto_port = any(port == 0 for _, port in self.listen)

    # -- what it serves ---------------------------------------------------------------------

    @property
    def rfc5780(self) -> bool:
        return self.alternate_ip is not None

    def addresses_of(self, transport: str) -> list[Address]:
        return [a for t, a in self.addresses if t == transport]

    @property
    def udp_address(self) -> Address:
        """The first UDP address (the primary one in RFC 5780 mode)."""
        return self.addresses_of("udp")[0]

    @property
    def fast_path_kind(self) -> str:
        """'c', or 'python (...why)' for the UDP fast path in use."""
        if self.fast_path is False:
            return "python (disabled)"
        return helper_status()

    @property
    def fast_path_line(self) -> str:
        """Which UDP path serves and why, for the start line ("C fast path (...)",
        "pure Python: NATKIT_NO_CEXT=1")."""
        return describe(self.fast_path is not False)

    def worker_options(self, worker: int) -> dict[str, Any]:
        """Keyword arguments of ``--workers``' other processes: these ports, SO_REUSEPORT."""
        return {**self.same_ports_options(), "reuse_port": True}

    def same_ports_options(self) -> dict[str, Any]:
        """Keyword arguments for another StunServer on exactly these ports (port 0 resolved):
        how ``--workers`` starts its other processes (with ``reuse_port=True``)."""
        tls = [a for t, a in self.addresses if t == "tls"]
        return {
            "listen": list(self._resolved_listen),
            "alternate_ip": self.alternate_ip,
            "alternate_port": self._resolved_alt_port,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "tls_port": tls[0][1] if tls else self.tls_port,
            "tcp": self.tcp,
            "software": self.responder.software,
            "idle_timeout": self.idle_timeout,
            "max_connections": self.max_connections,
            "max_connections_per_source": self.max_connections_per_source,
            "first_message_timeout": self.first_message_timeout,
            "fast_path": self.fast_path,
            "slow_path_rate": self.slow_path_rate,
            "slow_path_burst": self.slow_path_burst,
        }

    def stats(self) -> dict[str, Any]:
        """Counters since start: responses and what was dropped, per transport."""
        udp = {
            "fast": 0, "slow": 0, "garbage": 0, "ignored": 0, "dropped": 0, "rate_limited": 0,
            "errors": 0,
        }  # fmt: skip
        for s in self._udp:
            c = s.thread.counts() if s.thread is not None else s.counters
            udp["fast"] += c.fast
            udp["slow"] += s.slow_replies
            udp["garbage"] += c.garbage + s.slow_garbage
            udp["ignored"] += c.ignored + s.slow_ignored
            udp["dropped"] += c.dropped
            udp["rate_limited"] += s.rate_limited
            udp["errors"] += c.send_errors + s.errors
            udp["errors"] += s.thread.slow_send_errors if s.thread is not None else 0
        udp["responses"] = udp["fast"] + udp["slow"]
        stream = {**self._stream_counters.as_dict(), **self.guard.stats()}
        return {
            "udp": udp,
            "stream": stream,
            "change_requests_without_rfc5780": self.change_requests.count,
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> StunServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("StunServer already started")
        self._started = True
        try:
            # Port 0 is chosen by the UDP bind; TCP then needs the same number, which another
            # process may hold: start over with a new port then (bounded).
            for attempt in range(20):
                self._bind_udp()
                for s in self._udp:
                    self.addresses.append(("udp", s.address))
                try:
                    if self.tcp or self._ssl is not None:
                        await self._start_streams(retry_clash=attempt < 19)
                    break
                except _PortClash:
                    await self._close_sockets()
                    self._udp.clear()
                    self.addresses.clear()
                    self._resolved_listen.clear()
            for s in self._udp:
                self._start_thread(s)
            self.guard.start(asyncio.get_running_loop())
            if self.metrics_address is not None:
                from natkit.server.metrics import StunCollector, start_metrics

                self._metrics = start_metrics(
                    self.stats, *self.metrics_address, collector=StunCollector
                )
        except BaseException:
            await self.stop()
            raise

    async def _close_sockets(self) -> None:
        for _, server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
        for s in self._udp:
            s.sock.close()

    async def stop(self) -> None:
        for s in self._udp:
            if s.thread is not None:
                s.thread.stop()
        self.guard.stop()
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                self._metrics.shutdown()
            self._metrics = None
        for _, server in self._servers:
            server.close()
        self.guard.close_all()
        threads = [s.thread for s in self._udp if s.thread is not None]
        if threads:

            def join_all() -> None:
                for t in threads:
                    t.join(2.0)

            await asyncio.to_thread(join_all)
        for _, server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        for s in self._udp:
            s.sock.close()  # kept in _udp: stats() still reports after stop
        self._servers.clear()

    async def serve_forever(self) -> None:
        """Wait until cancelled (Ctrl-C, SIGTERM handled by the caller)."""
        await asyncio.Event().wait()

    # -- UDP --------------------------------------------------------------------------------

    def _udp_socket(self, ip: str, port: int) -> socket.socket:
        sock = socket.socket(_family(ip), socket.SOCK_DGRAM)
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((ip, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _bind_udp(self) -> None:
        for ip, port in self.listen:
            in_mode = self.alternate_ip is not None and _family(ip) == _family(self.alternate_ip)
            if not in_mode:
                sock = self._bind_or_explain("udp", ip, port)
                self._udp.append(_UdpSocket(sock, sock.getsockname()[:2], None))
                self._resolved_listen.append(self._udp[-1].address)
                continue
            self._bind_quartet(ip, port)
            group = self._udp[-1].group
            assert group is not None
            self._resolved_listen.append(group.members[(False, False)].address)
            self._resolved_alt_port = group.members[(False, True)].address[1]

    def _bind_quartet(self, ip: str, port: int) -> None:
        assert self.alternate_ip is not None
        # Port 0: retry until the chosen port and the next one are free on both IPs.
        for _attempt in range(50):
            opened: list[socket.socket] = []
            try:
                primary = self._udp_socket(ip, port)
                opened.append(primary)
                p = primary.getsockname()[1]
                ap = self.alternate_port or p + 1
                if ap > 65535 or ap == p:
                    raise OSError(98, "no room for the alternate port")
                group = _Group()
                plan = [
                    (primary, ip, p, False, False),
                    (None, ip, ap, False, True),
                    (None, self.alternate_ip, p, True, False),
                    (None, self.alternate_ip, ap, True, True),
                ]
                members = []
                for sock, host, prt, aip, aport in plan:
                    if sock is None:
                        sock = self._udp_socket(host, prt)
                        opened.append(sock)
                    member = _UdpSocket(sock, sock.getsockname()[:2], group, aip, aport)
                    group.members[(aip, aport)] = member
                    members.append(member)
                self._udp.extend(members)
                return
            except OSError as exc:
                for sock in opened:
                    sock.close()
                if port != 0:
                    raise UsageError(
                        f"cannot listen on udp {ip}:{port} and alternate {self.alternate_ip}"
                        f"/{self.alternate_port or port + 1}: {exc.strerror or exc}; "
                        "pick other ports or stop what holds them"
                    ) from None
        raise UsageError(f"no free UDP port pair on {ip} and {self.alternate_ip}")

    def _bind_or_explain(self, transport: str, ip: str, port: int) -> socket.socket:
        try:
            return self._udp_socket(ip, port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {transport} {_fmt(ip, port)}: {exc.strerror or exc}; "
                "pick another address or stop what holds it",
                param="listen",
            ) from None

    def _start_thread(self, s: _UdpSocket) -> None:
        group = s.group
        other = group.other(s) if group is not None else None
        wildcard = _is_wildcard(s.address[0])
        responder = self.responder

        def lookup(change_ip: bool, change_port: bool) -> Address:
            assert group is not None
            return group.members[(s.alt_ip ^ change_ip, s.alt_port ^ change_port)].address

        budget = SourceBudget(self.slow_path_rate, self.slow_path_burst)
        notice = None if responder.rfc5780 else self.change_requests

        def slow(data: bytes, src: Address, local_ip: str | None) -> None:
            if not budget.allow(src[0]):
                s.rate_limited += 1
                return
            local = (local_ip, s.address[1]) if local_ip else s.address
            try:
                reply = responder.respond(
                    data, src, local, other=other, lookup=lookup if group else None
                )
                if notice is not None and isinstance(reply, Reply) and has_change_request(data):
                    notice.saw(src[0])
            except Exception:  # a bug must not stop the socket; count it, keep serving
                s.errors += 1
                log.exception("STUN request from %s made the responder fail", src)
                return
            if isinstance(reply, Reply):
                self._send(s, reply, local_ip)
                s.slow_replies += 1
            elif reply == Verdict.GARBAGE:
                s.slow_garbage += 1
            else:
                s.slow_ignored += 1

        use_c = self.fast_path is not False
        thread = UdpServeThread(
            s.sock,
            origin=s.address,
            wildcard=wildcard,
            extra=responder.fast_extra(other),
            slow=slow,
            counters=s.counters,
            use_c=use_c,
        )
        if self.fast_path is True and not thread.uses_c:
            raise PrerequisiteError(
                f"the C fast path is not available ({describe()}): reinstall natkit where gcc "
                "and the Python headers are installed, or unset NATKIT_NO_CEXT"
            )
        s.thread = thread
        thread.start()

    def _send(self, s: _UdpSocket, reply: Reply, local_ip: str | None) -> None:
        target = s
        if (reply.change_ip or reply.change_port) and s.group is not None:
            target = s.group.members[(s.alt_ip ^ reply.change_ip, s.alt_port ^ reply.change_port)]
        if local_ip is not None and target is s:
            # Wildcard socket: leave from the address the request came to.
            packed = socket.inet_pton(s.sock.family, local_ip)
            if s.sock.family == socket.AF_INET:
                cmsg = (socket.IPPROTO_IP, IP_PKTINFO, b"\0" * 4 + packed + b"\0" * 4)
            else:
                cmsg = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, packed + b"\0" * 4)
            s.sock.sendmsg([reply.data], [cmsg], 0, reply.dst)
        else:
            target.sock.sendto(reply.data, reply.dst)

    # -- TCP / TLS --------------------------------------------------------------------------

    async def _start_streams(self, retry_clash: bool = False) -> None:
        loop = asyncio.get_running_loop()
        notice = self.change_requests
        on_request = None
        if not self.responder.rfc5780:

            def on_request(frame: bytes, src: Address) -> None:
                if has_change_request(frame):
                    notice.saw(src[0])

        plan: list[tuple[str, Address, _UdpSocket | None]] = []
        for s in self._udp if self.tcp else ():
            plan.append(("tcp", s.address, s))
        if self._ssl is not None:
            for ip, _ in self.listen:
                plan.append(("tls", (ip, self.tls_port), None))
        for transport, (ip, port), udp in plan:
            other = udp.group.other(udp) if udp is not None and udp.group is not None else None

            def factory(
                other: Address | None = other, tls: ssl.SSLContext | None = None
            ) -> StunStreamProtocol:
                return StunStreamProtocol(
                    self.responder,
                    self.guard,
                    other=other,
                    counters=self._stream_counters,
                    tls=tls,
                    on_request=on_request,
                )

            if transport == "tls":
                factory = functools.partial(factory, other, self._ssl)

            sock = socket.socket(_family(ip), socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if sock.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((ip, port))
            except OSError as exc:
                sock.close()
                if retry_clash and udp is not None and self._auto_port and exc.errno == EADDRINUSE:
                    raise _PortClash from None
                raise UsageError(
                    f"cannot listen on {transport} {_fmt(ip, port)}: {exc.strerror or exc}; "
                    "pick another address/port or stop what holds it"
                ) from None
            # TLS is the protocol's own (natkit/server/_tls.py), so failures can be named
            server = await loop.create_server(factory, sock=sock, backlog=1024)
            self._servers.append((transport, server))
            self.addresses.append((transport, sock.getsockname()[:2]))


class _PortClash(Exception):
    """The TCP twin of an automatically chosen UDP port is taken."""


def _fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
