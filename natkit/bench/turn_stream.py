"""`natkit bench turn --transport tcp|tls`: ChannelData over TURN-over-TCP/TLS, natkit vs coturn.

The same layout as the UDP benchmark (natkit/bench/turn.py): each engine on loopback pinned
to the server core, a fresh server per round, engines alternating. The client side is this
module's driver, run as its own process pinned to the driver core (``python -m
natkit.bench.turn_stream ...``): CLIENTS connections, each with an allocation (401, then
long-term credentials) and a channel bound to the peer, then WINDOW ChannelData frames in
flight per connection for SECONDS. Frames have one size, so the driver counts received bytes
and answers each batch of complete frames with the same number of new frames in one write.
Over TCP that loop is C (natkit.bench._turnload.stream) and the driver is the peer too: one
UDP socket in the same loop, read with recvmmsg and reflected with GSO sends, so that the
driver's core is not what is measured (a Python loop beside ``turnutils_peer``, which makes
three syscalls per datagram, was: docs/benchmarks.md). Over TLS the loop is Python (``ssl``)
and the peer coturn's ``turnutils_peer`` on the driver core. Either way the relay's peer
side is real UDP traffic.

``relayed_per_s`` counts both directions, as the UDP figures do: every frame echoed back was
relayed twice (client -> peer as a datagram, peer -> client as ChannelData on the stream).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from natkit.errors import PrerequisiteError, UsageError

TRANSPORTS = ("tcp", "tls")
CHANNEL = 0x4000


# -- the driver (its own process) ---------------------------------------------------------


def _read_message(sock: socket.socket) -> bytes:
    head = _read_exact(sock, 4)
    if head[0] & 0xC0 == 0x40:  # ChannelData: a late frame; skip it
        length = int.from_bytes(head[2:4], "big")
        _read_exact(sock, (length + 3) & ~3)
        return _read_message(sock)
    rest = _read_exact(sock, 16 + int.from_bytes(head[2:4], "big"))
    return head + rest


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the server closed the connection during set-up")
        out += chunk
    return out


def _setup(
    server: tuple[str, int], tls: bool, user: str, password: str, peer: tuple[str, int]
) -> socket.socket:
    """One connection with an allocation and CHANNEL bound to ``peer`` (blocking)."""
    from natkit.stun import Attr, Class, Message, Method, decode, long_term_key

    sock = socket.create_connection(server, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the bench's own cert
        sock = ctx.wrap_socket(sock)
    first = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17)
    sock.sendall(first.encode())
    challenge = decode(_read_message(sock))
    realm, nonce = challenge.get(Attr.REALM), challenge.get(Attr.NONCE)
    key = long_term_key(user, realm, password)

    def ask(msg: Message) -> Message:
        for attr, value in ((Attr.USERNAME, user), (Attr.REALM, realm), (Attr.NONCE, nonce)):
            msg.add(attr, value)
        sock.sendall(msg.encode(key=key))
        resp = decode(_read_message(sock))
        if resp.cls != Class.SUCCESS:
            raise ConnectionError(f"{Method(msg.method).name} refused: {resp.get(Attr.ERROR_CODE)}")
        return resp

    ask(Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, 17))
    bind = Message(Method.CHANNEL_BIND).add(Attr.CHANNEL_NUMBER, CHANNEL)
    ask(bind.add(Attr.XOR_PEER_ADDRESS, peer))
    sock.setblocking(False)
    return sock


def drive(
    server: tuple[str, int],
    tls: bool,
    user: str,
    password: str,
    peer: tuple[str, int],
    clients: int,
    window: int,
    payload: int,
    seconds: float,
) -> dict[str, Any]:
    """Set up, print ``setup ok=N``, run the traffic; the result's counters. ``peer`` with
    port 0: the driver is the peer itself (its C loop reflects the datagrams; TCP only)."""
    own_peer = None
    if peer[1] == 0:
        own_peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            own_peer.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        own_peer.bind((peer[0], 0))
        own_peer.setblocking(False)
        peer = own_peer.getsockname()
    socks = [_setup(server, tls, user, password, peer) for _ in range(clients)]
    print(f"setup ok={len(socks)}", flush=True)
    if own_peer is not None:
        return _drive_c(socks, own_peer, window, payload, seconds)
    frame_len = 4 + payload  # payload is a multiple of 4: no padding on the stream
    frame = CHANNEL.to_bytes(2, "big") + payload.to_bytes(2, "big") + b"\x5a" * payload
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    partial = dict.fromkeys(socks, 0)
    sent = received = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    deadline = t0 + seconds
    for s in socks:
        pending[s] = frame * window
        sent += window
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sending = True
    drain_until = deadline + 1.0
    while True:
        now = time.monotonic()
        if sending and now >= deadline:
            sending = False
            elapsed = now - t0
            got_at_deadline = received
        if not sending and (received >= sent or now >= drain_until):
            break
        for key, events in sel.select(0.2):
            fileobj = key.fileobj
            assert isinstance(fileobj, socket.socket)
            s = fileobj
            if events & selectors.EVENT_READ:
                try:
                    data = s.recv(262144)
                except (ssl.SSLWantReadError, BlockingIOError):
                    data = None
                if data == b"":
                    raise ConnectionError("the server closed a connection during the run")
                if data:
                    total = partial[s] + len(data)
                    frames, partial[s] = divmod(total, frame_len)
                    received += frames
                    if sending and frames:
                        pending[s] = pending.get(s, b"") + frame * frames
                        sent += frames
            out = pending.get(s)
            if out:
                try:
                    n = s.send(out)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    n = 0
                pending[s] = out[n:]
            sel.modify(
                s, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending.get(s) else 0)
            )
    cpu = time.process_time() - cpu0
    for s in socks:
        s.close()
    return {
        "sent": sent,
        "received": received,
        "seconds": round(elapsed, 3),
        "relayed_per_s": round(2 * got_at_deadline / elapsed),
        "loss": round(1 - received / sent, 6) if sent else 0.0,
        "driver_cpu": round(cpu / (time.monotonic() - t0), 3),
    }


def _drive_c(
    socks: list[socket.socket], peer: socket.socket, window: int, payload: int, seconds: float
) -> dict[str, Any]:
    """The traffic in C (natkit.bench._turnload.stream): the driver and its peer in one loop."""
    from natkit.server import _native

    module, why = _native.load("natkit.bench._turnload", honour_env=False)
    if module is None:
        raise UsageError(f"the TCP driver's C loop is not available ({why}): reinstall natkit")
    t0 = time.monotonic()
    r = module.stream([s.fileno() for s in socks], peer.fileno(), 4 + payload, window, seconds)
    wall = time.monotonic() - t0
    for s in socks:
        s.close()
    peer.close()
    sent, received, elapsed = r["sent"], r["received"], r["seconds"]
    return {
        "sent": sent,
        "received": received,
        "seconds": round(elapsed, 3),
        "relayed_per_s": round(2 * r["received_at_deadline"] / elapsed),
        "loss": round(1 - received / sent, 6) if sent else 0.0,
        "driver_cpu": round(r["cpu"] / wall, 3),
        "peer_lost": r["peer_lost"],
    }


def main(argv: Sequence[str]) -> int:
    ip, port, transport, user, password, peer_ip, peer_port, *nums = argv
    clients, window, payload = (int(x) for x in nums[:3])
    result = drive(
        (ip, int(port)), transport == "tls", user, password, (peer_ip, int(peer_port)),
        clients, window, payload, float(nums[3]),
    )  # fmt: skip
    print("result " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0


# -- the measurement ----------------------------------------------------------------------


@contextlib.contextmanager
def self_signed(directory: Path) -> Iterator[tuple[Path, Path]]:
    """A throw-away EC certificate and key for the TLS runs (openssl req)."""
    cert, key = directory / "bench-cert.pem", directory / "bench-key.pem"
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise PrerequisiteError("openssl could not make the TLS runs' certificate")
    yield cert, key


@contextlib.contextmanager
def echo_peer(cpu: int | None, ip: str) -> Iterator[tuple[str, int]]:
    """coturn's turnutils_peer (UDP echo) on ``ip``, pinned to ``cpu``."""
    from natkit.bench._common import stop
    from natkit.server.coturn import free_port

    port = free_port(ip)
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = subprocess.Popen(
        [*prefix, "turnutils_peer", "-L", ip, "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise UsageError("turnutils_peer did not start (the TCP/TLS runs' peer)")
        yield ip, port
    finally:
        stop(proc)


def peer_for(
    transport: str, cpu: int | None, ip: str
) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """The runs' peer: over TCP the driver's own (port 0: its C loop reflects the datagrams,
    batched); over TLS, where the driver's loop is Python, turnutils_peer on ``cpu``."""
    if transport == "tcp":
        return contextlib.nullcontext((ip, 0))
    return echo_peer(cpu, ip)


def driver_name(transport: str) -> str:
    """What drives ``transport`` (the report's settings.driver)."""
    loop = "C loop natkit.bench._turnload.stream" if transport == "tcp" else "Python selector loop"
    return f"python -m natkit.bench.turn_stream ({loop})"


def peer_name(transport: str) -> str:
    """What reflects the relayed datagrams over ``transport`` (the report's settings.peer)."""
    return "the driver (recvmmsg, GSO sends)" if transport == "tcp" else "turnutils_peer"


def certificates(transport: str) -> contextlib.AbstractContextManager[tuple[Path, Path] | None]:
    """The TLS runs' certificate (None for TCP), removed afterwards."""

    @contextlib.contextmanager
    def made() -> Iterator[tuple[Path, Path] | None]:
        if transport != "tls":
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="natkit-bench-") as tmp, self_signed(
            Path(tmp)
        ) as pair:
            os.chmod(pair[1], 0o600)
            yield pair

    return made()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
