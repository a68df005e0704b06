"""TURN ChannelData framing (RFC 8656 §12.4) and the channel number range.

The range is one parameter, ``channel_max``, taken by every function here and by
:class:`natkit.stun.StreamFramer`: RFC 8656 narrowed RFC 5766's 0x4000-0x7FFE to
0x4000-0x4FFF (the rest of the first byte belongs to DTLS-SRTP demultiplexing, RFC 7983). The
codec defaults to RFC 8656; a relay that serves RFC 5766 clients (coturn's ``turnutils_uclient``
picks numbers up to 0x7FFE) passes :data:`CHANNEL_MAX_RFC5766` to the codec and the framer alike.
"""

from __future__ import annotations

import struct

from natkit.stun.errors import StunParseError

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF  # RFC 8656
CHANNEL_MAX_RFC5766 = 0x7FFE
_HEAD = struct.Struct("!HH")


def is_valid_channel(number: int, channel_max: int = CHANNEL_MAX) -> bool:
    return CHANNEL_MIN <= number <= channel_max


def encode_channel_data(
    channel: int, payload: bytes, pad: bool = False, *, channel_max: int = CHANNEL_MAX
) -> bytes:
    """ChannelData message; ``pad`` to a multiple of 4 bytes, required over TCP and TLS."""
    if not CHANNEL_MIN <= channel <= channel_max:
        raise ValueError(f"channel number 0x{channel:04x} outside 0x4000-0x{channel_max:04X}")
    n = len(payload)
    if n > 0xFFFF:
        raise ValueError("ChannelData payload longer than 65535 bytes")
    out = _HEAD.pack(channel, n) + payload
    if pad and n % 4:
        out += b"\x00" * (4 - n % 4)
    return out


def decode_channel_data(
    data: bytes | bytearray | memoryview, *, channel_max: int = CHANNEL_MAX
) -> tuple[int, bytes]:
    """(channel, payload). Up to three bytes of padding after the payload are accepted."""
    if len(data) < 4:
        raise StunParseError("ChannelData shorter than its 4-byte header")
    channel, length = _HEAD.unpack_from(data)
    if not CHANNEL_MIN <= channel <= channel_max:
        raise StunParseError(f"channel number 0x{channel:04x} outside 0x4000-0x{channel_max:04X}")
    extra = len(data) - 4 - length
    if extra < 0:
        raise StunParseError(f"ChannelData length {length} overruns {len(data) - 4} bytes")
    if extra > (-length % 4):
        raise StunParseError(f"ChannelData has {extra} bytes beyond its padding")
    return channel, bytes(data[4 : 4 + length])
