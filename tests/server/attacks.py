"""The attacks of issue 12 at full scale, on loopback, for the figures in the report and in
docs/security.md (the tests run them small). Bounded in count and time; loopback only.

    python -m tests.server.attacks slots     [--connections 10050]
    python -m tests.server.attacks slowloris [--connections 200]
    python -m tests.server.attacks channels  [--binds 5000]
    python -m tests.server.attacks fuzz      [--messages 1000000]
    python -m tests.server.attacks peers     (natkit and coturn side by side)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from natkit.server.coturn import free_port, wait_for_binding
from natkit.stun import Attr, Class, Message, Method, decode, long_term_key
from tests.server.test_stream import alive

SERVER = "127.0.0.1"


@contextlib.contextmanager
def natkit_turn(*flags: str) -> Iterator[tuple[str, int]]:
    port = free_port(SERVER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "natkit", "serve", "turn", "--listen", f"{SERVER}:{port}",
         "--user", "u:p", "--log-level", "warning", *flags],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for_binding((SERVER, port), 20, proc) == "ok"
        yield SERVER, port
    finally:
        proc.terminate()
        proc.wait(10)


def tcp_binding(target: tuple[str, int], source: str, timeout: float = 5) -> float | None:
    t0 = time.monotonic()
    try:
        with socket.create_connection(target, timeout, source_address=(source, 0)) as s:
            s.sendall(Message(Method.BINDING).encode())
            head = s.recv(20)
            return time.monotonic() - t0 if len(head) == 20 else None
    except OSError:
        return None


def slots(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with natkit_turn() as target:
        socks = []
        t0 = time.monotonic()
        for _ in range(args.connections):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.2", 0))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                s.connect(target)
            socks.append(s)
            if time.monotonic() - t0 > 60:
                break
        opened = time.monotonic() - t0
        time.sleep(0.5)
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(Message(Method.BINDING).encode()[:7])
        time.sleep(1.0)
        held = alive(socks)
        legit = tcp_binding(target, "127.0.0.3")
        print(
            f"slots: {len(socks)} half-written connections from 127.0.0.2 in {opened:.1f} s; "
            f"held by the server: {held}; legitimate TCP Binding from 127.0.0.3: "
            f"{f'answered in {legit:.3f} s' if legit is not None else 'NOT answered'}"
        )
        for s in socks:
            s.close()


def slowloris(args: argparse.Namespace) -> None:
    with natkit_turn() as target:
        socks = [socket.create_connection(target, source_address=("127.0.0.2", 0))
                 for _ in range(args.connections)]  # fmt: skip
        request = Message(Method.BINDING).encode()
        t0 = time.monotonic()
        closed_at: dict[int, float] = {}
        for i in range(4):  # a byte every 10 s
            for n, s in enumerate(socks):
                if n in closed_at:
                    continue
                try:
                    s.send(request[i : i + 1])
                except OSError:
                    closed_at[n] = time.monotonic() - t0
            legit = tcp_binding(target, "127.0.0.3")
            print(
                f"  t={time.monotonic() - t0:5.1f} s open={len(socks) - len(closed_at)} "
                f"legit Binding={'ok' if legit is not None else 'FAILED'}"
            )
            time.sleep(10)
            for n, s in enumerate(socks):
                with contextlib.suppress(BlockingIOError):
                    if n not in closed_at and s.recv(1, socket.MSG_DONTWAIT) == b"":
                        closed_at[n] = time.monotonic() - t0
        print(
            f"slowloris: {len(closed_at)}/{len(socks)} closed, the last after "
            f"{max(closed_at.values(), default=0):.1f} s"
        )


def _transact(sock: socket.socket, msg: Message, key: bytes | None) -> Message:
    data = msg.encode(key=key) if key else msg.encode()
    for _ in range(5):
        sock.send(data)
        with contextlib.suppress(TimeoutError):
            while True:
                answer = decode(sock.recv(4096))
                if answer.transaction_id == msg.transaction_id:
                    return answer
    raise TimeoutError


def _allocated(target: tuple[str, int]) -> tuple[socket.socket, str, bytes]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1)
    sock.connect(target)
    resp = _transact(sock, Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17), None)
    nonce, realm = resp.get(Attr.NONCE), resp.get(Attr.REALM)
    key = long_term_key("u", realm, "p")

    def signed(msg: Message) -> Message:
        return msg.add(Attr.USERNAME, "u").add(Attr.REALM, realm).add(Attr.NONCE, nonce)

    resp = _transact(sock, signed(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)), key)
    assert resp.cls == Class.SUCCESS, resp
    return sock, nonce, key


def channels(args: argparse.Namespace) -> None:
    with natkit_turn("--allow-peer", "127.0.0.0/8") as target:
        sock, nonce, key = _allocated(target)
        ok = refused = 0
        t0 = time.monotonic()
        for n in range(args.binds):
            msg = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4000 + n % 0x1000)
            msg.add(Attr.XOR_PEER_ADDRESS, ("127.0.0.2", 1024 + n))
            msg.add(Attr.USERNAME, "u").add(Attr.REALM, "natkit").add(Attr.NONCE, nonce)
            resp = _transact(sock, msg, key)
            ok += resp.cls == Class.SUCCESS
            refused += resp.cls == Class.ERROR and resp.error_code.code == 508
        binds = time.monotonic() - t0
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.3", 0))
        other.settimeout(2)
        other.connect(target)
        times = []
        for _ in range(20):
            t1 = time.monotonic()
            _transact(other, Message(Method.BINDING), None)
            times.append(time.monotonic() - t1)
        refreshes = []
        for _ in range(200):
            msg = Message(Method.REFRESH).add(Attr.LIFETIME, 600)
            msg.add(Attr.USERNAME, "u").add(Attr.REALM, "natkit").add(Attr.NONCE, nonce)
            t1 = time.monotonic()
            _transact(sock, msg, key)
            refreshes.append(time.monotonic() - t1)
        print(
            f"channels: {args.binds} ChannelBinds to one peer IP in {binds:.1f} s: {ok} bound, "
            f"{refused} refused 508; another client's Binding: median "
            f"{sorted(times)[10] * 1000:.2f} ms, max {max(times) * 1000:.2f} ms; 200 Refreshes: "
            f"median {sorted(refreshes)[100] * 1000:.2f} ms"
        )


def fuzz(args: argparse.Namespace) -> None:
    from tests.turn.harness import Client, Harness, make_engine

    def rss_kb() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    h = Harness(make_engine(families=frozenset({4, 6})))
    c = Client(h)
    c.allocate()
    c.channel(0x4000, ("198.51.100.7", 9))
    rng = random.Random(12)
    seeds = [
        c._sign(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17), "sha1"),
        c._sign(Message(Method.REFRESH).add(Attr.LIFETIME, 600), "sha1"),
        c._sign(Message(Method.CREATE_PERMISSION).add(Attr.XOR_PEER_ADDRESS, ("198.51.100.8", 1)), "sha1"),
        c._sign(Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, 0x4001).add(Attr.XOR_PEER_ADDRESS, ("198.51.100.9", 2)), "sha1"),
        Message(Method.SEND, Class.INDICATION).add(Attr.XOR_PEER_ADDRESS, ("198.51.100.7", 9)).add(Attr.DATA, b"x" * 40).encode(),
        Message(Method.BINDING).encode(),
        struct.pack("!HH", 0x4000, 8) + b"payload!",
    ]  # fmt: skip
    # warm up, then measure
    for i in range(20_000):
        _mutate_one(h, seeds, rng, i, c.transport)
    before = rss_kb()
    t0 = time.monotonic()
    for i in range(args.messages):
        _mutate_one(h, seeds, rng, i, c.transport)
        if i % 100_000 == 0:
            h.tick(1)
    elapsed = time.monotonic() - t0
    after = rss_kb()
    s = h.engine.stats
    print(
        f"fuzz: {args.messages:,} mutated messages in {elapsed:.0f} s, bugs={s.bugs}, "
        f"bad_packets={s.bad_packets:,}; RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB "
        f"({(after - before) / before * 100:+.1f} %)"
    )


def _mutate_one(h: Any, seeds: list[bytes], rng: random.Random, i: int, handle: Any) -> None:
    buf = bytearray(seeds[i % len(seeds)])
    for _ in range(rng.randrange(1, 4)):
        buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
    if rng.random() < 0.2:
        del buf[rng.randrange(len(buf)) :]
    addr = ("198.51.100.10", 40000) if i % 2 else (f"198.51.{(i >> 8) & 255}.{i & 255}", 1)
    h.run(h.engine.handle_client(handle, addr, bytes(buf), h.now))
    if len(h.sent_to_peers) > 1000:  # the harness's own record, not the engine's memory
        h.sent_to_peers.clear()


SPECIAL_TARGETS = [
    "127.0.0.1", "127.0.0.53", "0.0.0.0", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "192.0.0.1", "192.0.2.1", "198.18.0.1", "198.51.100.1", "203.0.113.1",
    "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
    "fc00::1", "fd00::1", "fec0::1", "ff02::1", "2001:db8::1", "3fff::1", "100::1", "2001:2::1",
    "64:ff9b:1::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a9fe:a9fe::1",
    "::127.0.0.1", "::ffff:0:127.0.0.1",
]  # fmt: skip


def peers(args: argparse.Namespace) -> None:
    from natkit.server._local import local_addresses
    from natkit.server.coturn import CoturnServer

    own = sorted({a.split("/")[0] for a in local_addresses()} - {"127.0.0.0", "::1"})
    targets = [(ip, 9) for ip in SPECIAL_TARGETS + own]
    results = {}
    flags = ["--allow-peer", "0.0.0.0/0", "--allow-peer", "::/0"] if args.allow_all else []
    if args.allow_all:  # everything reopened: what is left refused is the relay itself
        targets = [(ip, 9) for ip in own] + [("127.0.0.1", 9)]
    with natkit_turn("--listen", "0.0.0.0:0", *flags) as target:
        results["natkit"] = _scan(target, [*targets, target])
    coturn = CoturnServer(
        [("0.0.0.0", 0)], users={"u": "p"},
        allow_peers=["0.0.0.0/0", "::/0"] if args.allow_all else (),
    )  # fmt: skip
    with coturn:
        listener = ("127.0.0.1", coturn.addresses_of("udp")[0][1])
        results["coturn"] = _scan(listener, [*targets, listener])
    for name, (refused, allowed) in results.items():
        print(
            f"peers: {name}: {refused} of {len(targets) + 1} refused (403); not refused: {allowed}"
        )
    print(
        f"(targets: {len(SPECIAL_TARGETS)} special-purpose, {len(own)} own host addresses "
        f"{own}, and the listener's own port)"
    )


def _scan(target: tuple[str, int], targets: list[tuple[str, int]]) -> tuple[int, list[str]]:
    sock, nonce, key = _allocated(target)
    refused, allowed = 0, []
    for peer in targets:
        msg = Message(Method.CREATE_PERMISSION).add(Attr.XOR_PEER_ADDRESS, peer)
        msg.add(Attr.USERNAME, "u").add(Attr.REALM, "natkit").add(Attr.NONCE, nonce)
        resp = _transact(sock, msg, key)
        if resp.cls == Class.ERROR and resp.error_code.code == 403:
            refused += 1
        else:
            allowed.append(f"{peer[0]}({resp.error_code.code if resp.error_code else 'ok'})")
    return refused, allowed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.server.attacks")
    sub = parser.add_subparsers(dest="attack", required=True)
    sub.add_parser("slots").add_argument("--connections", type=int, default=10_050)
    sub.add_parser("slowloris").add_argument("--connections", type=int, default=200)
    sub.add_parser("channels").add_argument("--binds", type=int, default=5000)
    sub.add_parser("fuzz").add_argument("--messages", type=int, default=1_000_000)
    sub.add_parser("peers").add_argument("--allow-all", action="store_true")
    args = parser.parse_args()
    {"slots": slots, "slowloris": slowloris, "channels": channels, "fuzz": fuzz,
     "peers": peers}[args.attack](args)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
