"""Sans-IO TURN (RFC 8656): allocations, permissions, channels, quotas, peer policy, auth.

No sockets, no clock: :class:`TurnEngine` takes bytes, addresses and the time and returns
actions (:mod:`natkit.turn.actions`: replies, datagrams for peers and clients, relay sockets to
bind or close, forwarding entries a fast table may take over). Who may authenticate, which
peers are reachable and how many allocations may exist are objects passed in, in the style of
pion/turn's handlers: an :class:`Authenticator`, a :class:`PeerPolicy`, a :class:`Quota`. The
asyncio server around it is :class:`natkit.server.turn.TurnServer`.
"""

from natkit.turn.actions import (
    Action,
    BindRelays,
    ClientKey,
    CloseRelay,
    Offload,
    OffloadAllocation,
    OffloadChannel,
    OffloadPermission,
    OffloadWithdraw,
    Reply,
    SendToClient,
    SendToPeer,
)
from natkit.turn.allocation import Allocation, Channel, Relay
from natkit.turn.auth import (
    Authenticator,
    FailureLimiter,
    FirstOf,
    Grant,
    Identity,
    NoAuth,
    NonceIssuer,
    Refused,
    RestSecrets,
    StaticUsers,
    rest_credentials,
    rest_password,
)
from natkit.turn.engine import Stats, TurnConfig, TurnEngine
from natkit.turn.limits import ResponseLimiter, TokenBuckets
from natkit.turn.policy import (
    EXTRA_SPECIAL,
    DefaultPeerPolicy,
    OwnAddresses,
    PeerAddressError,
    PeerPolicy,
    canonical_peer,
    is_special,
)
from natkit.turn.ports import PortPool
from natkit.turn.quota import AllocationQuota, Quota

__all__ = [
    "EXTRA_SPECIAL",
    "Action",
    "Allocation",
    "AllocationQuota",
    "Authenticator",
    "BindRelays",
    "Channel",
    "ClientKey",
    "CloseRelay",
    "DefaultPeerPolicy",
    "FailureLimiter",
    "FirstOf",
    "Grant",
    "Identity",
    "NoAuth",
    "NonceIssuer",
    "Offload",
    "OffloadAllocation",
    "OffloadChannel",
    "OffloadPermission",
    "OffloadWithdraw",
    "OwnAddresses",
    "PeerAddressError",
    "PeerPolicy",
    "PortPool",
    "Quota",
    "Refused",
    "Relay",
    "Reply",
    "ResponseLimiter",
    "RestSecrets",
    "SendToClient",
    "SendToPeer",
    "StaticUsers",
    "Stats",
    "TokenBuckets",
    "TurnConfig",
    "TurnEngine",
    "canonical_peer",
    "is_special",
    "rest_credentials",
    "rest_password",
]
