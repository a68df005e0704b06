"""TURN ChannelData framing (RFC 8656 §12.4)."""

from __future__ import annotations

import struct

from natkit.stun.errors import StunParseError

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF  # RFC 8656 narrowed the range of RFC 5766 (0x7FFE)
_HEAD = struct.Struct("!HH")


def is_valid_channel(number: int) -> bool:
    return CHANNEL_MIN <= number <= CHANNEL_MAX


def encode_channel_data(channel: int, payload: bytes, pad: bool = False) -> bytes:
    """ChannelData message; ``pad`` to a multiple of 4 bytes, required over TCP and TLS."""
    if not is_valid_channel(channel):
        raise ValueError(f"channel number 0x{channel:04x} outside 0x4000-0x4FFF")
    if len(payload) > 0xFFFF:
        raise ValueError("ChannelData payload longer than 65535 bytes")
    out = _HEAD.pack(channel, len(payload)) + payload
    if pad and len(payload) % 4:
        out += b"\x00" * (4 - len(payload) % 4)
    return out


def decode_channel_data(data: bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """(channel, payload). Up to three bytes of padding after the payload are accepted."""
    if len(data) < 4:
        raise StunParseError("ChannelData shorter than its 4-byte header")
    channel, length = _HEAD.unpack_from(data)
    if not is_valid_channel(channel):
        raise StunParseError(f"channel number 0x{channel:04x} outside 0x4000-0x4FFF")
    extra = len(data) - 4 - length
    if extra < 0:
        raise StunParseError(f"ChannelData length {length} overruns {len(data) - 4} bytes")
    if extra > (-length % 4):
        raise StunParseError(f"ChannelData has {extra} bytes beyond its padding")
    return channel, bytes(data[4 : 4 + length])
