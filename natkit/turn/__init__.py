"""Sans-IO TURN (RFC 8656): allocations, permissions, channels, quotas, peer policy, auth.

No sockets, no clock: :class:`TurnEngine` takes bytes, addresses and the time and returns
actions (replies, datagrams for peers, relay sockets to bind or close). The asyncio server
around it is :class:`natkit.server.turn.TurnServer`.
"""

from natkit.turn.allocation import Allocation, Channel, Relay
from natkit.turn.auth import (
    Credentials,
    FailureLimiter,
    NonceIssuer,
    rest_credentials,
    rest_password,
)
from natkit.turn.engine import (
    Action,
    BindRelays,
    CloseRelay,
    Reply,
    SendToPeer,
    Stats,
    TurnConfig,
    TurnEngine,
    channel_data,
)
from natkit.turn.policy import PeerAddressError, PeerPolicy, canonical_peer, is_special
from natkit.turn.ports import PortPool

__all__ = [
    "Action",
    "Allocation",
    "BindRelays",
    "Channel",
    "CloseRelay",
    "Credentials",
    "FailureLimiter",
    "NonceIssuer",
    "PeerAddressError",
    "PeerPolicy",
    "PortPool",
    "Relay",
    "Reply",
    "SendToPeer",
    "Stats",
    "TurnConfig",
    "TurnEngine",
    "canonical_peer",
    "channel_data",
    "is_special",
    "rest_credentials",
    "rest_password",
]
