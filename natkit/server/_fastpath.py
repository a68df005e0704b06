"""The UDP Binding fast path: one blocking thread per socket, in C when possible.

A plain Binding request (magic cookie, no attribute but maybe a valid FINGERPRINT) gets an
answer built from bytes without the general codec: the response
depends only on the transaction id, the source address and the socket. Everything else that
looks like a STUN request goes to the general path (``slow`` callback). Garbage, indications
and responses are dropped and counted.

The C loop is the extension module ``natkit.server._stunfast`` (``_stunfast.c``, built at
install time; batching recvmmsg/sendmmsg with the GIL released). When it is not built, or with
``NATKIT_NO_CEXT=1``, a pure-Python loop does the same job more slowly; both produce the same
bytes (tests/server/test_stun_server.py checks).
"""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

from natkit.server import _native

MAGIC = b"\x21\x12\xa4\x42"
EXTENSION = "natkit.server._stunfast"
_REC = struct.Struct("<HHBB16s16s")
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python < 3.12 lacks the name

# (data, (src_ip, src_port), local_ip or None) -> None; runs in the serving thread.
SlowHandler = Callable[[bytes, tuple[str, int], "str | None"], None]


class Counters:
    """What one socket's fast path saw (read by StunServer.stats())."""

    __slots__ = ("dropped", "fast", "garbage", "ignored", "send_errors")

    def __init__(self) -> None:
        self.fast = self.garbage = self.ignored = self.dropped = self.send_errors = 0


_EXT = _native.Extension(EXTENSION, "recvmmsg/sendmmsg, {m.BATCH} datagrams per call")
load_helper = _EXT.load
helper_status = _EXT.status
describe = _EXT.describe  # the start line: which UDP path serves and why


# ---------------------------------------------------------------- pure-Python equivalent

_H = struct.Struct("!HH4s12s")
_ADDR_HEAD = struct.Struct("!HHBBH")
_XMA4 = struct.Struct("!HHBBHI")
_PLAIN_HEAD = b"\x00\x01\x00\x00" + MAGIC  # a Binding request without attributes
_FP = struct.Struct("!HHI")


def address_attr(attr_type: int, ip: str, port: int, xor_id: bytes | None = None) -> bytes:
    """An (XOR-)MAPPED-ADDRESS-style attribute; xor_id is cookie + transaction id."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    n = len(packed)
    if xor_id is not None:
        port ^= 0x2112
        packed = (int.from_bytes(packed) ^ int.from_bytes(xor_id[:n])).to_bytes(n)
    return _ADDR_HEAD.pack(attr_type, 4 + n, 0, 1 if n == 4 else 2, port) + packed


FAST, SLOW, GARBAGE, IGNORE = 0, 1, 2, 3


def classify(data: bytes) -> tuple[int, bool]:
    """(FAST|SLOW|GARBAGE|IGNORE, has valid FINGERPRINT) exactly as the C helper decides."""
    n = len(data)
    if n == 20 and data[:8] == _PLAIN_HEAD:  # the common case, decided at once
        return FAST, False
    if n < 20 or data[0] & 0xC0:
        return GARBAGE, False
    mtype, mlen, cookie, _ = _H.unpack_from(data)
    if mlen + 20 != n or mlen & 3:
        return GARBAGE, False
    if mtype & 0x0110:
        return IGNORE, False
    if mtype != 1 or cookie != MAGIC:
        return SLOW, False
    if n == 20:
        return FAST, False
    # Only a lone FINGERPRINT: any other attribute goes to the codec, which validates it.
    if (
        n == 28
        and data[20:24] == b"\x80\x28\x00\x04"
        and zlib.crc32(data[:20]) ^ 0x5354554E == int.from_bytes(data[24:28])
    ):
        return FAST, True
    return SLOW, False


def fast_response(
    data: bytes, fingerprint: bool, src: tuple[str, int], origin_attr: bytes, extra: bytes
) -> bytes:
    """The response the C helper builds for a FAST request (same bytes)."""
    tid = data[4:20]
    ip, port = src
    if ":" in ip:
        xma = address_attr(0x0020, ip, port, tid)
    else:
        xma = _XMA4.pack(
            0x0020, 8, 0, 1, port ^ 0x2112, int.from_bytes(socket.inet_aton(ip)) ^ 0x2112A442
        )
    body = xma + origin_attr + extra
    if not fingerprint:
        return b"\x01\x01" + len(body).to_bytes(2) + tid + body
    head = b"\x01\x01" + (len(body) + 8).to_bytes(2) + tid + body
    return head + _FP.pack(0x8028, 4, zlib.crc32(head) ^ 0x5354554E)


# ---------------------------------------------------------------- the serving thread


class UdpServeThread:
    """Answers one UDP socket from a dedicated thread until stop()."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        origin: tuple[str, int],
        wildcard: bool,
        extra: bytes,
        slow: SlowHandler,
        counters: Counters,
        use_c: bool = True,
    ) -> None:
        self.sock = sock
        self.origin = origin
        self.wildcard = wildcard
        self.extra = extra
        self.slow = slow
        self.counters = counters
        self.family = sock.family
        self.slow_send_errors = 0
        self._stop = threading.Event()
        ext = load_helper() if use_c else None
        # The C loop of this socket; it reads the socket and counts until stop().
        self._c: Any = None
        if ext is not None:
            self._c = ext.Responder(
                sock.fileno(),
                self.family,
                wildcard,
                socket.inet_pton(self.family, origin[0]),
                origin[1],
                extra,
            )
        self._thread = threading.Thread(
            target=self._run, name=f"natkit-stun-udp-{origin[0]}:{origin[1]}", daemon=True
        )
        if wildcard:
            if self.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)

    def counts(self) -> Counters:
        """The counters now (read live from the C loop while it serves)."""
        if self._c is not None:
            c = self.counters
            c.fast, c.garbage, c.ignored, c.dropped, c.send_errors = self._c.counts()
        return self.counters

    @property
    def uses_c(self) -> bool:
        return self._c is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._c is not None:
            self._c.stop()

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            if self._c is not None:
                self._run_c(self._c)
            else:
                self._run_py()
        except OSError:
            if not self._stop.is_set():
                raise

    # -- C

    def _run_c(self, responder: Any) -> None:
        while not self._stop.is_set():
            records = responder.serve()  # the GIL is released while it serves
            if records:
                self._dispatch_records(records)

    def _dispatch_records(self, raw: bytes) -> None:
        pos = 0
        while pos < len(raw):
            length, port, family, has_local, src, local = _REC.unpack_from(raw, pos)
            pos += _REC.size
            data = raw[pos : pos + length]
            pos += length
            n = 4 if family == socket.AF_INET else 16
            src_ip = socket.inet_ntop(family, src[:n])
            local_ip = socket.inet_ntop(family, local[:n]) if has_local else None
            self._slow_safe(data, (src_ip, port), local_ip)

    def _slow_safe(self, data: bytes, src: tuple[str, int], local_ip: str | None) -> None:
        try:
            self.slow(data, src, local_ip)
        except OSError:
            self.slow_send_errors += 1

    # -- pure Python

    def _run_py(self) -> None:
        sock = self.sock
        # A receive timeout in the kernel, so a blocking recv costs one syscall and still
        # returns now and then to look at the stop flag.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))
        family = self.family
        origin_attrs: dict[str, bytes] = {}
        fixed_origin = address_attr(0x802B, self.origin[0], self.origin[1])
        extra = self.extra
        c = self.counters
        anc = socket.CMSG_SPACE(40) if self.wildcard else 0
        while not self._stop.is_set():
            try:
                if anc:
                    data, ancdata, flags, addr = sock.recvmsg(4096, anc)
                else:
                    data, addr = sock.recvfrom(4096)
                    ancdata, flags = [], 0
            except (BlockingIOError, TimeoutError, InterruptedError):
                continue
            if flags & socket.MSG_TRUNC:
                c.garbage += 1
                continue
            kind, fp = classify(data)
            if kind == GARBAGE:
                c.garbage += 1
                continue
            if kind == IGNORE:
                c.ignored += 1
                continue
            src = (addr[0], addr[1])
            local_ip: str | None = None
            cmsg: list[tuple[int, int, bytes]] = []
            for level, ctype, cdata in ancdata:
                if level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
                    local_ip = socket.inet_ntop(family, cdata[8:12])
                    cmsg = [(level, ctype, b"\0\0\0\0" + cdata[8:12] + b"\0\0\0\0")]
                elif level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO:
                    local_ip = socket.inet_ntop(family, cdata[:16])
                    cmsg = [(level, ctype, cdata[:20])]
            if kind == SLOW or (self.wildcard and local_ip is None):
                self._slow_safe(data, src, local_ip)
                continue
            if local_ip is None:
                origin_attr = fixed_origin
            else:
                origin_attr = origin_attrs.get(local_ip) or origin_attrs.setdefault(
                    local_ip, address_attr(0x802B, local_ip, self.origin[1])
                )
            resp = fast_response(data, fp, src, origin_attr, extra)
            try:
                if cmsg:
                    sock.sendmsg([resp], cmsg, 0, addr)
                else:
                    sock.sendto(resp, addr)
                c.fast += 1
            except OSError:
                c.send_errors += 1
