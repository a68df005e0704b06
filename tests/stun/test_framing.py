from __future__ import annotations

import pytest

from natkit.stun import (
    Attr,
    Message,
    Method,
    StreamFramer,
    StunParseError,
    decode,
    encode_channel_data,
)


def test_several_messages_per_segment_and_partial() -> None:
    a = Message(Method.BINDING).add(Attr.SOFTWARE, "a").encode()
    b = encode_channel_data(0x4001, b"xyz", pad=True)
    c = Message(Method.BINDING).encode()
    stream = a + b + c
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out += framer.feed(stream[i : i + 7])
    assert out == [a, b, c]
    assert decode(out[0]).get(Attr.SOFTWARE) == "a"
    assert framer.pending == 0


def test_garbage_first_byte() -> None:
    with pytest.raises(StunParseError):
        StreamFramer().feed(b"\x80\x00\x00\x00")
