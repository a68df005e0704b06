"""The TURN relay's optional C data path (``_turnfast.c``), loaded through ctypes.

Compiled with the system gcc on first use into ``~/.cache/natkit`` (keyed by the source's
hash). Without gcc, on non-Linux, or with ``NATKIT_NO_CEXT=1`` the relay runs its pure-Python
data path, which behaves the same (tests run both).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from pathlib import Path

from natkit.server._cbuild import CHelper

_SRC = Path(__file__).with_name("_turnfast.c")
_BATCH = 32
_KEY = struct.Struct("=iHH16sB7x")
_VAL = struct.Struct("=iHH16sB7xd")
_REC = struct.Struct("=IiBBH16s")
KIND_ALLOC = 1
KIND_PERM = 2


def _declare(lib: ctypes.CDLL) -> None:
    vp, u8p = ctypes.c_void_p, ctypes.c_char_p
    lib.nk_new.restype = vp
    lib.nk_new.argtypes = []
    lib.nk_free.argtypes = [vp]
    lib.nk_put.argtypes = [vp, u8p, u8p]
    lib.nk_put.restype = ctypes.c_int
    lib.nk_del.argtypes = [vp, u8p]
    lib.nk_del.restype = ctypes.c_int
    lib.nk_size.argtypes = [vp]
    lib.nk_size.restype = ctypes.c_uint32
    lib.nk_stats.argtypes = [vp, ctypes.POINTER(ctypes.c_uint64)]
    u32p = ctypes.POINTER(ctypes.c_uint32)
    lib.nk_pump.argtypes = [vp, ctypes.c_int, ctypes.c_int, ctypes.c_double, u32p]
    lib.nk_pump.restype = ctypes.c_int
    lib.nk_poll.argtypes = [vp, ctypes.c_double, u32p]
    lib.nk_poll.restype = ctypes.c_int
    lib.nk_watch.argtypes = [vp, ctypes.c_int, ctypes.c_int]
    lib.nk_watch.restype = ctypes.c_int
    lib.nk_unwatch.argtypes = [vp, ctypes.c_int]
    lib.nk_unwatch.restype = ctypes.c_int
    lib.nk_epoll_fd.argtypes = [vp]
    lib.nk_epoll_fd.restype = ctypes.c_int
    lib.nk_out.argtypes = [vp]
    lib.nk_out.restype = vp
    lib.nk_seed.argtypes = [vp, ctypes.c_uint64]
    lib.nk_send.argtypes = [vp, ctypes.c_int, u8p, ctypes.c_uint32]
    lib.nk_send.restype = ctypes.c_int


_HELPER = CHelper(_SRC, "turnfast", _declare)


def load() -> ctypes.CDLL | None:
    """The compiled helper, or None (see :func:`status` for why)."""
    return _HELPER.load()


def status() -> str:
    if load() is not None:
        return "c"
    if _HELPER.disabled:
        return f"python ({_HELPER.why})"
    return f"python (C helper unavailable: {_HELPER.why})"


def _ip_bytes(ip: str) -> tuple[int, bytes]:
    if ":" in ip:
        return 6, socket.inet_pton(socket.AF_INET6, ip)
    return 4, socket.inet_pton(socket.AF_INET, ip)


_packed_ips: dict[str, tuple[int, bytes]] = {}


def record(data: bytes, addr: tuple[str, int]) -> bytes:
    """One datagram for :meth:`FastTable.send`: its header (as the C side's records) + data."""
    packed = _packed_ips.get(addr[0])
    if packed is None:
        packed = _ip_bytes(addr[0])
        if len(_packed_ips) >= 4096:
            _packed_ips.clear()
        _packed_ips[addr[0]] = packed
    return _REC.pack(len(data), 0, packed[0], 0, addr[1], packed[1]) + data


def key(fd: int, addr: tuple[str, int], channel: int = 0) -> bytes:
    family, packed = _ip_bytes(addr[0])
    return _KEY.pack(fd, addr[1], channel, packed, family)


class FastTable:
    """One C context: the channel table and the receive/send buffers."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._ctx = ctypes.c_void_p(lib.nk_new())
        if not self._ctx.value:
            raise MemoryError("nk_new failed")
        self._out = int(lib.nk_out(self._ctx))
        self._outlen = ctypes.c_uint32(0)
        self._outlen_ref = ctypes.byref(self._outlen)
        self.epoll_fd = int(lib.nk_epoll_fd(self._ctx))
        self._stats = (ctypes.c_uint64 * 6)()
        lib.nk_seed(self._ctx, int.from_bytes(os.urandom(8), "little"))

    def put(self, k: bytes, fd: int, addr: tuple[str, int], channel: int, until: float) -> None:
        family, packed = _ip_bytes(addr[0])
        if self._lib.nk_put(self._ctx, k, _VAL.pack(fd, addr[1], channel, packed, family, until)):
            raise MemoryError("nk_put failed")

    def put_allocation(self, k: bytes, relay4: int, relay6: int) -> None:
        """Allocation entry: the relay socket per family (-1: none)."""
        v6 = struct.pack("=i12x", relay6)
        if self._lib.nk_put(self._ctx, k, _VAL.pack(relay4, 0, 0, v6, 0, 1e300)):
            raise MemoryError("nk_put failed")

    def delete(self, k: bytes) -> None:
        self._lib.nk_del(self._ctx, k)

    def __len__(self) -> int:
        return int(self._lib.nk_size(self._ctx))

    def watch(self, fd: int, kind: int) -> None:
        """Watch a socket (kind 0: client listener, 1: relay) in the context's epoll set."""
        if self._lib.nk_watch(self._ctx, fd, kind):
            raise OSError(f"epoll_ctl failed for fd {fd}")

    def unwatch(self, fd: int) -> None:
        self._lib.nk_unwatch(self._ctx, fd)

    def _records(self) -> list[tuple[int, bytes, tuple[str, int]]]:
        n = self._outlen.value
        if not n:
            return []
        raw = ctypes.string_at(self._out, n)
        left: list[tuple[int, bytes, tuple[str, int]]] = []
        pos = 0
        unpack, size = _REC.unpack_from, _REC.size
        while pos < n:
            length, fd, family, _kind, port, ip = unpack(raw, pos)
            pos += size
            if family == 4:
                host = socket.inet_ntop(socket.AF_INET, ip[:4])
            else:
                host = socket.inet_ntop(socket.AF_INET6, ip)
            left.append((fd, raw[pos : pos + length], (host, port)))
            pos += length
        return left

    def pump(
        self, fd: int, kind: int, now: float
    ) -> tuple[int, list[tuple[bytes, tuple[str, int]]]]:
        """Drain one batch from ``fd``: (datagrams received, those left for Python)."""
        got = self._lib.nk_pump(self._ctx, fd, kind, now, self._outlen_ref)
        return got, [(data, addr) for _, data, addr in self._records()]

    def poll(self, now: float) -> tuple[bool, list[tuple[int, bytes, tuple[str, int]]]]:
        """One batch from every ready watched socket: (maybe more, [(fd, data, addr)])."""
        more = self._lib.nk_poll(self._ctx, now, self._outlen_ref)
        return more != 0, self._records()

    def send(self, fd: int, batch: bytes) -> int:
        """Send the :func:`record` datagrams in ``batch`` through ``fd`` (sendmmsg); returns
        how many were dropped."""
        return int(self._lib.nk_send(self._ctx, fd, batch, len(batch)))

    def stats(self) -> dict[str, int]:
        self._lib.nk_stats(self._ctx, self._stats)
        s = self._stats
        return {
            "to_peer_packets": s[0],
            "to_peer_bytes": s[1],
            "to_client_packets": s[2],
            "to_client_bytes": s[3],
            "send_errors": s[4],
            "passed": s[5],
        }

    def close(self) -> None:
        if self._ctx.value:
            self._lib.nk_free(self._ctx)
            self._ctx = ctypes.c_void_p(None)
