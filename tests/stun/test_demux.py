from __future__ import annotations

from natkit.stun import PacketKind, classify_packet


def test_rfc7983_ranges() -> None:
    assert classify_packet(0) is PacketKind.STUN
    assert classify_packet(3) is PacketKind.STUN
    assert classify_packet(17) is PacketKind.ZRTP
    assert classify_packet(22) is PacketKind.DTLS
    assert classify_packet(0x40) is PacketKind.CHANNEL_DATA
    assert classify_packet(0x4F) is PacketKind.CHANNEL_DATA
    assert classify_packet(0x80) is PacketKind.RTP
    assert classify_packet(0xC0) is PacketKind.QUIC
    assert classify_packet(8) is PacketKind.UNKNOWN
    assert classify_packet(100) is PacketKind.UNKNOWN
