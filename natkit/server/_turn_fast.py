"""The TURN relay's C data path: the extension module ``natkit.server._turnfast``.

Built at install time from ``_turnfast.c`` (setup.py). When it is not built, on non-Linux, or
with ``NATKIT_NO_CEXT=1`` the relay runs its pure-Python data path, which behaves the same
(tests run both).
"""

from __future__ import annotations

import os
import socket
import struct
from types import ModuleType
from typing import Any

from natkit.server import _native

EXTENSION = "natkit.server._turnfast"
_KEY = struct.Struct("=iHH16sB7x")
_VAL = struct.Struct("=iHH16sB7xd")
_REC = struct.Struct("=IiBBH16s")
KIND_ALLOC = 1
KIND_PERM = 2
INTERNAL = 1  # the channel field of a client -> peer value: the peer is a relay of this server
KIND_STREAM = 2  # a record's kind: a frame from a TCP client the table reads
REC_CLOSED = 3  # a record's kind: that TCP client's stream ended (why: CLOSE_REASONS[port])
#: a record's kind: an allocation the C control path made, two records in a row: MADE's
#: fields + the username, then the success response it sent
REC_MADE = 4
MADE = struct.Struct("=iI12sHH")
#: why the table ended a stream (a closed record's port field)
CLOSE_REASONS = ("eof", "error", "bad_framing", "overflow")


_EXT = _native.Extension(
    EXTENSION, "its own epoll thread, recvmmsg + UDP GSO sendmmsg, {m.BATCH} per socket"
)
load = _EXT.load
status = _EXT.status
describe = _EXT.describe  # the start line: which data path runs and why


def _ip_bytes(ip: str) -> tuple[int, bytes]:
    if ":" in ip:
        return 6, socket.inet_pton(socket.AF_INET6, ip)
    return 4, socket.inet_pton(socket.AF_INET, ip)


def _padded(ip: str) -> tuple[int, bytes]:
    family, packed = _ip_bytes(ip)
    return family, packed.ljust(16, b"\0")


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
    """One C context: the channel table, the epoll set and the receive/send buffers."""

    def __init__(self, lib: ModuleType, *, gro: bool = False) -> None:
        if (_KEY.size, _VAL.size, _REC.size) != (lib.KEY_SIZE, lib.VALUE_SIZE, lib.RECORD_SIZE):
            raise RuntimeError(f"{EXTENSION} does not match this natkit: reinstall natkit")
        self._t: Any = lib.Table(int.from_bytes(os.urandom(8), "little"))
        self._t.set_gro(gro)  # sockets it watches ask for UDP GRO (coalesced reads)
        self.epoll_fd: int = self._t.epoll_fd()

    def put(self, k: bytes, fd: int, addr: tuple[str, int], channel: int, until: float) -> None:
        family, packed = _ip_bytes(addr[0])
        self._t.put(k, _VAL.pack(fd, addr[1], channel, packed, family, until))

    def put_allocation(self, k: bytes, relay4: int, relay6: int) -> None:
        """Allocation entry: the relay socket per family (-1: none)."""
        v6 = struct.pack("=i12x", relay6)
        self._t.put(k, _VAL.pack(relay4, 0, 0, v6, 0, 1e300))

    def put_internal(
        self, k: bytes, target_fd: int, source: tuple[str, int], until: float
    ) -> None:
        """Client -> peer entry for a peer that is a relayed address of this server: deliver to
        the client behind ``target_fd`` (that relay's socket) as a datagram from ``source``
        (the sending allocation's relayed address), through that relay's peer entries."""
        family, packed = _ip_bytes(source[0])
        self._t.put(k, _VAL.pack(target_fd, source[1], INTERNAL, packed, family, until))

    def delete(self, k: bytes) -> None:
        self._t.delete(k)

    def __len__(self) -> int:
        return len(self._t)

    def watch(self, fd: int, kind: int) -> None:
        """Watch a socket (kind 0: client listener, 1: relay) in the context's epoll set."""
        self._t.watch(fd, kind)

    def unwatch(self, fd: int) -> None:
        self._t.unwatch(fd)

    @staticmethod
    def _kinded(raw: bytes) -> list[tuple[int, int, bytes, tuple[str, int]]]:
        """[(fd, kind, data, address)]; a REC_CLOSED record has no data and no address, and
        its port is the reason (an index into CLOSE_REASONS)."""
        n = len(raw)
        if not n:
            return []
        left: list[tuple[int, int, bytes, tuple[str, int]]] = []
        pos = 0
        unpack, size = _REC.unpack_from, _REC.size
        while pos < n:
            length, fd, family, kind, port, ip = unpack(raw, pos)
            pos += size
            if family == 4:
                host = socket.inet_ntop(socket.AF_INET, ip[:4])
            elif family == 6:
                host = socket.inet_ntop(socket.AF_INET6, ip)
            else:
                host = ""
            left.append((fd, kind, raw[pos : pos + length], (host, port)))
            pos += length
        return left

    @classmethod
    def _records(cls, raw: bytes) -> list[tuple[int, bytes, tuple[str, int]]]:
        return [(fd, data, addr) for fd, _, data, addr in cls._kinded(raw)]

    def pump(
        self, fd: int, kind: int, now: float
    ) -> tuple[int, list[tuple[bytes, tuple[str, int]]]]:
        """Drain one batch from ``fd``: (datagrams received, those left for Python)."""
        got, raw = self._t.pump(fd, kind, now)
        return got, [(data, addr) for _, data, addr in self._records(raw)]

    def poll(self, now: float) -> tuple[bool, list[tuple[int, bytes, tuple[str, int]]]]:
        """One batch from every ready watched socket: (maybe more, [(fd, data, addr)])."""
        more, raw = self._t.poll(now)
        return more != 0, self._records(raw)

    def start(self) -> int:
        """Run the table's own C thread (the epoll loop; the GIL is never taken). Returns an
        fd that is readable while :meth:`take` has datagrams for Python."""
        return int(self._t.start())

    def stop(self) -> None:
        self._t.stop()

    def take(self) -> list[tuple[int, int, bytes, tuple[str, int]]]:
        """What the thread left for Python: [(fd it came in on, kind, data, source address)];
        kind 0 a listener's datagram, 1 a relay's, KIND_STREAM a TCP client's frame,
        REC_CLOSED that client's stream ended (the port: the reason, see CLOSE_REASONS)."""
        return self._kinded(self._t.take())

    def poll_kinded(self, now: float) -> tuple[bool, list[tuple[int, int, bytes, tuple[str, int]]]]:
        """:meth:`poll` with each record's kind, as :meth:`take` gives them."""
        more, raw = self._t.poll(now)
        return more != 0, self._kinded(raw)

    # -- TCP clients whose stream the table reads and writes ---------------------------------

    def stream_attach(self, fd: int, client: tuple[str, int]) -> None:
        """Own ``fd`` (a dup of a TCP client's socket; the table closes it on release), the
        connection of ``client``: entries keyed by ``fd`` are that client's. Until
        :meth:`stream_start` the table neither reads nor writes it."""
        self._t.stream_attach(fd, key(fd, client))

    def stream_start(self, fd: int, pending: bytes = b"") -> None:
        """The table reads and writes the stream from now on; ``pending``: the bytes already
        read past the last whole frame."""
        self._t.stream_start(fd, pending)

    def stream_send(self, fd: int, data: bytes) -> int:
        """Queue the server's own bytes for the client (written at once as far as the socket
        takes them): 0 queued, 1 the client has left too much unread (the table cut it), 2 the
        stream is gone."""
        return int(self._t.stream_send(fd, data))

    def stream_release(self, fd: int) -> None:
        """Forget the stream and close the table's fd (idempotent)."""
        self._t.stream_release(fd)

    def set_channel_max(self, channel_max: int) -> None:
        """The highest channel number a stream frame may carry (others end the stream)."""
        self._t.set_channel_max(channel_max)

    def set_now(self, now: float) -> None:
        """The engine's clock, which the thread compares entries' ``until`` with."""
        self._t.set_now(now)

    def send(self, fd: int, batch: bytes) -> int:
        """Send the :func:`record` datagrams in ``batch`` through ``fd`` (sendmmsg); returns
        how many were dropped."""
        return int(self._t.send(fd, batch))

    # -- the control fast path (_turnctl.c) ---------------------------------------------------

    def configure_control(
        self,
        scheme: tuple[bytes, float, str],
        parts: tuple[bytes, bytes],
        budget: int,
        own: list[tuple[str, int, int]],
    ) -> None:
        """The thread answers credential-less first requests with the engine's 401 itself:
        ``scheme`` the engine's nonce scheme (NonceIssuer.scheme), ``parts`` the challenge's
        attributes around NONCE (TurnEngine.challenge_parts), ``budget`` the error-response
        burst (0: not budgeted; else it answers a source only out of :meth:`credit`),
        ``own`` (ip, low port, high port): the relay's own addresses, whose requests stay
        the engine's."""
        secret, lifetime, prefix = scheme
        records = b"".join(
            struct.pack("=B16sHH", *_padded(ip), low, high) for ip, low, high in own
        )
        self._t.ctl_configure(
            secret, lifetime, prefix.encode(), parts[0], parts[1], budget, records
        )

    def credit(self, ips: list[str]) -> None:
        """Sources whose requests verified: one challenge each to answer from the thread."""
        self._t.ctl_credit(b"".join(struct.pack("=B16s", *_padded(ip)) for ip in ips))

    def control_nonce(self, ip: str, now: float) -> str | None:
        """The nonce the thread issues to ``ip`` at ``now`` (None: not configured)."""
        family, packed = _padded(ip)
        result: str | None = self._t.ctl_nonce(family, packed, now)
        return result

    def configure_allocates(
        self, realm: str, keys: dict[str, bytes], default_lifetime: int, max_lifetime: int
    ) -> None:
        """The thread serves authenticated Allocates of these users itself (after
        :meth:`configure_control`), out of the relay sockets :meth:`add_spares` gives it."""
        users = b"".join(
            struct.pack("=H", len(raw)) + raw + key
            for raw, key in ((name.encode(), key) for name, key in keys.items())
        )
        self._t.ctl_allocate_config(realm.encode(), users, default_lifetime, max_lifetime)

    def add_spares(self, spares: list[tuple[int, tuple[str, int]]]) -> int:
        """Bound, watched IPv4 relay sockets an Allocate may take: (fd, advertised address);
        returns how many the thread holds now."""
        return int(
            self._t.ctl_add_spares(
                b"".join(
                    struct.pack("=i4sH", fd, socket.inet_aton(ip), port)
                    for fd, (ip, port) in spares
                )
            )
        )

    def make_spares(
        self, wanted: list[tuple[str, str, int]], rcvbuf: int
    ) -> list[tuple[int, int, int]]:
        """Bind IPv4 relay sockets for the thread in one call: (bind IP, advertised IP, port;
        0: the kernel's pick) each; returns (fd, bound port, index in ``wanted``) of those
        made, now watched and held as spares (a port in use is skipped)."""
        records = b"".join(
            struct.pack("=4s4sH", socket.inet_aton(ip), socket.inet_aton(adv), port)
            for ip, adv, port in wanted
        )
        out: bytes = self._t.ctl_make_spares(records, rcvbuf)
        return list(struct.iter_unpack("=iHH", out))

    def take_spares(self) -> list[int]:
        """The spares' fds the thread still holds (it forgets them)."""
        fds: list[int] = self._t.ctl_take_spares()
        return fds

    def control_stats(self) -> dict[str, int]:
        s = self._t.ctl_stats()
        return {
            "challenges": s[0],
            "no_budget": s[1],
            "passed": s[2],
            "allocations": s[3],
            "no_spare": s[4],
        }

    def stats(self) -> dict[str, int]:
        s = self._t.stats()
        return {
            "to_peer_packets": s[0],
            "to_peer_bytes": s[1],
            "to_client_packets": s[2],
            "to_client_bytes": s[3],
            "send_errors": s[4],
            "passed": s[5],
            "internal_packets": s[6],
            "python_dropped": s[7],
            "gso_sends": s[8],
            "sendmmsg_calls": s[9],
            "gro_reads": s[10],
            "stream_reads": s[11],
            "stream_writes": s[12],
            "stream_dropped": s[13],
            "stream_frames": s[14],
            "gso": int(s[-1]),
        }

    def close(self) -> None:
        self._t.close()  # stops the thread first
