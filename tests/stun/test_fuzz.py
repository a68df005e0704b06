"""Nothing but StunParseError ever escapes the parsers, whatever the input."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natkit.stun import (
    Attr,
    Message,
    Method,
    StreamFramer,
    StunParseError,
    decode,
    decode_channel_data,
    verify_integrity,
)
from tests.stun import vectors as v
from tests.stun.test_message import EVERY_ATTRIBUTE

VALID = [
    v.REQUEST,
    v.RESPONSE_V4,
    v.RESPONSE_V6,
    v.REQUEST_LONG_TERM,
    v.REQUEST_SHA256,
    Message(Method.ALLOCATE, attributes=list(EVERY_ATTRIBUTE)).encode(key=b"k", fingerprint=True),
]


def _parse_everything(data: bytes) -> None:
    for allow_legacy in (False, True):
        try:
            msg = decode(data, allow_legacy=allow_legacy)
        except StunParseError:
            pass
        else:
            verify_integrity(msg, b"k")
            msg.encode()  # whatever decodes re-encodes
    try:
        decode_channel_data(data)
    except StunParseError:
        pass
    try:
        StreamFramer().feed(data)
    except StunParseError:
        pass


settings.register_profile("ci", max_examples=3000, deadline=None)
FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _parse_everything(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_behind_a_valid_header(body: bytes) -> None:
    pad = body + b"\x00" * (-len(body) % 4)
    head = bytes.fromhex("0001") + len(pad).to_bytes(2, "big") + bytes.fromhex("2112a442")
    _parse_everything(head + bytes(12) + pad)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 600),
)
def test_mutations_of_valid_messages(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    _parse_everything(bytes(data[: max(cut, 1)]))
    _parse_everything(bytes(data))


@FUZZ
@given(st.sampled_from(VALID), st.integers(0, 200), st.binary(min_size=1, max_size=12))
def test_insertions(base: bytes, pos: int, junk: bytes) -> None:
    pos %= len(base)
    _parse_everything(base[:pos] + junk + base[pos:])


def test_attribute_types_are_stable() -> None:
    assert Attr.XOR_MAPPED_ADDRESS == 0x0020 and Attr.FINGERPRINT == 0x8028
