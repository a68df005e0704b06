#!/usr/bin/python3
"""natkit lab peer on GStreamer's webrtcbin (libnice inside), following docs/lab-peers.md
(contract version 1).

Run by Debian's ``/usr/bin/python3`` (it needs python3-gi and GStreamer's typelibs, which a
virtualenv does not see), so it imports nothing of natkit: the WebSocket client below is its
own. It reads the NATKIT_* environment, joins the room, does offer/answer with the candidates
inside the SDP (gathered first, filtered to the path's types; trickled candidates from the other
side are added as they come), proves the path with the data-channel echo and prints one JSON
result line with the pair libnice selected, as webrtcbin's get-stats reports it (libnice's
agent when the stats have no selected pair).

Threads: GLib's main loop owns all state; webrtcbin's signals and the WebSocket reader thread
hand their events to it with ``GLib.idle_add``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

CONTRACT = 1
PINGS = 5
BYE_WAIT_S = 2.0
AFTER_IDLE = "after idle"  # the longevity echo, after NATKIT_IDLE_S of silence on the channel
SETTLE_MS = 150

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstSdp", "1.0")
    gi.require_version("GstWebRTC", "1.0")
    from gi.repository import GLib, Gst, GstSdp, GstWebRTC
except (ImportError, ValueError) as exc:  # reported as the contract asks: a line, exit 2
    print(f"webrtcbin peer: GStreamer's Python bindings are missing ({exc}); apt-get install "
          "python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice gstreamer1.0-plugins-bad", file=sys.stderr)
    sys.exit(2)

try:
    gi.require_version("Nice", "0.1")
    from gi.repository import Nice
except (ImportError, ValueError):
    Nice = None


def log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} webrtcbin-peer: {text}\n")
    sys.stderr.flush()


# -- a WebSocket client (RFC 6455), just enough for the lab's signaling ---------------------------


class WebSocket:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname or not parts.port:
            raise ValueError(f"NATKIT_SIGNALING_URL {url!r}: expected ws://HOST:PORT/PATH")
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.sock.sendall((
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{parts.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk or len(head) > 16384:
                raise ConnectionError("no WebSocket handshake from the signaling server")
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"the signaling server refused the upgrade: {head.splitlines()[0]!r}")
        self.sock.settimeout(None)
        self.lock = threading.Lock()

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.lock:
            self.sock.sendall(head + mask + body)

    def send(self, obj: dict[str, Any]) -> None:
        self._frame(1, json.dumps(obj).encode())

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the signaling server closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv(self) -> dict[str, Any] | None:
        """The next JSON object (None for a frame that is not one); ConnectionError at the end."""
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            if n > 1 << 20:
                raise ConnectionError("oversized signaling message")
            key = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if key:
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            op = b0 & 0x0F
            if op == 8:
                raise ConnectionError("the signaling server closed the connection")
            if op == 9:
                self._frame(10, payload)
                continue
            if op == 10:
                continue
            parts.append(payload)
            if b0 & 0x80:
                break
        try:
            msg = json.loads(b"".join(parts))
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def close(self) -> None:
        try:
            self._frame(8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


# -- the peer ----------------------------------------------------------------------------------


def candidate_type(line: str) -> str:
    fields = line.split()
    return fields[fields.index("typ") + 1] if "typ" in fields[:-1] else ""


def gst_uri(url: str, username: str, credential: str) -> str | None:
    """A W3C ``stun:``/``turn:``/``turns:`` URL as webrtcbin's ``scheme://[user:pass@]host:port``."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "turn", "turns"):
        return None
    rest, _, query = rest.partition("?")
    auth = ""
    if scheme != "stun":
        auth = f"{urllib.parse.quote(username, safe='')}:{urllib.parse.quote(credential, safe='')}@"
    transport = ""
    for kv in query.split("&"):
        if kv.startswith("transport="):
            transport = "?" + kv
    return f"{scheme}://{auth}{rest}{transport if scheme == 'turn' else ''}"


class Peer:
    def __init__(self, env: dict[str, str]) -> None:
        self.role = env["NATKIT_ROLE"]
        self.room = env["NATKIT_ROOM"]
        self.types = {t.strip() for t in env["NATKIT_CANDIDATE_TYPES"].split(",") if t.strip()}
        self.started = time.monotonic()
        self.deadline = self.started + float(env["NATKIT_DEADLINE_S"]) - 0.5
        self.idle_s = float(env.get("NATKIT_IDLE_S") or 0.0)
        self.idling = False
        self.ice = json.loads(env["NATKIT_ICE_CONFIG"])
        self.url = env["NATKIT_SIGNALING_URL"]
        self.loop = GLib.MainLoop()
        self.result: dict[str, Any] = {
            "natkit_peer": CONTRACT, "connected": False, "t_connect_ms": None, "rtt_ms": None,
            "selected": None, "relay_protocol": None, "error": None,
            "stack": f"GStreamer webrtcbin {Gst.version_string().split()[-1]}" + (
                f", libnice {Nice.version_string()}" if Nice is not None and hasattr(Nice, "version_string") else ", libnice"),
            "signaled": [],
        }
        self.code = 1
        self.ws: WebSocket | None = None
        self.pipe: Gst.Pipeline | None = None
        # GStreamer objects (gi has no types): webrtcbin is made in setup(), before the main
        # loop runs any handler; the channel before any handler that sends on it.
        self.webrtc: Any = None
        self.channel: Any = None
        self.ice_agent: Any = None
        self.nice: Any = None
        self.agent_pair: dict[str, Any] | None = None
        self.local_candidates: list[tuple[int, str]] = []
        self.gathered = False
        self.local_sdp: str | None = None
        self.remote_set = False
        self.pending: list[tuple[int, str]] = []
        self.members = 0
        self.offer_sent = False
        self.t_start: float | None = None
        self.opened = False
        self.pings_sent = 0
        self.ping_at = 0.0
        self.rtts: list[float] = []
        self.finished = False

    # -- plumbing --

    def later(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the main loop (from any thread)."""
        def call() -> bool:
            if not self.finished:
                try:
                    fn(*args)
                except Exception as exc:  # one failed case, never a traceback without a result
                    self.fail(f"{type(exc).__name__}: {exc}")
            return False
        GLib.idle_add(call)

    def relay(self, data: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send({"type": "relay", "data": data})

    def fail(self, error: str) -> None:
        if self.result["error"] is None:
            self.result["error"] = " ".join(str(error).split())
        self.finish(1)

    def finish(self, code: int) -> None:
        if self.finished:
            return
        self.finished = True
        self.code = code
        self.loop.quit()

    def run(self) -> int:
        try:
            self.setup()
        except Exception as exc:
            self.result["error"] = f"{type(exc).__name__}: {exc}"
            self.stop_pipeline()
            return 1
        GLib.timeout_add(max(1, int((self.deadline - time.monotonic()) * 1000)), self.on_deadline)
        try:
            self.ws = WebSocket(self.url, max(0.5, min(5.0, self.deadline - time.monotonic())))
        except (OSError, ValueError, ConnectionError) as exc:
            self.result["error"] = f"cannot reach the signaling server at {self.url}: {exc}"
            return 1
        self.ws.send({"type": "join", "room": self.room})
        threading.Thread(target=self.read_signaling, daemon=True).start()
        self.loop.run()
        if self.opened and self.result["selected"] is None:
            self.read_selected()
        if self.ws is not None:
            try:
                self.ws.send({"type": "leave"})
            except OSError:
                pass
            self.ws.close()
        self.stop_pipeline()
        return self.code

    def stop_pipeline(self) -> None:
        if self.pipe is None:
            return
        done = threading.Event()
        pipe = self.pipe

        def stop() -> None:
            pipe.set_state(Gst.State.NULL)
            done.set()

        threading.Thread(target=stop, daemon=True).start()
        if not done.wait(2.0):
            log("the pipeline did not stop within 2 s")

    def on_deadline(self) -> bool:
        if self.opened and self.role == "caller":
            what = "the echo after the idle period" if self.idling else f"the echo ({len(self.rtts)} of {PINGS} echoes)"
            self.fail(f"connected, but {what} did not complete within the deadline")
        elif self.opened:
            self.fail("connected, but no 'done' from the caller within the deadline")
        else:
            state = self.webrtc.get_property("ice-connection-state").value_nick if self.webrtc else "none"
            self.fail(f"not connected within the deadline (ICE state {state})")
        return False

    def read_signaling(self) -> None:
        assert self.ws is not None
        try:
            while True:
                msg = self.ws.recv()
                if msg is not None:
                    self.later(self.on_signal, msg)
        except (OSError, ConnectionError) as exc:
            self.later(self.on_signaling_closed, str(exc))

    def on_signaling_closed(self, why: str) -> None:
        if self.role == "caller" and len(self.rtts) == PINGS:
            self.finish(0)  # the echo is complete; a missing bye does not fail the case
        else:
            self.fail(f"signaling connection closed: {why}")

    # -- webrtcbin --

    def setup(self) -> None:
        self.pipe = Gst.Pipeline.new("peer")
        webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        if webrtc is None:
            raise RuntimeError("no webrtcbin element: apt-get install gstreamer1.0-plugins-bad gstreamer1.0-nice")
        self.webrtc = webrtc
        webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        if self.ice.get("iceTransportPolicy") == "relay":
            webrtc.set_property("ice-transport-policy", GstWebRTC.WebRTCICETransportPolicy.RELAY)
        # Held until exit: PyGObject's reference to webrtcbin's (floating) ICE object is the
        # one that keeps it alive once Python has touched it.
        self.ice_agent = agent = webrtc.get_property("ice-agent")
        self.nice = nice = agent.get_property("agent") if agent is not None and agent.find_property("agent") else None
        if nice is not None and nice.find_property("upnp"):
            nice.set_property("upnp", False)  # nothing answers UPnP in the lab; it only delays
        if nice is not None and Nice is not None:
            nice.connect("new-selected-pair-full", self.on_selected_pair)
        stun = None
        for server in self.ice.get("iceServers") or []:
            urls = server.get("urls") or []
            for url in [urls] if isinstance(urls, str) else urls:
                uri = gst_uri(str(url), str(server.get("username", "")), str(server.get("credential", "")))
                if uri is None:
                    log(f"ignoring ICE server URL {url!r}")
                elif uri.startswith("stun://"):
                    if stun is None:  # webrtcbin takes one STUN server
                        stun = uri
                        webrtc.set_property("stun-server", uri)
                elif not webrtc.emit("add-turn-server", uri):
                    log(f"webrtcbin refused TURN server {url!r}")
        webrtc.connect("on-ice-candidate", lambda _w, mline, cand: self.later(self.on_local_candidate, mline, cand))
        webrtc.connect("notify::ice-gathering-state", lambda w, _p: self.later(self.on_gathering_state))
        webrtc.connect("notify::ice-connection-state",
                       lambda w, _p: log(f"ICE {w.get_property('ice-connection-state').value_nick}"))
        webrtc.connect("on-data-channel", self.on_remote_channel)
        self.pipe.add(webrtc)
        if self.pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise RuntimeError("webrtcbin did not start")
        log(f"{self.result['stack']} as {self.role} in room {self.room}, candidate types "
            f"{','.join(sorted(self.types))}, policy {self.ice.get('iceTransportPolicy', 'all')}")
        self.maybe_offer()

    def on_local_candidate(self, mline: int, candidate: str) -> None:
        self.local_candidates.append((mline, candidate))

    def on_gathering_state(self) -> None:
        if self.webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.send_after_settling()

    def send_after_settling(self) -> None:
        # webrtcbin announces "complete" before its queued on-ice-candidate signals are out.
        def settled() -> bool:
            self.later(self.send_description)
            return False

        GLib.timeout_add(SETTLE_MS, settled)

    def start_gathering_timer(self) -> None:
        limit = min(5.0, max(0.5, (self.deadline - time.monotonic()) / 2))

        def give_up() -> bool:
            if not self.gathered and self.local_sdp is not None:
                log(f"gathering not complete after {limit:.1f} s; sending what there is")
                self.send_description()
            return False

        GLib.timeout_add(int(limit * 1000), give_up)

    def send_description(self) -> None:
        if self.gathered or self.local_sdp is None:
            return
        self.gathered = True
        lines = [ln for ln in self.local_sdp.replace("\r\n", "\n").split("\n") if ln and not ln.startswith("a=candidate:")
                 and ln != "a=end-of-candidates"]
        kept = []
        current = self.webrtc.get_property("local-description")
        in_sdp = [] if current is None else [
            (0, ln) for ln in current.sdp.as_text().replace("\r\n", "\n").split("\n") if ln.startswith("a=candidate:")]
        for _mline, cand in self.local_candidates + in_sdp:
            attr = cand[2:] if cand.startswith("a=") else cand
            if candidate_type(attr) in self.types and attr not in kept:
                kept.append(attr)
        # Every candidate goes into the one bundled m-section (the SDP has one, for data).
        out = lines + [f"a={c}" for c in kept] + ["a=end-of-candidates"]
        self.result["signaled"] = kept
        log(f"signaling {len(kept)} candidate(s): {' | '.join(kept)}")
        kind = "offer" if self.role == "caller" else "answer"
        self.relay({"type": kind, "sdp": "\r\n".join(out) + "\r\n"})

    def set_local(self, kind: str, promise: Gst.Promise) -> None:
        reply = promise.get_reply()
        desc = reply.get_value(kind) if reply is not None else None
        if desc is None:
            raise RuntimeError(f"webrtcbin made no {kind}: {reply.to_string() if reply else 'no reply'}")
        self.local_sdp = desc.sdp.as_text()
        self.webrtc.emit("set-local-description", desc, Gst.Promise.new())
        self.start_gathering_timer()
        if self.webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.send_after_settling()

    def set_remote(self, kind: str, sdp: str) -> None:
        res, msg = GstSdp.SDPMessage.new_from_text(sdp)
        if res != GstSdp.SDPResult.OK:
            raise ValueError(f"the {kind} is not SDP that GStreamer can parse")
        sdp_type = GstWebRTC.WebRTCSDPType.OFFER if kind == "offer" else GstWebRTC.WebRTCSDPType.ANSWER
        desc = GstWebRTC.WebRTCSessionDescription.new(sdp_type, msg)
        promise = Gst.Promise.new_with_change_func(lambda p: self.later(self.remote_set_done, kind, p))
        self.webrtc.emit("set-remote-description", desc, promise)

    def remote_set_done(self, kind: str, promise: Gst.Promise) -> None:
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            raise RuntimeError(f"set-remote-description({kind}): {reply.get_value('error')}")
        self.remote_set = True
        for mline, cand in self.pending:
            self.webrtc.emit("add-ice-candidate", mline, cand)
        self.pending = []
        if kind == "offer":
            self.webrtc.emit("create-answer", None,
                             Gst.Promise.new_with_change_func(lambda p: self.later(self.set_local, "answer", p)))

    # -- the data channel --

    def watch_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.connect("on-open", lambda _c: self.later(self.on_open))
        if self.role == "callee":
            # Echo at once, on webrtcbin's thread: a message may follow the channel's arrival
            # before the main loop would have connected a handler.
            channel.connect("on-message-string", lambda c, text: c.emit("send-string", text))
        else:
            channel.connect("on-message-string", lambda c, text: self.later(self.on_message, text))
        channel.connect("on-error", lambda _c, err: self.later(self.fail, f"data channel error: {err}"))
        if channel.get_property("ready-state") == GstWebRTC.WebRTCDataChannelState.OPEN:
            self.later(self.on_open)

    def on_remote_channel(self, _webrtc: Any, channel: Any) -> None:
        """webrtcbin's thread: the caller's channel has arrived."""
        if self.role == "callee" and self.channel is None:
            self.watch_channel(channel)
            self.later(self.on_open)  # it arrives open (aiortc and pion count this as connected)

    def on_open(self) -> None:
        if self.opened:
            return
        self.opened = True
        if self.t_start is not None:
            self.result["t_connect_ms"] = round((time.monotonic() - self.t_start) * 1000, 2)
        self.read_selected()
        if self.role == "caller":
            self.send_ping()

    def send_ping(self) -> None:
        self.pings_sent += 1
        self.ping_at = time.monotonic()
        self.channel.emit("send-string", f"ping {self.pings_sent}")

    def on_message(self, text: str) -> None:
        if text == AFTER_IDLE and self.idling:
            self.idling = False
            self.finish_echo()
            return
        if text != f"ping {self.pings_sent}":
            return
        self.rtts.append(round((time.monotonic() - self.ping_at) * 1000, 3))
        if self.pings_sent < PINGS:
            self.send_ping()
            return
        self.result["rtt_ms"] = round(statistics.median(self.rtts), 3)
        self.result["rtts_ms"] = self.rtts
        if self.idle_s > 0:
            # longevity: nothing on the channel (only libnice's keepalives), then one more echo
            self.idling = True
            GLib.timeout_add(int(self.idle_s * 1000), self.send_after_idle)
            return
        self.finish_echo()

    def send_after_idle(self) -> bool:
        self.channel.emit("send-string", AFTER_IDLE)
        return False

    def finish_echo(self) -> None:
        self.result["connected"] = True
        self.relay({"type": "done"})
        GLib.timeout_add(int(min(BYE_WAIT_S, max(0.0, self.deadline - time.monotonic())) * 1000), self.no_bye)

    def no_bye(self) -> bool:
        log("no bye from the callee")
        self.finish(0)
        return False

    # -- signaling --

    def maybe_offer(self) -> None:
        if self.role != "caller" or self.offer_sent or self.members < 2 or self.webrtc is None:
            return
        self.offer_sent = True
        self.t_start = time.monotonic()
        channel = self.webrtc.emit("create-data-channel", "echo", Gst.Structure.new_from_string("config,ordered=true"))
        if channel is None:
            raise RuntimeError("webrtcbin made no data channel")
        self.watch_channel(channel)
        self.webrtc.emit("create-offer", None,
                         Gst.Promise.new_with_change_func(lambda p: self.later(self.set_local, "offer", p)))

    def on_signal(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "error":
            self.fail(f"signaling server: {msg.get('error')}")
        elif kind == "joined":
            self.members = int(msg.get("members") or 0)
            self.maybe_offer()
        elif kind == "peer-joined":
            self.members = 2
            self.maybe_offer()
        elif kind == "peer-left":
            if self.role == "caller" and len(self.rtts) == PINGS:
                self.finish(0)
            else:
                self.fail("the other peer left the room")
        elif kind == "relay" and isinstance(msg.get("data"), dict):
            self.on_peer(msg["data"])

    def on_peer(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "offer" and self.role == "callee" and self.t_start is None:
            self.t_start = time.monotonic()
            self.set_remote("offer", str(data.get("sdp", "")))
        elif kind == "answer" and self.role == "caller" and not self.remote_set:
            self.set_remote("answer", str(data.get("sdp", "")))
        elif kind == "candidate":
            cand = data.get("candidate")
            if not isinstance(cand, dict) or not cand.get("candidate"):
                return  # the end of the other side's gathering
            mline = cand.get("sdpMLineIndex")
            mline = mline if isinstance(mline, int) and not isinstance(mline, bool) else 0
            text = str(cand["candidate"])
            text = text if text.startswith("candidate:") else text.removeprefix("a=")
            if self.remote_set:
                self.webrtc.emit("add-ice-candidate", mline, text)
            else:
                self.pending.append((mline, text))
        elif kind == "done" and self.role == "callee":
            if not self.opened:
                self.fail("'done' from the caller before the channel opened here")
                return
            self.result["connected"] = True
            self.relay({"type": "bye"})
            self.finish(0)
        elif kind == "bye" and self.role == "caller" and self.result["connected"]:
            self.finish(0)

    # -- what libnice selected --

    def on_selected_pair(self, _agent: Any, _stream: int, component: int, local: Any, remote: Any) -> None:
        """libnice's thread: copy the pair now (the candidates are libnice's)."""
        try:
            pair = {"local": candidate_from_nice(local), "remote": candidate_from_nice(remote)}
        except Exception as exc:
            log(f"new-selected-pair-full: {type(exc).__name__}: {exc}")
            return
        log(f"libnice selected {pair}")
        self.agent_pair = pair

    def read_selected(self) -> None:
        try:
            selected = self.selected_from_stats()
        except Exception as exc:
            log(f"get-stats: {type(exc).__name__}: {exc}")
            selected = None
        if selected is None:
            selected = self.selected_from_agent()
        if selected is not None:
            self.result["selected"] = selected
            local = selected["local"]
            if local.get("type") == "relay" and not local.get("relay_protocol"):
                gathered = [c for _m, c in self.local_candidates]
                local["relay_protocol"] = relay_protocol(local, gathered, stream_relay_protocol(self.ice))
            if local.get("type") == "relay":
                self.result["relay_protocol"] = local.get("relay_protocol")

    def selected_from_stats(self) -> dict[str, Any] | None:
        done = threading.Event()
        box: dict[str, Any] = {}

        def got(promise: Gst.Promise) -> None:
            box["reply"] = promise.get_reply()
            done.set()

        self.webrtc.emit("get-stats", None, Gst.Promise.new_with_change_func(got))
        if not done.wait(2.0) or box.get("reply") is None:
            return None
        stats: dict[str, dict[str, Any]] = {}

        def each(field_id: int, value: Any) -> bool:
            if isinstance(value, Gst.Structure):
                stats[GLib.quark_to_string(field_id)] = structure_dict(value)
            return True

        box["reply"].foreach(each)
        pairs = [s for s in stats.values() if s.get("type") == "candidate-pair"]
        for transport in (s for s in stats.values() if s.get("type") == "transport"):
            chosen = stats.get(str(transport.get("selected-candidate-pair-id", "")))
            if chosen:
                pairs.insert(0, chosen)
        for pair in pairs:
            local = stats.get(str(pair.get("local-candidate-id", "")))
            remote = stats.get(str(pair.get("remote-candidate-id", "")))
            if local and remote:
                return {"local": candidate_from_stats(local), "remote": candidate_from_stats(remote)}
        return None

    def selected_from_agent(self) -> dict[str, Any] | None:
        """The pair libnice's agent last announced (``new-selected-pair-full``): webrtcbin 1.22
        has no ICE stats for a data-only session, and GObject introspection cannot call
        ``nice_agent_get_selected_pair`` (its candidates are out-parameters without annotations)."""
        return self.agent_pair


def structure_dict(s: Gst.Structure) -> dict[str, Any]:
    out = {"type": None}
    for i in range(s.n_fields()):
        name = s.nth_field_name(i)
        value = s.get_value(name)
        out[name] = value.value_nick if hasattr(value, "value_nick") else value
    return out


def candidate_from_stats(s: dict[str, Any]) -> dict[str, Any]:
    out = {
        "type": s.get("candidate-type"),
        "address": s.get("address") or s.get("ip"),
        "port": s.get("port"),
        "protocol": (s.get("protocol") or "").lower() or None,
    }
    if s.get("relay-protocol"):
        out["relay_protocol"] = str(s["relay-protocol"]).lower()
    return out


NICE_TYPES = {0: "host", 1: "srflx", 2: "prflx", 3: "relay"}
NICE_TRANSPORTS = {0: "udp", 1: "tcp", 2: "tcp", 3: "tcp"}
# libnice's type preferences (agent/candidate-priv.h): a relay over UDP 30, over TCP or TLS 20.
RELAYED_UDP_PREF = 30


def candidate_from_nice(c: Any) -> dict[str, Any]:
    """A libnice candidate as the contract's shape."""
    return {"type": NICE_TYPES.get(int(c.type)), "address": c.addr.dup_string(), "port": c.addr.get_port(),
            "protocol": NICE_TRANSPORTS.get(int(c.transport))}


def relay_protocol(local: dict[str, Any], gathered: list[str], stream_relay: str) -> str | None:
    """How our relay candidate ``local`` reaches its TURN server. GObject introspection does
    not reach the candidate's TURN server, so this reads the type preference of the candidate
    as gathered (libnice: 30 over UDP, 20 over TCP or TLS); ``stream_relay`` names the latter
    from the TURN URLs given."""
    for line in gathered:
        f = line.split()
        if len(f) > 5 and f[4] == local.get("address") and f[5] == str(local.get("port")) and f[3].isdigit():
            return "udp" if int(f[3]) >> 24 == RELAYED_UDP_PREF else stream_relay
    return None


def stream_relay_protocol(ice: dict[str, Any]) -> str:
    urls = [u for s in ice.get("iceServers") or [] for u in ([s.get("urls")] if isinstance(s.get("urls"), str) else s.get("urls") or [])]
    tcp = any(str(u).startswith("turn:") and "transport=tcp" in str(u) for u in urls)
    tls = any(str(u).startswith("turns:") for u in urls)
    return "tls" if tls and not tcp else "tcp"


ELEMENTS = ("webrtcbin", "nicesrc", "nicesink", "dtlsenc", "dtlsdec", "sctpenc", "sctpdec")
PACKAGES = "gstreamer1.0-nice gstreamer1.0-plugins-bad gstreamer1.0-plugins-base gstreamer1.0-plugins-good"


def check() -> int:
    """``--check``: can this machine run the peer? One line on stdout or stderr."""
    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        print(f"webrtcbin peer: GStreamer lacks {', '.join(missing)}: apt-get install {PACKAGES}", file=sys.stderr)
        return 2
    print(f"GStreamer webrtcbin {Gst.version_string().split()[-1]}")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        return check()
    env = os.environ
    if env.get("NATKIT_PEER_CONTRACT") != str(CONTRACT):
        print(f"webrtcbin peer: NATKIT_PEER_CONTRACT is {env.get('NATKIT_PEER_CONTRACT')!r}; "
              f"this peer implements version {CONTRACT}", file=sys.stderr)
        return 2
    missing = [v for v in ("NATKIT_ROLE", "NATKIT_SIGNALING_URL", "NATKIT_ROOM", "NATKIT_ICE_CONFIG",
                           "NATKIT_CANDIDATE_TYPES", "NATKIT_DEADLINE_S") if not env.get(v)]
    if missing:
        print(f"webrtcbin peer: {', '.join(missing)} not set (see docs/lab-peers.md)", file=sys.stderr)
        return 2
    if env["NATKIT_ROLE"] not in ("caller", "callee"):
        print(f"webrtcbin peer: NATKIT_ROLE is {env['NATKIT_ROLE']!r}", file=sys.stderr)
        return 2
    try:
        float(env["NATKIT_DEADLINE_S"])
        json.loads(env["NATKIT_ICE_CONFIG"])
    except ValueError as exc:
        print(f"webrtcbin peer: bad NATKIT_DEADLINE_S or NATKIT_ICE_CONFIG: {exc}", file=sys.stderr)
        return 2
    Gst.init(None)
    peer = Peer(dict(env))
    code = peer.run()
    if peer.result["error"]:
        log(peer.result["error"])
    sys.stdout.write(json.dumps(peer.result, default=str) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    os._exit(main())  # no GLib/GStreamer teardown: the pipeline is stopped, the result written
