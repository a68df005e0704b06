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
