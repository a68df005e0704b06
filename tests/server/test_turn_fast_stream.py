"""TCP clients whose stream the C table reads and writes (natkit/server/_turnfast.c, the
stream part): framing, forwarding both ways, hostile streams, a client that never reads."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from natkit.server import _turn_fast
from natkit.stun import Attr, Class, Message, Method, decode
from tests._native import need

pytestmark = pytest.mark.timeout(60)
CLOSE = _turn_fast.REC_CLOSED
STREAM = _turn_fast.KIND_STREAM


@pytest.fixture
def table() -> Iterator[_turn_fast.FastTable]:
    t = _turn_fast.FastTable(need(_turn_fast.EXTENSION))
    t.set_channel_max(0x4FFF)
    yield t
    t.close()


class Conn:
    """A loopback TCP connection; the server end handed to the table as a dup, as the relay
    does, and a relay socket with a peer behind it."""

    def __init__(self, table: _turn_fast.FastTable, pending: bytes = b"") -> None:
        self.table = table
        ls = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(ls.getsockname(), timeout=5)
        self.server, _ = ls.accept()
        ls.close()
        self.server.setblocking(False)
        self.caddr = self.client.getsockname()
        self.fd = os.dup(self.server.fileno())
        table.stream_attach(self.fd, self.caddr)
        table.stream_start(self.fd, pending)
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind(("127.0.0.1", 0))
        self.relay.setblocking(False)
        table.watch(self.relay.fileno(), 1)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(2)
        self.paddr = self.peer.getsockname()

    def bind(self, channel: int, until: float) -> None:
        t = self.table
        t.put(_turn_fast.key(self.fd, self.caddr, channel), self.relay.fileno(), self.paddr, 0, until)
        t.put(_turn_fast.key(self.relay.fileno(), self.paddr), self.fd, self.caddr, channel, until)

    def poll(self, now: float, until: float = 1.0) -> list[tuple[int, int, bytes, tuple[str, int]]]:
        """Every record the table leaves for Python within ``until`` seconds of quiet."""
        out: list[tuple[int, int, bytes, tuple[str, int]]] = []
        deadline = time.monotonic() + until
        quiet = 0
        while time.monotonic() < deadline and quiet < 5:
            more, got = self.table.poll_kinded(now)
            out += got
            quiet = 0 if got or more else quiet + 1
            time.sleep(0.01)
        return out

    def close(self) -> None:
        self.table.unwatch(self.relay.fileno())
        self.table.stream_release(self.fd)
        for s in (self.client, self.server, self.relay, self.peer):
            s.close()


def _cd(channel: int, data: bytes) -> bytes:
    return struct.pack("!HH", channel, len(data)) + data + b"\0" * (-len(data) % 4)


def _refresh() -> bytes:
    return Message(Method.REFRESH).add(Attr.LIFETIME, 600).encode()


def test_frames_split_at_every_byte_keep_their_order(table: _turn_fast.FastTable) -> None:
    now = time.time()
    c = Conn(table, pending=b"\x40\x00")  # what Python had read past its last frame
    c.bind(0x4000, now + 60)
    stream = _cd(0x4000, b"abc")[2:]  # completes the pending head
    requests = [_refresh() for _ in range(3)]
    stream += requests[0] + _cd(0x4000, b"xy") + requests[1] + _cd(0x4123, b"unbound")
    stream += _cd(0x4000, b"") + requests[2]
    c.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    records = []
    for i in range(len(stream)):  # one byte per read (at worst): every split point
        c.client.send(stream[i : i + 1])
        if i % 7 == 0:
            records += table.poll_kinded(now)[1]
    records += c.poll(now)
    assert [(fd, kind) for fd, kind, _, _ in records] == [(c.fd, STREAM)] * 4
    assert [data for _, _, data, _ in records] == [
        requests[0], requests[1], _cd(0x4123, b"unbound"), requests[2],
    ]
    assert all(addr == c.caddr for _, _, _, addr in records)
    got = [c.peer.recvfrom(100) for _ in range(3)]
    assert [d for d, _ in got] == [b"abc", b"xy", b""]  # ChannelData without its padding
    assert table.stats()["stream_frames"] == 7
    c.close()


def test_peer_datagrams_arrive_framed_and_padded(table: _turn_fast.FastTable) -> None:
    now = time.time()
    c = Conn(table)
    c.bind(0x4001, now + 60)
    table.put(_turn_fast.key(c.relay.fileno(), ("127.0.0.2", 0), _turn_fast.KIND_PERM), c.fd,
              c.caddr, 0, now + 60)  # fmt: skip
    for i in range(20):
        c.peer.sendto(b"x" * i, c.relay.getsockname())
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.2", 0))
    other.sendto(b"indicated", c.relay.getsockname())
    assert c.poll(now) == []
    want = b"".join(_cd(0x4001, b"x" * i) for i in range(20))
    buf = b""
    c.client.settimeout(2)
    while len(buf) < len(want) + 36:
        buf += c.client.recv(65536)
    assert buf[: len(want)] == want
    ind = decode(buf[len(want) :])
    assert (ind.method, ind.cls) == (Method.DATA, Class.INDICATION)
    assert ind.get(Attr.DATA) == b"indicated" and ind.get(Attr.XOR_PEER_ADDRESS) == other.getsockname()
    # the server's own message joins the same byte stream
    mine = _refresh()
    assert table.stream_send(c.fd, mine) == 0
    assert c.client.recv(100) == mine
    other.close()
    c.close()


def test_longest_frames_in_pieces(table: _turn_fast.FastTable) -> None:
    now = time.time()
    c = Conn(table)
    c.bind(0x4000, now + 60)
    big = Message(Method.REFRESH).add(Attr.SOFTWARE, "").encode()
    big = big[:2] + struct.pack("!H", 65532) + big[4:20] + b"\0" * 65532  # the longest STUN
    frame = _cd(0x4000, b"q" * 65535)  # the longest ChannelData (padded to 65540)
    c.client.sendall(frame[:30000])
    time.sleep(0.05)
    assert table.poll_kinded(now)[1] == []
    c.client.sendall(frame[30000:] + big + _cd(0x4000, b"r" * 65000))
    records = c.poll(now)
    assert [data for _, _, data, _ in records] == [big]
    c.peer.settimeout(2)
    assert c.peer.recv(70000) == b"r" * 65000
    stats = table.stats()
    # 65535 bytes fit no IPv4 UDP datagram: framed, then refused by the kernel (counted)
    assert stats["stream_frames"] == 3 and stats["send_errors"] == 1
    c.close()


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\x00\x00", b"\x00\x01\x00\x03abc" + b"\0" * 20, struct.pack("!HH", 0x5000, 4) + b"abcd"],
    ids=["not-stun", "stun-length-not-4", "channel-over-max"],
)
def test_garbage_ends_the_stream(table: _turn_fast.FastTable, garbage: bytes) -> None:
    now = time.time()
    c = Conn(table)
    first = _refresh()
    c.client.sendall(first + garbage + _refresh())
    records = c.poll(now)
    assert [(kind, data) for _, kind, data, _ in records] == [(STREAM, first), (CLOSE, b"")]
    assert _turn_fast.CLOSE_REASONS[records[1][3][1]] == "bad_framing"
    assert table.stream_send(c.fd, b"late") == 2  # never written again
    c.close()


def test_end_of_stream_and_reset(table: _turn_fast.FastTable) -> None:
    now = time.time()
    a, b = Conn(table), Conn(table)
    a.client.shutdown(socket.SHUT_WR)
    b.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.client.close()  # a reset
    records = a.poll(now)
    closed = {fd: _turn_fast.CLOSE_REASONS[addr[1]] for fd, kind, _, addr in records if kind == CLOSE}
    assert closed[a.fd] == "eof" and closed[b.fd] in ("eof", "error")
    assert len(records) == 2
    a.close()
    b.close()


def test_a_client_that_never_reads(table: _turn_fast.FastTable) -> None:
    """Relayed data beyond the client's buffer is dropped (counted), the table keeps reading
    what the client sends, and the server's own messages beyond 2 MiB cut the client."""
    now = time.time()
    c = Conn(table)
    c.bind(0x4000, now + 60)
    c.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel's part: small
    chunk = b"z" * 1200
    sent = 0
    for _ in range(60):  # ~ 3.6 MB from the peer, more than every buffer on the way
        for _ in range(50):
            c.peer.sendto(chunk, c.relay.getsockname())
            sent += 1
        table.poll_kinded(now)
    c.poll(now, until=0.3)
    stats = table.stats()
    assert stats["stream_dropped"] > 0
    assert stats["to_client_packets"] + stats["stream_dropped"] <= sent
    # still reading the client: its ChannelData reaches the peer
    c.client.sendall(_cd(0x4000, b"still"))
    assert c.poll(now) == []
    while True:
        data = c.peer.recv(2000)
        if data == b"still":
            break
    assert table.stream_send(c.fd, b"\0" * (3 << 20)) == 1  # cut
    assert table.stream_send(c.fd, _refresh()) == 2
    c.close()


def test_not_started_streams_leave_peer_data_to_python(table: _turn_fast.FastTable) -> None:
    now = time.time()
    ls = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(ls.getsockname(), timeout=5)
    server, _ = ls.accept()
    fd = os.dup(server.fileno())
    table.stream_attach(fd, client.getsockname())
    with pytest.raises(ValueError):
        table.stream_attach(fd, client.getsockname())
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    relay.setblocking(False)
    table.watch(relay.fileno(), 1)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    table.put(_turn_fast.key(relay.fileno(), peer.getsockname()), fd, client.getsockname(), 0x4000,
              now + 60)  # fmt: skip
    peer.sendto(b"early", relay.getsockname())
    time.sleep(0.05)
    _, records = table.poll_kinded(now)
    assert [(f, k, d) for f, k, d, _ in records] == [(relay.fileno(), 1, b"early")]
    assert table.stream_send(fd, b"x") == 2  # not the table's to write yet
    table.unwatch(relay.fileno())
    table.stream_release(fd)
    table.stream_release(fd)  # idempotent
    for s in (ls, client, server, relay, peer):
        s.close()


def test_stream_calls_refuse_bad_arguments_one_way(table: _turn_fast.FastTable) -> None:
    """The four stream calls share one wrapper in C: each argument error is its own
    ValueError, and an fd the table does not hold is refused without touching anything."""
    raw = table._t
    good = _turn_fast.key(-1, ("127.0.0.1", 9))
    with pytest.raises(ValueError, match="KEY_SIZE"):
        raw.stream_attach(5, good[:-1])
    with pytest.raises(ValueError, match="not an attached stream"):
        raw.stream_start(1_000_000, b"")
    with pytest.raises(ValueError, match="more pending than a frame"):
        raw.stream_start(5, b"\0" * (20 + 65533))
    with pytest.raises(TypeError):
        raw.stream_send(5)
    assert raw.stream_send(1_000_000, b"x") == 2
    assert raw.stream_release(1_000_000) is None
