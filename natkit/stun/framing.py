"""Split a TCP/TLS byte stream into STUN messages and ChannelData frames (RFC 8489 §6.2.2,
RFC 8656 §12.5: over streams ChannelData is padded to a multiple of four bytes)."""

from __future__ import annotations

import struct

from natkit.stun.channeldata import CHANNEL_MAX, CHANNEL_MIN
from natkit.stun.constants import HEADER_LENGTH
from natkit.stun.errors import StunParseError

_HEAD = struct.Struct("!HH")
MAX_FRAME = 0xFFFF + HEADER_LENGTH


def frame_length(buf: bytes | bytearray | memoryview, channel_max: int = CHANNEL_MAX) -> int | None:
    """Bytes the next frame occupies in the stream (ChannelData padding included), or None
    until four bytes are there. Raises StunParseError for a start that is neither a STUN
    message nor ChannelData on a channel number up to ``channel_max``."""
    if len(buf) < 4:
        return None
    head: int
    length: int
    head, length = _HEAD.unpack_from(buf)
    if head < 0x4000:
        if length % 4:
            raise StunParseError(f"stream: STUN length {length} is not a multiple of 4")
        return HEADER_LENGTH + length
    if CHANNEL_MIN <= head <= channel_max:
        return 4 + length + (-length % 4)
    raise StunParseError(f"stream: 0x{head:04x} starts neither STUN nor ChannelData")


class StreamFramer:
    """Feed received chunks; get back whole frames (STUN messages, and ChannelData with its
    stream padding removed from the end is the caller's: frames are returned as sent)."""

    __slots__ = ("_buf", "channel_max", "max_buffer")

    def __init__(self, max_buffer: int = 4 * MAX_FRAME, *, channel_max: int = CHANNEL_MAX) -> None:
        self._buf = bytearray()
        self.max_buffer = max_buffer
        self.channel_max = channel_max

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        frames: list[bytes] = []
        buf = self._buf
        pos = 0
        channel_max = self.channel_max
        while True:
            need = frame_length(memoryview(buf)[pos:], channel_max)
            if need is None or len(buf) - pos < need:
                break
            frames.append(bytes(buf[pos : pos + need]))
            pos += need
        if pos:
            del buf[:pos]
        if len(buf) > self.max_buffer:
            raise StunParseError("stream: more buffered than any frame can be")
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)

    def take_pending(self) -> bytes:
        """The bytes buffered past the last whole frame, which the framer forgets (whoever
        reads the stream from here on needs them first)."""
        out = bytes(self._buf)
        self._buf.clear()
        return out
