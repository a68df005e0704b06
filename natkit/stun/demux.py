"""Tell STUN, ChannelData, DTLS, RTP and the rest apart by the first byte (RFC 7983, 9443)."""

from __future__ import annotations

from enum import Enum


class PacketKind(Enum):
    STUN = "stun"
    ZRTP = "zrtp"
    DTLS = "dtls"
    CHANNEL_DATA = "channel-data"
    RTP = "rtp"  # RTP and RTCP
    QUIC = "quic"
    UNKNOWN = "unknown"


def classify_packet(first_byte: int) -> PacketKind:
    if first_byte <= 3:
        return PacketKind.STUN
    if 16 <= first_byte <= 19:
        return PacketKind.ZRTP
    if 20 <= first_byte <= 63:
        return PacketKind.DTLS
    if 64 <= first_byte <= 79:
        return PacketKind.CHANNEL_DATA
    if 128 <= first_byte <= 191:
        return PacketKind.RTP
    if first_byte >= 192:
        return PacketKind.QUIC
    return PacketKind.UNKNOWN
