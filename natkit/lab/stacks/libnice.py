"""The libnice stack: GStreamer's ``webrtcbin`` (libnice as its ICE agent) as a lab peer.

The peer is ``programs/webrtcbin_peer.py``, a contract program (docs/lab-peers.md) run by
Debian's ``/usr/bin/python3`` (GStreamer's GObject bindings live there, not in natkit's
virtualenv), so it imports nothing of natkit. It reports the pair libnice selected, from
webrtcbin's get-stats or, failing that, from libnice's agent (``nice_agent_get_selected_pair``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from natkit.errors import PrerequisiteError
from natkit.lab.stacks.capabilities import LIBNICE
from natkit.lab.stacks.command import CommandPeer

__all__ = ["PACKAGES", "PROGRAM", "SYSTEM_PYTHON", "LibnicePeer"]

PROGRAM = Path(__file__).resolve().parent / "programs" / "webrtcbin_peer.py"
SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGES = (
    "python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 "
    "gstreamer1.0-nice gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
)


class LibnicePeer(CommandPeer):
    """libnice through webrtcbin as caller and callee (one GStreamer process per side)."""

    def __init__(self, python: str = SYSTEM_PYTHON) -> None:
        super().__init__("libnice", [python, str(PROGRAM)], start_s=1.0, capabilities=LIBNICE)
        self.version: str | None = None

    def check(self) -> None:
        """PrerequisiteError naming the Debian packages when webrtcbin cannot run here."""
        python = self.argv[0]
        if not os.access(python, os.X_OK):
            raise PrerequisiteError(f"the libnice stack runs under Debian's {python}: apt-get install python3 {PACKAGES}")
        try:
            proc = subprocess.run([python, str(PROGRAM), "--check"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PrerequisiteError(f"the libnice stack could not start {python}: {exc}") from None
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise PrerequisiteError(f"the libnice stack cannot run: {why} (apt-get install {PACKAGES})")
        self.version = proc.stdout.strip() or None
