"""The C data path of the TURN relay (natkit/server/_turnfast.c) on loopback sockets."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from natkit.server import _turn_fast
from tests._native import need

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def table() -> _turn_fast.FastTable:
    t = _turn_fast.FastTable(need(_turn_fast.EXTENSION))
    yield t
    t.close()


def _udp(ip: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.settimeout(2)
    return s


def _pump_all(table: _turn_fast.FastTable, fd: int, kind: int, now: float) -> list:
    time.sleep(0.05)
    left = []
    while True:
        got, more = table.pump(fd, kind, now)
        left += more
        if got < 32:
            return left


def test_channel_data_both_ways_and_passthrough(table: _turn_fast.FastTable) -> None:
    listener, relay, client, peer = _udp(), _udp(), _udp(), _udp()
    for s in (listener, relay):
        s.setblocking(False)
    caddr, paddr = client.getsockname(), peer.getsockname()
    now = time.time()
    table.put(_turn_fast.key(listener.fileno(), caddr, 0x4001), relay.fileno(), paddr, 0, now + 10)
    table.put(_turn_fast.key(relay.fileno(), paddr), listener.fileno(), caddr, 0x4001, now + 10)
    assert len(table) == 2
    client.sendto(struct.pack("!HH", 0x4001, 3) + b"abc", listener.getsockname())
    client.sendto(struct.pack("!HH", 0x4001, 3) + b"abcX", listener.getsockname())  # UDP padding ok
    client.sendto(b"\x00\x01stun-ish", listener.getsockname())  # not ChannelData: left
    client.sendto(struct.pack("!HH", 0x4002, 1) + b"z", listener.getsockname())  # unbound: left
    client.sendto(struct.pack("!HH", 0x4001, 9) + b"short", listener.getsockname())  # truncated
    left = _pump_all(table, listener.fileno(), 0, now)
    assert [d for d, _ in left] == [
        b"\x00\x01stun-ish",
        struct.pack("!HH", 0x4002, 1) + b"z",
        struct.pack("!HH", 0x4001, 9) + b"short",
    ]
    assert all(a == caddr for _, a in left)
    assert peer.recvfrom(100) == (b"abc", relay.getsockname())
    assert peer.recvfrom(100) == (b"abc", relay.getsockname())
    peer.sendto(b"hello", relay.getsockname())
    stranger = _udp("127.0.0.2")
    stranger.sendto(b"nope", relay.getsockname())
    left = _pump_all(table, relay.fileno(), 1, now)
    assert left == [(b"nope", stranger.getsockname())]
    assert client.recvfrom(100) == (
        struct.pack("!HH", 0x4001, 5) + b"hello",
        listener.getsockname(),
    )
    stats = table.stats()
    assert (
        stats["to_peer_packets"] == 2 and stats["to_client_packets"] == 1 and stats["passed"] == 4
    )
    # past "until" (or deleted) nothing is forwarded any more
    peer.sendto(b"late", relay.getsockname())
    assert _pump_all(table, relay.fileno(), 1, now + 11) == [(b"late", paddr)]
    table.delete(_turn_fast.key(relay.fileno(), paddr))
    peer.sendto(b"gone", relay.getsockname())
    assert _pump_all(table, relay.fileno(), 1, now) == [(b"gone", paddr)]
    assert len(table) == 1
    for s in (listener, relay, client, peer, stranger):
        s.close()


def test_ipv6_keys(table: _turn_fast.FastTable) -> None:
    try:
        listener, relay, client, peer = _udp("::1"), _udp("::1"), _udp("::1"), _udp("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    listener.setblocking(False)
    caddr, paddr = client.getsockname()[:2], peer.getsockname()[:2]
    table.put(
        _turn_fast.key(listener.fileno(), caddr, 0x4000), relay.fileno(), paddr, 0, time.time() + 5
    )
    client.sendto(struct.pack("!HH", 0x4000, 2) + b"v6", listener.getsockname())
    assert _pump_all(table, listener.fileno(), 0, time.time()) == []
    data, src = peer.recvfrom(100)
    assert data == b"v6" and src[:2] == relay.getsockname()[:2]
    for s in (listener, relay, client, peer):
        s.close()


def test_table_grows_and_shrinks(table: _turn_fast.FastTable) -> None:
    keys = [_turn_fast.key(100 + i % 50, ("10.0.0.1", i), 0x4000 + i % 100) for i in range(20000)]
    for k in keys:
        table.put(k, 1, ("10.0.0.2", 1), 0, 1.0)
    assert len(table) == 20000
    for k in keys[:19990]:
        table.delete(k)
    for k in keys[:5000]:  # re-adding reuses the deleted slots
        table.put(k, 1, ("10.0.0.2", 1), 0, 1.0)
    assert len(table) == 5010


def _send_indication(peer: tuple[str, int], data: bytes, fingerprint: bool = False) -> bytes:
    from natkit.stun import Attr, Class, Message, Method

    msg = (
        Message(Method.SEND, Class.INDICATION).add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data)
    )
    return msg.add(Attr.DONT_FRAGMENT).encode(fingerprint=fingerprint)


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_send_and_data_indications(table: _turn_fast.FastTable, ip: str) -> None:
    from natkit.stun import Attr, Class, Method, decode

    try:
        listener, relay, client, peer = _udp(), _udp(ip), _udp(), _udp(ip)
    except OSError:
        pytest.skip("no IPv6 loopback")
    for s in (listener, relay):
        s.setblocking(False)
    caddr, paddr = client.getsockname(), peer.getsockname()[:2]
    now = time.time()
    alloc_key = _turn_fast.key(listener.fileno(), caddr, _turn_fast.KIND_ALLOC)
    relay4, relay6 = (relay.fileno(), -1) if ip == "127.0.0.1" else (-1, relay.fileno())
    table.put_allocation(alloc_key, relay4, relay6)
    # no permission yet: left for Python
    client.sendto(_send_indication(paddr, b"early"), listener.getsockname())
    assert len(_pump_all(table, listener.fileno(), 0, now)) == 1
    table.put(
        _turn_fast.key(relay.fileno(), (ip, 0), _turn_fast.KIND_PERM),
        listener.fileno(),
        caddr,
        0,
        now + 10,
    )
    client.sendto(_send_indication(paddr, b"odd"), listener.getsockname())
    client.sendto(
        _send_indication(paddr, b"fp", fingerprint=True), listener.getsockname()
    )  # Python's
    left = _pump_all(table, listener.fileno(), 0, now)
    assert len(left) == 1 and decode(left[0][0]).get(Attr.DATA) == b"fp"
    data, src = peer.recvfrom(100)
    assert data == b"odd" and src[:2] == relay.getsockname()[:2]
    for payload in (b"", b"x", b"12345", b"1234"):
        peer.sendto(payload, relay.getsockname())
        assert _pump_all(table, relay.fileno(), 1, now) == []
        ind = decode(client.recv(200))
        assert (ind.method, ind.cls) == (Method.DATA, Class.INDICATION)
        assert ind.get(Attr.XOR_PEER_ADDRESS) == paddr and ind.get(Attr.DATA) == payload
    # an expired permission: Python decides (and drops)
    peer.sendto(b"late", relay.getsockname())
    assert len(_pump_all(table, relay.fileno(), 1, now + 11)) == 1
    for s in (listener, relay, client, peer):
        s.close()


def _watched(table: _turn_fast.FastTable) -> tuple[Any, Any, Any, Any, Any, Any]:
    """A listener and a relay socket the table watches, a client and a peer socket, and the
    client's and the peer's addresses."""
    listener, relay, client, peer = _udp(), _udp(), _udp(), _udp()
    for s in (listener, relay):
        s.setblocking(False)
    table.watch(listener.fileno(), 0)
    table.watch(relay.fileno(), 1)
    return listener, relay, client, peer, client.getsockname(), peer.getsockname()


def test_poll_drains_every_watched_socket(table: _turn_fast.FastTable) -> None:
    listener, relay, client, peer, caddr, paddr = _watched(table)
    now = time.time()
    table.put(_turn_fast.key(listener.fileno(), caddr, 0x4001), relay.fileno(), paddr, 0, now + 9)
    for i in range(40):  # more than one batch on the listener
        client.sendto(struct.pack("!HH", 0x4001, 1) + bytes([i]), listener.getsockname())
    client.sendto(b"\x00\x01not-channel", listener.getsockname())
    peer.sendto(b"no channel back", relay.getsockname())
    time.sleep(0.05)
    records = []
    for _ in range(10):
        more, got = table.poll(now)
        records += got
        if not more:
            break
    assert sorted((fd, data) for fd, data, _ in records) == sorted(
        [(listener.fileno(), b"\x00\x01not-channel"), (relay.fileno(), b"no channel back")]
    )
    assert [peer.recvfrom(10)[0] for _ in range(40)] == [bytes([i]) for i in range(40)]
    assert table.poll(now) == (False, [])
    table.unwatch(relay.fileno())
    peer.sendto(b"unwatched", relay.getsockname())
    time.sleep(0.05)
    assert table.poll(now) == (False, [])
    for s in (listener, relay, client, peer):
        s.close()


def test_sends_are_batched_across_sockets_in_order(table: _turn_fast.FastTable) -> None:
    """Datagrams from many relay sockets leave through the one listener in sendmmsg batches
    that span sockets and outlive the receive slots of one batch; client -> peer datagrams
    queue per relay socket. Nothing is lost or reordered per flow, and the counters agree."""
    n_relays, per_relay = 5, 45  # 225 datagrams: several times the receive slots
    listener, client = _udp(), _udp()
    relays = [_udp() for _ in range(n_relays)]
    peers = [_udp() for _ in range(n_relays)]
    for s in (listener, client, *peers):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for s in (listener, *relays):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    table.watch(listener.fileno(), 0)
    caddr = client.getsockname()
    now = time.time()
    for i, (relay, peer) in enumerate(zip(relays, peers)):
        paddr = peer.getsockname()
        table.put(
            _turn_fast.key(listener.fileno(), caddr, 0x4000 + i), relay.fileno(), paddr, 0, now + 9
        )
        table.put(
            _turn_fast.key(relay.fileno(), paddr), listener.fileno(), caddr, 0x4000 + i, now + 9
        )
        table.watch(relay.fileno(), 1)
    for j in range(per_relay):
        for i, relay in enumerate(relays):  # interleaved: the queue's socket keeps changing
            peers[i].sendto(bytes([i, j]), relay.getsockname())
            if j % 3 == 0:
                client.sendto(
                    struct.pack("!HH", 0x4000 + i, 2) + bytes([j, i]), listener.getsockname()
                )
    time.sleep(0.1)
    records = []
    for _ in range(50):
        more, got = table.poll(now)
        records += got
        if not more:
            break
    assert records == []
    back: dict[int, list[int]] = {i: [] for i in range(n_relays)}
    for _ in range(n_relays * per_relay):
        frame = client.recv(100)
        number, length = struct.unpack("!HH", frame[:4])
        assert length == 2 and frame[4] == number - 0x4000
        back[frame[4]].append(frame[5])
    assert all(seq == list(range(per_relay)) for seq in back.values())
    sent_up = list(range(0, per_relay, 3))
    for i, peer in enumerate(peers):
        got_up = [peer.recvfrom(10) for _ in sent_up]
        assert [d for d, _ in got_up] == [bytes([j, i]) for j in sent_up]
        assert all(src == relays[i].getsockname() for _, src in got_up)
    stats = table.stats()
    assert stats["to_client_packets"] == n_relays * per_relay
    assert stats["to_peer_packets"] == n_relays * len(sent_up)
    assert stats["to_client_bytes"] == 2 * n_relays * per_relay and stats["send_errors"] == 0
    for s in (listener, client, *relays, *peers):
        s.close()


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_send_batch_of_records(table: _turn_fast.FastTable, ip: str) -> None:
    try:
        out, a, b = _udp(ip), _udp(ip), _udp(ip)
    except OSError:
        pytest.skip("no IPv6 loopback")
    batch = b"".join(
        _turn_fast.record(bytes([i]) * (i + 1), (a if i % 2 else b).getsockname()[:2])
        for i in range(70)  # more than one sendmmsg
    )
    assert table.send(out.fileno(), batch) == 0
    assert [a.recv(100) for _ in range(35)] == [bytes([i]) * (i + 1) for i in range(1, 70, 2)]
    assert [b.recv(100) for _ in range(35)] == [bytes([i]) * (i + 1) for i in range(0, 70, 2)]
    assert table.send(out.fileno(), batch[:-1]) > 0  # a truncated record is refused, not read past
    for s in (out, a, b):
        s.close()


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_send_batch_runs_of_equal_datagrams_arrive_one_by_one(
    table: _turn_fast.FastTable, ip: str
) -> None:
    """Python's batches (a TLS client's read: many equal ChannelData payloads to one peer)
    leave as GSO messages of up to 64 datagrams: each still arrives as its own datagram, in
    order, whatever the runs' lengths, sizes and destinations."""
    try:
        out, a, b = _udp(ip), _udp(ip), _udp(ip)
    except OSError:
        pytest.skip("no IPv6 loopback")
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    runs = [(a, 100, 150), (a, 52, 3), (b, 100, 70), (a, 100, 1), (b, 7, 2)]
    want: dict[socket.socket, list[bytes]] = {a: [], b: []}
    batch = b""
    seq = 0
    for dest, size, count in runs:
        for _ in range(count):
            data = seq.to_bytes(4, "big") + b"\x5a" * (size - 4)
            want[dest].append(data)
            batch += _turn_fast.record(data, dest.getsockname()[:2])
            seq += 1
    assert table.send(out.fileno(), batch) == 0
    for dest in (a, b):
        dest.settimeout(2)
        assert [dest.recv(2000) for _ in want[dest]] == want[dest]
        dest.setblocking(False)
        with pytest.raises(BlockingIOError):
            dest.recv(2000)
    for s in (out, a, b):
        s.close()


_MTU_CHILD = """
import socket, sys
from natkit.server import _native, _turn_fast
t = _turn_fast.FastTable(_native.load(_turn_fast.EXTENSION)[0])
out, peer = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
peer.bind(("127.0.0.1", 0))
peer.settimeout(2)
out.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: may fragment
sizes = [1300] * 3 + [100] * 3  # a GSO segment over lo's MTU is refused (EINVAL)
batch = b"".join(_turn_fast.record(bytes([i]) * n, peer.getsockname()) for i, n in enumerate(sizes))
failed = t.send(out.fileno(), batch)
got = [peer.recv(2000) for _ in sizes]
assert failed == 0 and got == [bytes([i]) * n for i, n in enumerate(sizes)], (failed, got)
print("ok", t.stats()["gso"])
"""


@pytest.mark.root
def test_send_batch_falls_back_when_a_gso_message_is_refused() -> None:
    """A GSO message the device refuses (here: segments over the MTU of a namespace's
    loopback) is sent again datagram by datagram, and GSO is off from then on."""
    from tests.ice._netns import require_root_netns

    require_root_netns()
    need(_turn_fast.EXTENSION)
    ns = f"nk{uuid.uuid4().hex[:6]}-mtu"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "mtu", "1280", "up"], check=True,
                       timeout=20)  # fmt: skip
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _MTU_CHILD],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["ok", "0"]  # delivered, and GSO switched off
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=20, check=False)


def test_counters_can_be_read_from_another_thread_while_it_polls(
    table: _turn_fast.FastTable,
) -> None:
    """stats() and len() of a relay running in a thread of its own (the pytest plugin's
    fixtures) never fail while that thread is inside poll() with the GIL released; changing
    the table meanwhile is refused, not raced."""
    import threading

    listener = _udp("127.0.0.1")
    table.watch(listener.fileno(), 0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def spin() -> None:
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                table.poll(time.monotonic())
            except BaseException as exc:  # report it to the test
                errors.append(exc)
                return

    poller = threading.Thread(target=spin)
    poller.start()
    try:
        for _ in range(2000):
            assert table.stats()["send_errors"] == 0
            assert len(table) == 0
            try:
                table.delete(_turn_fast.key(listener.fileno(), ("127.0.0.1", 9), 0x4000))
            except RuntimeError as exc:  # the poller is inside poll() right now
                assert "in use by another thread" in str(exc)
    finally:
        stop.set()
        poller.join(10)
    assert errors == []
    table.unwatch(listener.fileno())
    listener.close()


def _gso_send(sock: socket.socket, datagrams: list[bytes], to: tuple[str, int]) -> None:
    """Equal-sized datagrams (the last may be shorter) in one UDP GSO send."""
    size = len(datagrams[0])
    ctl = [(socket.IPPROTO_UDP, 103, struct.pack("=H", size))]  # UDP_SEGMENT
    sock.sendmsg([b"".join(datagrams)], ctl, 0, to)


def test_gro_reads_are_split_into_their_datagrams() -> None:
    """With UDP GRO the kernel may hand several datagrams of one source over in one read:
    each is relayed as the datagram it was, both ways, a Data indication's padding never
    spilling into the next one."""
    from natkit.stun import Attr, decode

    table = _turn_fast.FastTable(need(_turn_fast.EXTENSION), gro=True)
    listener, relay, client, peer, caddr, paddr = _watched(table)
    now = time.time()
    table.put(_turn_fast.key(listener.fileno(), caddr, 0x4000), relay.fileno(), paddr, 0, now + 9)
    table.put(
        _turn_fast.key(relay.fileno(), (paddr[0], 0), _turn_fast.KIND_PERM),
        listener.fileno(), caddr, 0, now + 9,
    )  # fmt: skip
    try:
        _gso_send(client, [struct.pack("!HH", 0x4000, 3) + b"c%02d" % i for i in range(20)],
                  listener.getsockname())  # fmt: skip
        _gso_send(peer, [b"p%04d" % i for i in range(20)], relay.getsockname())
    except OSError:
        table.close()
        pytest.skip("no UDP GSO on this kernel")
    time.sleep(0.1)
    assert table.poll(now) == (False, [])
    assert [peer.recv(100) for _ in range(20)] == [b"c%02d" % i for i in range(20)]
    got = [decode(client.recv(200)) for _ in range(20)]
    assert [m.get(Attr.DATA) for m in got] == [b"p%04d" % i for i in range(20)]
    assert all(m.get(Attr.XOR_PEER_ADDRESS) == paddr for m in got)
    stats = table.stats()
    assert stats["to_peer_packets"] == 20 and stats["to_client_packets"] == 20
    assert stats["gro_reads"] >= 1  # loopback keeps a GSO send whole for a GRO socket
    table.close()
    for s in (listener, relay, client, peer):
        s.close()


def test_a_batch_of_coalesced_and_single_datagrams_all_leave() -> None:
    """One read batch of GRO-coalesced bursts (many datagrams each) followed by single
    datagrams: more sends than the send queue holds at once; every datagram still leaves
    (the queue is flushed when full, whatever kind of read filled it)."""
    t = _turn_fast.FastTable(need(_turn_fast.EXTENSION), gro=True)
    listener, relay, client, peer = _udp(), _udp(), _udp(), _udp()
    try:
        listener.setblocking(False)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        t.watch(listener.fileno(), 0)
        now = time.time()
        caddr, paddr = client.getsockname(), peer.getsockname()
        t.put(_turn_fast.key(listener.fileno(), caddr, 0x4000), relay.fileno(), paddr, 0, now + 9)
        frame = struct.pack("!HH", 0x4000, 4) + b"burs"
        bursts = 0
        for segments in (64, 64, 64, 60):
            try:
                client.sendmsg(
                    [frame * segments], [(socket.SOL_UDP, 103, struct.pack("=H", len(frame)))],
                    0, listener.getsockname(),
                )  # fmt: skip
            except OSError:
                pytest.skip("no UDP GSO here")
            bursts += segments
        singles = [b"s" * (4 + i) for i in range(60)]  # growing sizes: never coalesced
        for data in singles:
            client.sendto(struct.pack("!HH", 0x4000, len(data)) + data, listener.getsockname())
        time.sleep(0.05)
        for _ in range(10):
            more, left = t.poll(now)
            assert left == []
            if not more:
                break
        got = []
        peer.settimeout(1)
        with contextlib.suppress(TimeoutError):
            while len(got) < bursts + len(singles):
                got.append(peer.recv(100))
        assert got.count(b"burs") == bursts
        assert [d for d in got if d != b"burs"] == singles
    finally:
        t.close()
        for s in (listener, relay, client, peer):
            s.close()
