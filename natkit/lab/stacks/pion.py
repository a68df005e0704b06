"""The pion stack: pion/webrtc v3 (Go) as a lab peer.

The peer is ``programs/pion_peer.go``, a contract program (docs/lab-peers.md) built once by
``natkit lab build-stacks`` (:func:`natkit.lab.stacks.build.build_pion`) into
``<venv>/libexec/natkit/natkit-pion-peer``, and run per side by the command adapter. It reports
the pair pion's ICE transport selected (``GetSelectedCandidatePair``) and, for a relay
candidate, the protocol to the TURN server from pion's stats (``ICECandidateStats``).
"""

from __future__ import annotations

from natkit.lab.stacks.build import PION_PROGRAM, find_program
from natkit.lab.stacks.capabilities import PION
from natkit.lab.stacks.command import CommandPeer

__all__ = ["PionPeer"]


class PionPeer(CommandPeer):
    """pion/webrtc v3 as caller and callee (one Go process per side)."""

    def __init__(self) -> None:
        super().__init__("pion", [PION_PROGRAM], start_s=0.3, capabilities=PION)
        self._found = False

    def resolve(self) -> None:
        if not self._found:
            self.argv = [str(find_program(PION_PROGRAM))]
            self._found = True

    def check(self) -> None:
        """PrerequisiteError with the build command when the peer program is not built."""
        self._found = False
        self.resolve()
