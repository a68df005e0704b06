"""What the TURN engine asks its adapter to do: the actions it returns.

Two kinds. **Effects** the adapter must carry out: send a reply, a datagram to a peer or to a
client, bind or close relay sockets. **Offload events** describe the forwarding state a fast
table may take over (the C data path), so the adapter mirrors them without reading the
engine's state:

* :class:`OffloadAllocation` - the allocation of ``key`` may be forwarded outside the engine;
  Send indications from its client leave through ``relays`` (one per address family).
  It comes before the first permission or channel of that allocation.
* :class:`OffloadPermission` - datagrams from ``ip`` (any port) arriving on ``relay`` go to the
  client as Data indications, and plain Send indications from the client to ``ip`` leave
  through ``relay``, while ``now < until``.
* :class:`OffloadChannel` - ChannelData ``number`` from the client goes to ``peer`` through
  ``relay`` and datagrams from exactly ``peer`` on ``relay`` go to the client as ChannelData
  ``number``, while ``now < until`` (the channel's expiry, or its peer's permission's if earlier).
* An :class:`OffloadChannel` with ``target`` (relay-to-relay: ``peer`` is that live relayed
  address of this same server) sends ChannelData ``number`` from the client not to the network
  but to ``target``'s client, exactly as a datagram from ``relay.advertised`` arriving on
  ``target`` would go (through ``target``'s own entries; when they cover nothing, to the
  engine). Before ``target``'s socket closes, the entry comes again without ``target``.
* ``until is None`` withdraws that one entry; :class:`OffloadWithdraw` withdraws every entry of
  ``key`` and comes before the :class:`CloseRelay` actions of that allocation.

Events are emitted only when the engine's ``offload`` is on, and only for allocations whose data
needs no per-packet decision of the engine: clients without a bandwidth cap, over UDP, and over
TCP/TLS too when the engine's ``offload_streams`` is on (the table then pads ChannelData to
4 bytes for them, RFC 8656 §12.5; an adapter may ignore the events of a stream it cannot read);
a permission for one of the relay's own IPs (reopened by an explicit allow) is never offloaded,
as its data is checked per packet against the relay's own ports. A request emits the entries it
changed itself; when a permission grows while its IP has several channels, the permission and
those channels are renewed together by the next ``tick()`` (constant work per request), so a
table may for a moment hand the engine datagrams it could have forwarded, never more.
An entry never promises more than the engine would do itself, so a table that forwards exactly
while ``now < until`` (``now`` on the engine's clock) and hands everything else to the engine
forwards what the engine would; datagrams a table forwards are its to count.
``key`` is the engine's allocation key: the pair (client handle, client address) the adapter
gave :meth:`~natkit.turn.engine.TurnEngine.handle_client`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from natkit.stun import Message
from natkit.turn.allocation import Address, Relay
from natkit.turn.auth import Identity

#: (client handle, client address): how the engine names an allocation
ClientKey = tuple[Any, Address]


@dataclass(slots=True)
class Reply:
    """Send ``data`` to the client the request came from."""

    data: bytes


@dataclass(slots=True)
class SendToPeer:
    """Send ``data`` from the relay socket ``handle`` to ``peer``."""

    handle: Any
    data: bytes
    peer: Address
    dont_fragment: bool = False


@dataclass(slots=True)
class SendToClient:
    """Send ``data`` through the client handle ``client`` to the client at ``addr``."""

    client: Any
    addr: Address
    data: bytes


@dataclass(slots=True)
class CloseRelay:
    """Close the relay socket ``handle`` (its allocation or reservation ended)."""

    handle: Any
    address: Address


@dataclass(slots=True)
class BindRelays:
    """Bind relay sockets, then call :meth:`TurnEngine.complete_allocate` with this object."""

    key: Any
    client: Any
    client_addr: Address
    stream: bool
    request: Message
    identity: Identity | None
    families: tuple[int, ...]  # 4 / 6, the first one is required
    even_port: bool
    reserve_next: bool
    lifetime: int
    dont_fragment: bool
    #: families that were asked for but the server cannot offer (ADDRESS-ERROR-CODE 440)
    missing: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class OffloadAllocation:
    """The allocation of ``key`` may be forwarded by a fast table (see the module doc)."""

    key: ClientKey
    relays: tuple[Relay, ...]


@dataclass(frozen=True, slots=True)
class OffloadPermission:
    """Traffic with ``ip`` through ``relay`` may be forwarded until ``until`` (None: withdrawn)."""

    key: ClientKey
    relay: Relay
    ip: str
    until: float | None


@dataclass(frozen=True, slots=True)
class OffloadChannel:
    """Channel ``number`` <-> ``peer`` through ``relay`` until ``until`` (None: withdrawn).
    ``target``: ``peer`` is that live relay of this server (relay-to-relay), see the module
    doc."""

    key: ClientKey
    number: int
    relay: Relay
    peer: Address
    until: float | None
    target: Relay | None = None


@dataclass(frozen=True, slots=True)
class OffloadWithdraw:
    """Every entry of ``key`` is void: its allocation ended."""

    key: ClientKey


Offload = OffloadAllocation | OffloadPermission | OffloadChannel | OffloadWithdraw
Action = Reply | SendToPeer | SendToClient | CloseRelay | BindRelays | Offload
