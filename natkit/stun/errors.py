"""The codec's one error type."""

from __future__ import annotations


class StunParseError(ValueError):
    """Malformed STUN/ChannelData input. ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
