"""asyncio STUN client transactions (retransmission, transaction matching, auth)."""

from natkit.client.stun import (
    LongTermCredentials,
    Response,
    RtoEstimator,
    ShortTermCredentials,
    StreamStunClient,
    StunAuthError,
    StunTimeout,
    UdpStunClient,
    local_address_toward,
)

__all__ = [
    "LongTermCredentials",
    "Response",
    "RtoEstimator",
    "ShortTermCredentials",
    "StreamStunClient",
    "StunAuthError",
    "StunTimeout",
    "UdpStunClient",
    "local_address_toward",
]
