"""Sans-IO STUN (RFC 8489) with the TURN (RFC 8656), RFC 5780 and ICE attributes.

Bytes in, messages out and back; no sockets, no clock. See :class:`Message` and
:func:`decode`; everything malformed raises :class:`StunParseError` and nothing else.
"""

from natkit.stun.attributes import (
    ALGORITHM_MD5,
    ALGORITHM_SHA256,
    Address,
    AddressErrorCode,
    ErrorCode,
    Icmp,
    PasswordAlgorithm,
)
from natkit.stun.channeldata import (
    CHANNEL_MAX,
    CHANNEL_MAX_RFC5766,
    CHANNEL_MIN,
    decode_channel_data,
    encode_channel_data,
    is_valid_channel,
)
from natkit.stun.constants import (
    CHANGE_IP,
    CHANGE_PORT,
    ERROR_REASONS,
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAGIC_COOKIE,
    TRANSPORT_TCP,
    TRANSPORT_UDP,
    Attr,
    Class,
    Method,
)
from natkit.stun.demux import PacketKind, classify_packet
from natkit.stun.errors import StunParseError
from natkit.stun.framing import StreamFramer, frame_length
from natkit.stun.integrity import (
    long_term_key,
    saslprep,
    short_term_key,
    userhash,
    verify_integrity,
)
from natkit.stun.message import (
    Message,
    decode,
    is_stun,
    message_type,
    random_transaction_id,
    split_type,
)
from natkit.stun.nonce import NONCE_COOKIE, make_nonce, parse_nonce

__all__ = [
    "ALGORITHM_MD5",
    "ALGORITHM_SHA256",
    "CHANGE_IP",
    "CHANGE_PORT",
    "CHANNEL_MAX",
    "CHANNEL_MAX_RFC5766",
    "CHANNEL_MIN",
    "ERROR_REASONS",
    "FAMILY_IPV4",
    "FAMILY_IPV6",
    "MAGIC_COOKIE",
    "NONCE_COOKIE",
    "TRANSPORT_TCP",
    "TRANSPORT_UDP",
    "Address",
    "AddressErrorCode",
    "Attr",
    "Class",
    "ErrorCode",
    "Icmp",
    "Message",
    "Method",
    "PacketKind",
    "PasswordAlgorithm",
    "StreamFramer",
    "StunParseError",
    "classify_packet",
    "decode",
    "decode_channel_data",
    "encode_channel_data",
    "frame_length",
    "is_stun",
    "is_valid_channel",
    "long_term_key",
    "make_nonce",
    "message_type",
    "parse_nonce",
    "random_transaction_id",
    "saslprep",
    "short_term_key",
    "split_type",
    "userhash",
    "verify_integrity",
]
