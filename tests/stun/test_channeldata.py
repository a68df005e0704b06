from __future__ import annotations

import pytest

from natkit.stun import StunParseError, decode_channel_data, encode_channel_data


def test_round_trip_with_and_without_padding() -> None:
    assert decode_channel_data(encode_channel_data(0x4000, b"abc")) == (0x4000, b"abc")
    padded = encode_channel_data(0x4FFF, b"abcde", pad=True)
    assert len(padded) == 12
    assert decode_channel_data(padded) == (0x4FFF, b"abcde")


@pytest.mark.parametrize(
    "wire",
    [b"\x40\x00\x00", b"\x50\x00\x00\x00", b"\x40\x00\x00\x05abc", b"\x40\x00\x00\x01abcdefgh"],
)
def test_malformed(wire: bytes) -> None:
    with pytest.raises(StunParseError):
        decode_channel_data(wire)


def test_encode_refuses_bad_channel() -> None:
    with pytest.raises(ValueError):
        encode_channel_data(0x3FFF, b"")


def test_the_channel_range_is_one_parameter() -> None:
    """RFC 8656's 0x4000-0x4FFF by default; RFC 5766's 0x7FFE for the codec and framer alike."""
    from natkit.stun import CHANNEL_MAX, CHANNEL_MAX_RFC5766, StreamFramer

    assert (CHANNEL_MAX, CHANNEL_MAX_RFC5766) == (0x4FFF, 0x7FFE)
    old = encode_channel_data(0x7FFE, b"ab", pad=True, channel_max=CHANNEL_MAX_RFC5766)
    assert decode_channel_data(old, channel_max=CHANNEL_MAX_RFC5766) == (0x7FFE, b"ab")
    with pytest.raises(StunParseError, match="0x4000-0x4FFF"):
        decode_channel_data(old)
    with pytest.raises(ValueError):
        encode_channel_data(0x5000, b"")
    with pytest.raises(ValueError):
        encode_channel_data(0x7FFF, b"", channel_max=CHANNEL_MAX_RFC5766)
    assert StreamFramer(channel_max=CHANNEL_MAX_RFC5766).feed(old + old[:3]) == [old]
    with pytest.raises(StunParseError):
        StreamFramer().feed(old)
