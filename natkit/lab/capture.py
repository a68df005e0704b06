"""The packet capture on the lab's internet segment, from which the evidence is read.

``dumpcap`` captures every UDP/TCP frame on the internet bridge for the whole run. dumpcap
drops what libpcap has not handed over yet when it is stopped, and starts capturing some time
after it starts, so marker datagrams sent across the bridge bracket the run: once a marker is in
the file, everything that crossed the bridge before it is too (:meth:`Capture.sync`).
:mod:`natkit.lab.evidence` reads the file afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from natkit.errors import PrerequisiteError
from natkit.lab.evidence import CAPTURE_MARKER
from natkit.lab.netns import NetnsLab, in_netns

__all__ = ["MARKER_PORT", "SYNC_TIMEOUT", "Capture", "CaptureMarker", "check_dumpcap", "wait_capture"]

MARKER_PORT = 9  # discard: nobody answers; the marker only has to cross the bridge
SYNC_TIMEOUT = 5.0  # s for a marker to reach the capture file (dumpcap writes it within ~0.5 s)


def check_dumpcap() -> None:
    if shutil.which("dumpcap") is None:
        raise PrerequisiteError("packet evidence needs dumpcap: apt-get install tshark (or run with --no-capture)")


def die_with_parent() -> None:
    """In a child before exec (or a forked agent): SIGKILL when natkit dies, even by kill -9."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class CaptureMarker:
    """Marker datagrams sent across the internet bridge: once one is in the capture file,
    everything that crossed the bridge before it is too (libpcap hands packets over in order)."""

    def __init__(self, lab: NetnsLab | None, ns: str, dest: tuple[str, int]) -> None:
        # ``ns``: a namespace of ``lab``, or (lab None) a network namespace's path, such as a
        # container's /proc/PID/ns/net.
        self._sock = lab.socket(ns) if lab is not None else in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self._dest = dest
        self._offset = 0
        self._tail = b""

    def __enter__(self) -> CaptureMarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def sync(self, pcap: Path, proc: subprocess.Popen[Any], timeout: float = SYNC_TIMEOUT) -> bool:
        """Send a fresh marker (again every 0.1 s: the link may lose it) until the capture file
        holds it; False when ``timeout`` passes or dumpcap exits first."""
        token = CAPTURE_MARKER + secrets.token_hex(8).encode()
        end = time.monotonic() + timeout
        resend = 0.0
        while (now := time.monotonic()) < end:
            if now >= resend:
                with contextlib.suppress(OSError):
                    self._sock.sendto(token, self._dest)
                resend = now + 0.1
            if self._written(pcap, token):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def _written(self, pcap: Path, token: bytes) -> bool:
        """Whether ``token`` is in what the file gained since the last look (pcapng keeps each
        packet's bytes whole, so a plain search finds it)."""
        try:
            with open(pcap, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return False
        self._offset += len(chunk)
        buf = self._tail + chunk
        self._tail = buf[-2 * len(token) :]
        return token in buf


def wait_capture(pcap: Path, proc: subprocess.Popen[Any]) -> None:
    """Until dumpcap has written the file's header (PrerequisiteError if it exits instead)."""
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise PrerequisiteError(
                f"dumpcap could not capture on the lab's bridge: {err or 'exit ' + str(proc.returncode)}; "
                "check that dumpcap may capture as root (or run with --no-capture)"
            )
        if pcap.exists() and pcap.stat().st_size >= 24:
            return
        time.sleep(0.02)


class Capture:
    """dumpcap on ``iface`` in namespace ``ns`` into ``path``, bracketed by markers sent from
    namespace ``marker_ns`` to ``marker_to`` (an address on the far side of the bridge).

    ``lab`` None: ``iface`` is an interface of the host itself (the Compose engine's internet
    bridge) and ``marker_ns`` a network namespace's path (a container's /proc/PID/ns/net)."""

    def __init__(self, lab: NetnsLab | None, ns: str, iface: str, path: Path, marker_ns: str, marker_to: str) -> None:
        self.lab, self.ns, self.iface, self.path = lab, ns, iface, path
        self._marker_ns, self._marker_to = marker_ns, marker_to
        self._proc: subprocess.Popen[bytes] | None = None
        self._marker: CaptureMarker | None = None

    def start(self) -> None:
        """Start dumpcap; return once a marker sent now is in the file (no case starts before)."""
        argv = ["dumpcap", "-q", "-P", "-i", self.iface, "-f", "udp or tcp", "-w", str(self.path)]
        kw: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "preexec_fn": die_with_parent}
        self._proc = self.lab.popen(self.ns, argv, **kw) if self.lab is not None else subprocess.Popen(argv, **kw)
        wait_capture(self.path, self._proc)
        self._marker = CaptureMarker(self.lab, self._marker_ns, (self._marker_to, MARKER_PORT))
        if not self._marker.sync(self.path, self._proc):
            raise PrerequisiteError(
                f"dumpcap did not capture on the lab's bridge within {SYNC_TIMEOUT:g} s; "
                "the host may be overloaded (or run with --no-capture)"
            )

    def finish(self) -> list[str]:
        """Stop dumpcap once a marker sent now is in the file; the problems, if any."""
        errors: list[str] = []
        if self._proc is None:
            return errors
        if self._marker is not None:
            if not self._marker.sync(self.path, self._proc):
                errors.append(f"the capture did not catch up within {SYNC_TIMEOUT:g} s: evidence may miss packets")
            self._marker.close()
            self._marker = None
        self._proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        return errors

    def keep(self, dest: str | os.PathLike[str]) -> None:
        """Copy the capture to ``dest`` atomically (a reader never sees half a file)."""
        from natkit.lab.output import copy_atomic

        copy_atomic(self.path, dest)

    def close(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        if self.lab is None and self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # a NetnsLab kills its own processes; on the host, we do
            self._proc.wait(5)
