#!/usr/bin/env python3
"""A reference lab peer, written from docs/lab-peers.md alone (contract version 1).

It does not import natkit: it needs Python 3.11 and aiortc (``pip install aiortc``). Put it
behind every NAT of the lab with::

    natkit lab run --peer ref='python3 examples/lab-peer/peer.py'
    natkit lab run --peer ref='python3 examples/lab-peer/peer.py --trickle'

aiortc allocates on the first TURN URL it is given only, so behind a UDP-blocking firewall
(where the contract's TCP URL would work) this peer gets no relay: ``natkit lab run --peer``
reports those relay cells as mismatches, which is what they are for this peer.

``--trickle`` sends the description without candidates and then each candidate as a
``candidate`` message, ending with ``null`` (the contract's second style); by default the
candidates travel inside the SDP. Either way it accepts both styles from the other side.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import struct
import sys
import time
from urllib.parse import urlsplit

CONTRACT = 1
PINGS = 5


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} ref-peer: {text}", file=sys.stderr, flush=True)


class Signaling:
    """A WebSocket client (RFC 6455): text frames of JSON, masked as a client's must be."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.inbox: asyncio.Queue[dict | Exception] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read_all())

    async def _read_all(self) -> None:
        """One reader for the socket's whole life: messages (or the error that ended it) queue up."""
        try:
            while True:
                self.inbox.put_nowait(await self._recv())
        except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            self.inbox.put_nowait(ConnectionError(f"signaling connection lost: {exc!r}"))

    async def recv(self) -> dict:
        msg = await self.inbox.get()
        if isinstance(msg, Exception):
            self.inbox.put_nowait(msg)
            raise msg
        return msg

    @classmethod
    async def connect(cls, url: str) -> Signaling:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"no WebSocket upgrade: {head.splitlines()[0]!r}")
        return cls(reader, writer)

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 \
            else bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def send(self, obj: dict) -> None:
        self._frame(1, json.dumps(obj).encode())
        await self.writer.drain()

    async def relay(self, data: dict) -> None:
        await self.send({"type": "relay", "data": data})

    async def _recv(self) -> dict:
        data = b""
        while True:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n)
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("the signaling server closed the connection")
            if opcode == 9:
                self._frame(10, payload)
                continue
            if opcode in (0, 1):
                data += payload
                if b0 & 0x80:
                    msg = json.loads(data)
                    if isinstance(msg, dict):
                        return msg
                    data = b""

    def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(Exception):
            self._frame(8, struct.pack("!H", 1000))
            self.writer.close()


def keep_types(sdp: str, types: set[str]) -> tuple[str, list[str], list[str]]:
    """The SDP without candidates, the kept candidates (attribute values), the kept lines' SDP."""
    bare, kept = [], []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if fields[fields.index("typ") + 1] in types:
                kept.append(line[2:])
            continue
        if line != "a=end-of-candidates":
            bare.append(line)
    return "\r\n".join(bare) + "\r\n", kept, bare


def with_candidates(bare: list[str], kept: list[str]) -> str:
    # aiortc puts a data channel session in one m-section: candidates go at its end.
    return "\r\n".join(bare + [f"a={c}" for c in kept] + ["a=end-of-candidates"]) + "\r\n"


class Peer:
    def __init__(self, trickle: bool) -> None:
        env = os.environ
        self.role = env["NATKIT_ROLE"]
        self.room = env["NATKIT_ROOM"]
        self.url = env["NATKIT_SIGNALING_URL"]
        self.config = json.loads(env["NATKIT_ICE_CONFIG"])
        self.types = set(env["NATKIT_CANDIDATE_TYPES"].split(","))
        self.deadline_s = float(env["NATKIT_DEADLINE_S"])
        self.trickle = trickle
        self.result: dict = {"natkit_peer": CONTRACT, "connected": False, "t_connect_ms": None, "rtt_ms": None,
                             "selected": None, "relay_protocol": None, "error": None, "stack": "reference peer (aiortc)"}
        self.remote_set = asyncio.Event()
        self.pending: list[dict] = []

    def make_pc(self):
        from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection

        servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                   for s in self.config.get("iceServers", [])]
        relay = self.config.get("iceTransportPolicy") == "relay"
        policy = RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL
        return RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))

    async def describe(self, sig: Signaling, kind: str, sdp: str) -> None:
        bare, kept, lines = keep_types(sdp, self.types)
        log(f"{kind} with {len(kept)} candidate(s){' trickled' if self.trickle else ''}: {kept}")
        if not self.trickle:
            await sig.relay({"type": kind, "sdp": with_candidates(lines, kept)})
            return
        await sig.relay({"type": kind, "sdp": bare})
        for c in kept:
            await sig.relay({"type": "candidate", "candidate": {"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0}})
        await sig.relay({"type": "candidate", "candidate": None})

    async def add_candidate(self, pc, cand: dict | None) -> None:
        from aiortc.sdp import candidate_from_sdp

        if not cand or not cand.get("candidate"):
            return
        text = str(cand["candidate"]).removeprefix("a=").removeprefix("candidate:")
        ice = candidate_from_sdp(text)
        ice.sdpMid, ice.sdpMLineIndex = cand.get("sdpMid"), cand.get("sdpMLineIndex")
        await pc.addIceCandidate(ice)

    async def next_data(self, sig: Signaling, pc, kind: str) -> dict:
        """The next relayed message of ``kind``; trickled candidates are applied on the way."""
        while True:
            msg = await sig.recv()
            if msg.get("type") == "peer-left":
                raise ConnectionError("the other peer left the room")
            if msg.get("type") == "error":
                raise ConnectionError(f"signaling server: {msg.get('error')}")
            data = msg.get("data")
            if msg.get("type") != "relay" or not isinstance(data, dict):
                continue
            if data.get("type") == kind:
                return data
            if data.get("type") == "candidate":
                if self.remote_set.is_set():
                    await self.add_candidate(pc, data.get("candidate"))
                else:
                    self.pending.append(data.get("candidate"))

    async def set_remote(self, pc, kind: str, sdp: str) -> None:
        from aiortc import RTCSessionDescription

        await pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
        self.remote_set.set()
        for cand in self.pending:
            await self.add_candidate(pc, cand)
        self.pending = []

    def selected(self, pc) -> None:
        # aiortc has no getStats for the ICE pair: ask its ICE agent (aioice) for the nominated one.
        with contextlib.suppress(AttributeError, KeyError):
            pair = pc.sctp.transport.transport.iceGatherer._connection._nominated[1]
            local, remote = pair.local_candidate, pair.remote_candidate
            self.result["selected"] = {
                "local": {"type": local.type, "address": local.host, "port": local.port, "protocol": local.transport},
                "remote": {"type": remote.type, "address": remote.host, "port": remote.port, "protocol": remote.transport},
            }
            if local.type == "relay":
                # aiortc does not say which TURN URL a relay came from: known when one transport was given.
                transports = {("tls" if u.startswith("turns:") else "tcp" if "transport=tcp" in u else "udp")
                              for s in self.config.get("iceServers", [])
                              for u in ([s["urls"]] if isinstance(s["urls"], str) else s["urls"]) if u.startswith("turn")}
                if len(transports) == 1:
                    self.result["relay_protocol"] = transports.pop()

    async def run(self) -> None:
        sig = await Signaling.connect(self.url)
        pc = self.make_pc()
        try:
            await sig.send({"type": "join", "room": self.room})
            if self.role == "caller":
                await self.caller(sig, pc)
            else:
                await self.callee(sig, pc)
        finally:
            with contextlib.suppress(Exception):
                await sig.send({"type": "leave"})
            sig.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 2)

    async def caller(self, sig: Signaling, pc) -> None:
        members = 0
        while members < 2:
            msg = await sig.recv()
            members = msg.get("members", 0) if msg.get("type") == "joined" else 2 if msg.get("type") == "peer-joined" else members
        start = time.monotonic()
        channel = pc.createDataChannel("echo", ordered=True)
        opened, echoes = asyncio.Event(), asyncio.Queue()
        channel.on("open", opened.set)
        channel.on("message", echoes.put_nowait)
        await pc.setLocalDescription(await pc.createOffer())
        await self.describe(sig, "offer", pc.localDescription.sdp)
        answer = await self.next_data(sig, pc, "answer")
        await self.set_remote(pc, "answer", answer["sdp"])
        waiting = asyncio.ensure_future(self.next_data(sig, pc, "never"))  # trickled candidates meanwhile
        try:
            await opened.wait()
        finally:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await waiting
        self.result["t_connect_ms"] = round((time.monotonic() - start) * 1000, 2)
        self.selected(pc)
        rtts = []
        for n in range(1, PINGS + 1):
            sent = time.monotonic()
            channel.send(f"ping {n}")
            while await echoes.get() != f"ping {n}":
                pass
            rtts.append((time.monotonic() - sent) * 1000)
        self.result["rtt_ms"] = round(statistics.median(rtts), 3)
        idle = float(os.environ.get("NATKIT_IDLE_S") or 0)
        if idle > 0:  # the longevity path: a silent channel, then one more echo
            await asyncio.sleep(idle)
            channel.send("after idle")
            while await echoes.get() != "after idle":
                pass
        self.result["connected"] = True
        await sig.relay({"type": "done"})
        with contextlib.suppress(TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            await asyncio.wait_for(self.next_data(sig, pc, "bye"), 2)

    async def callee(self, sig: Signaling, pc) -> None:
        opened = asyncio.Event()

        @pc.on("datachannel")
        def on_channel(channel) -> None:
            opened.set()
            channel.on("message", channel.send)

        offer = await self.next_data(sig, pc, "offer")
        start = time.monotonic()
        await self.set_remote(pc, "offer", offer["sdp"])
        await pc.setLocalDescription(await pc.createAnswer())
        await self.describe(sig, "answer", pc.localDescription.sdp)
        done = asyncio.ensure_future(self.next_data(sig, pc, "done"))
        await asyncio.wait([done, asyncio.ensure_future(opened.wait())], return_when=asyncio.FIRST_COMPLETED)
        if opened.is_set():
            self.result["t_connect_ms"] = round((time.monotonic() - start) * 1000, 2)
            self.selected(pc)
        await done
        if not opened.is_set():
            raise ConnectionError("'done' came before the data channel opened here")
        self.result["connected"] = True
        await sig.relay({"type": "bye"})


async def main() -> int:
    ap = argparse.ArgumentParser(description="a natkit lab peer (docs/lab-peers.md), on aiortc")
    ap.add_argument("--trickle", action="store_true", help="trickle candidates instead of putting them in the SDP")
    args = ap.parse_args()
    if os.environ.get("NATKIT_PEER_CONTRACT") != str(CONTRACT):
        log(f"NATKIT_PEER_CONTRACT is {os.environ.get('NATKIT_PEER_CONTRACT')!r}; I implement version {CONTRACT}")
        return 2
    try:
        peer = Peer(args.trickle)
    except (KeyError, ValueError) as exc:
        log(f"bad or missing NATKIT_* variable: {exc}")
        return 2
    try:
        await asyncio.wait_for(peer.run(), max(0.5, peer.deadline_s - 1.0))
    except TimeoutError:
        peer.result["error"] = "not connected within the deadline" if peer.result["t_connect_ms"] is None \
            else "connected, but the echo did not complete within the deadline"
    except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
        peer.result["error"] = f"{type(exc).__name__}: {exc}"
    if peer.result["error"]:
        peer.result["connected"] = False
        log(peer.result["error"])
    print(json.dumps(peer.result), flush=True)
    return 0 if peer.result["connected"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
