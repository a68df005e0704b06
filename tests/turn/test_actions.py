"""The Offload* events: a table that mirrors them forwards exactly what the engine forwards.

``ModelTable`` does what natkit/server/_turnfast.c does with its entries (the same keys, the
same ``now < until`` test); random sequences of requests, data and time must never let it
forward something the engine would drop or send elsewhere, and, for the allocations it may
take over, it must cover everything the engine forwards (data to and from the relay's own
addresses excepted: the engine checks those per packet). Relay-to-relay channels (a channel
to another allocation's relayed address) go to that allocation's client through its entries,
as the C table does, and never name a relay that has closed.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natkit.stun import Attr, Class, Message, Method, decode, encode_channel_data
from natkit.turn.actions import (
    OffloadAllocation,
    OffloadChannel,
    OffloadPermission,
    OffloadWithdraw,
    SendToClient,
    SendToPeer,
)
from natkit.turn.allocation import Relay
from natkit.turn.policy import OwnAddresses
from tests.turn.harness import Client, Harness, make_engine

PEER_IPS = ["198.51.100.7", "198.51.100.8", "2001:db8:1::5"]
PORTS = [4000, 4001]
NUMBERS = [0x4000, 0x4001, 0x4FFF, 0x7FFE]


class ModelTable:
    """The C table's rules over the events, in Python."""

    def __init__(self) -> None:
        self.allocations: dict[Any, dict[int, Relay]] = {}
        self.perms: dict[tuple[int, str], tuple[Any, float]] = {}
        self.to_peer: dict[
            tuple[Any, int], tuple[Relay, tuple[str, int], float, Relay | None]
        ] = {}
        self.to_client: dict[tuple[int, tuple[str, int]], tuple[Any, int, float]] = {}
        self.keys: dict[Any, set[tuple[str, Any]]] = {}

    def apply(self, event: Any) -> None:
        if isinstance(event, OffloadAllocation):
            assert event.key not in self.allocations, "offloaded twice"
            self.allocations[event.key] = {r.family: r for r in event.relays}
            self.keys[event.key] = set()
            return
        if isinstance(event, OffloadWithdraw):
            self.allocations.pop(event.key)
            for table, k in self.keys.pop(event.key):
                getattr(self, table).pop(k, None)
            return
        assert event.key in self.allocations, f"{event!r} before its OffloadAllocation"
        owned = self.keys[event.key]
        if isinstance(event, OffloadPermission):
            k = (id(event.relay), event.ip)
            if event.until is None:
                self.perms.pop(k, None)
            else:
                self.perms[k] = (event.key, event.until)
                owned.add(("perms", k))
        elif isinstance(event, OffloadChannel):
            k1 = (event.key, event.number)
            k2 = (id(event.relay), event.peer)
            if event.until is None:
                self.to_peer.pop(k1, None)
                self.to_client.pop(k2, None)
            else:
                self.to_peer[k1] = (event.relay, event.peer, event.until, event.target)
                self.to_client[k2] = (event.key, event.number, event.until)
                owned.update({("to_peer", k1), ("to_client", k2)})

    def channel_data(self, key: Any, number: int, now: float) -> tuple[Any, ...] | None:
        """("peer", relay handle, peer) or, relay-to-relay, ("client", client key, kind)."""
        entry = self.to_peer.get((key, number))
        if entry is None or not entry[2] > now:
            return None
        relay, peer, _, target = entry
        if target is None:
            return "peer", relay.handle, peer
        assert not target.handle.closed, "a relay-to-relay entry outlived its target"
        delivered = self.from_peer(target, relay.advertised, now)
        return None if delivered is None else ("client", *delivered)

    def send_indication(
        self, key: Any, peer: tuple[str, int], now: float
    ) -> tuple[Any, tuple[str, int]] | None:
        relays = self.allocations.get(key)
        relay = relays.get(6 if ":" in peer[0] else 4) if relays else None
        if relay is None:
            return None
        entry = self.perms.get((id(relay), peer[0]))
        if entry is None or not entry[1] > now:
            return None
        return relay.handle, peer

    def from_peer(self, relay: Relay, peer: tuple[str, int], now: float) -> tuple[Any, Any] | None:
        """(client key, channel number or "data") the datagram goes to, or None."""
        entry = self.to_client.get((id(relay), peer))
        if entry is not None and entry[2] > now:
            return entry[0], entry[1]
        perm = self.perms.get((id(relay), peer[0]))
        if perm is not None and perm[1] > now:
            return perm[0], "data"
        return None


def _where(out: SendToPeer | SendToClient | None) -> tuple[Any, ...] | None:
    if out is None:
        return None
    if isinstance(out, SendToPeer):
        return "peer", out.handle, out.peer
    kind: Any = "data" if out.data[0] < 0x40 else int.from_bytes(out.data[:2])
    return "client", (out.client, out.addr), kind


RELAY_NETS = ("192.0.2.0/24", "203.0.113.0/24", "2001:db8::/48")  # the harness's relays


class Mirrored(Harness):
    def __init__(self, **engine: Any) -> None:
        super().__init__(
            make_engine(
                families=frozenset({4, 6}),
                offload=True,
                allow=("198.51.100.0/24", "2001:db8:1::/48", *RELAY_NETS),
                own=OwnAddresses(relay_to_relay=True),
                **engine,
            )
        )
        self.table = ModelTable()

    def run(self, actions: list[Any]) -> list[bytes]:
        seen = len(self.offloads)
        replies = super().run(actions)
        for event in self.offloads[seen:]:
            self.table.apply(event)
        return replies


def check_equivalent(h: Mirrored, clients: list[Client], *, cover: bool = True) -> None:
    """The table never forwards what the engine would not; with ``cover`` (after a tick has
    renewed the entries a permission's growth made stale), it forwards all the engine does for
    the allocations it took over."""
    engine, table, now = h.engine, h.table, h.now
    relayed = [r.advertised for c in clients if c.allocation for r in c.allocation.relays]
    for c in clients:
        key = (c.transport, c.addr)
        offloaded = key in table.allocations
        for number in NUMBERS:
            before = len(h.sent_to_peers)
            out = engine.forward_from_client(
                key, encode_channel_data(number, b"p", channel_max=0x7FFE), now
            )
            assert len(h.sent_to_peers) == before
            fast = table.channel_data(key, number, now)
            want = _where(out)
            # to a relay of this server: the table may leave it to the engine (the target's
            # permission for an own IP is never offloaded), never send it elsewhere
            own = want is not None and want[0] == "client"
            if fast is not None or (offloaded and cover and not own):
                assert fast == want, (number, fast, want)
        for peer in [(ip, port) for ip in PEER_IPS for port in PORTS] + relayed:
            msg = Message(Method.SEND, Class.INDICATION)
            msg.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, b"s")
            actions = engine.handle_client(c.transport, c.addr, msg.encode(), now)
            assert len(actions) <= 1
            if actions and isinstance(actions[0], SendToClient):
                assert peer in relayed  # relay-to-relay: the engine's (own IPs stay its own)
                continue
            want = (actions[0].handle, actions[0].peer) if actions else None
            fast = table.send_indication(key, peer, now)
            if fast is not None or (offloaded and cover and peer not in relayed):
                assert fast == want, (peer, fast, want)
        allocation = engine.allocations.get(key)
        for relay in allocation.relays if allocation else []:
            for peer in [(ip, port) for ip in PEER_IPS for port in PORTS] + relayed:
                own = peer in relayed
                out = engine.forward_from_peer(relay, peer, b"d", now)
                if out is None:
                    want = None
                else:
                    frame = out.data
                    kind: Any = "data" if frame[0] < 0x40 else int.from_bytes(frame[:2])
                    if kind == "data":
                        assert decode(frame).get(Attr.XOR_PEER_ADDRESS) == peer
                    want = ((out.client, out.addr), kind)
                fast = table.from_peer(relay, peer, now)
                if fast is not None or (offloaded and cover and not own):
                    assert fast == want, (relay.family, peer, fast, want)


op = st.one_of(
    st.tuples(
        st.just("permit"),
        st.integers(0, 2),
        st.lists(st.sampled_from(PEER_IPS), min_size=1, max_size=2),
    ),
    st.tuples(
        st.just("channel"),
        st.integers(0, 2),
        st.sampled_from(NUMBERS),
        st.sampled_from(PEER_IPS),
        st.sampled_from(PORTS),
    ),
    st.tuples(
        st.just("relay_channel"), st.integers(0, 2), st.sampled_from(NUMBERS), st.integers(0, 2)
    ),
    st.tuples(st.just("refresh"), st.integers(0, 2), st.sampled_from([0, 600, 3600])),
    st.tuples(st.just("allocate"), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 1.5, 10, 299, 301, 599, 601])),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=30))
def test_mirrored_table_forwards_what_the_engine_forwards(ops: list[tuple[Any, ...]]) -> None:
    h = Mirrored(max_permissions=2)
    clients = [
        Client(h, addr=("198.51.100.30", 1000 + i), username="alice", password="secret")
        for i in range(3)
    ]
    for c in clients:
        c.allocate(additional_address_family=2)
    for item in ops:
        kind = item[0]
        if kind == "wait":
            h.tick(item[1])
        elif kind == "permit":
            clients[item[1]].permit(*item[2])
        elif kind == "channel":
            clients[item[1]].channel(item[2], (item[3], item[4]))
        elif kind == "relay_channel":  # to another client's (or its own) relayed address
            target = clients[item[3]].allocation
            if target is not None:
                clients[item[1]].channel(item[2], target.relays[0].advertised)
        elif kind == "refresh":
            clients[item[1]].refresh(item[2])
        else:
            clients[item[1]].allocate(additional_address_family=2)
        check_equivalent(h, clients, cover=False)
        h.tick(0)  # the tick renews what the request left stale
        check_equivalent(h, clients)
    h.tick(4000)
    assert not h.table.allocations and not h.table.perms and not h.table.to_peer


def test_no_events_without_offload_or_for_what_a_table_cannot_do() -> None:
    plain = Harness(make_engine())
    c = Client(plain)
    c.allocate()
    c.channel(0x4000, ("198.51.100.7", 1))
    assert plain.offloads == []
    for engine in (make_engine(offload=True, bandwidth=10_000), make_engine(offload=True)):
        h = Harness(engine)
        stream = engine.config.bandwidth is None
        c = Client(h, stream=stream)
        c.allocate()
        c.channel(0x4000, ("198.51.100.7", 1))
        assert h.offloads == []  # a bandwidth cap, or a TCP/TLS client: the engine's own


def test_events_touch_only_what_changed() -> None:
    """A request costs events for its own peers, not for every channel of the allocation."""
    h = Mirrored()
    c = Client(h)
    c.allocate()
    rng = random.Random(5)
    for n in range(200):
        c.channel(0x4000 + n, (f"198.51.100.{rng.randrange(1, 250)}", 2000 + n))
    seen = len(h.offloads)
    c.permit("198.51.100.251")
    assert len(h.offloads) - seen == 1
    seen = len(h.offloads)
    c.channel(0x4000, h.table.to_peer[((c.transport, c.addr), 0x4000)][1])  # a refresh
    assert 1 <= len(h.offloads) - seen <= 3  # its permission, and the channels to that IP


@pytest.mark.parametrize("lifetime", [0, None])
def test_withdraw_precedes_the_relay_close(lifetime: int | None) -> None:
    h = Mirrored()
    c = Client(h)
    c.allocate()
    c.permit("198.51.100.7")
    key = (c.transport, c.addr)
    actions = []
    if lifetime == 0:
        msg = Message(Method.REFRESH).add(Attr.LIFETIME, 0)
        actions = h.engine.handle_client(c.transport, c.addr, c._sign(msg, "sha1"), h.now)
    else:
        actions = h.engine.tick(h.now + 601)
    kinds = [type(a).__name__ for a in actions]
    assert kinds.index("OffloadWithdraw") < kinds.index("CloseRelay"), kinds
    assert any(isinstance(a, OffloadWithdraw) and a.key == key for a in actions)


def test_relay_to_relay_entries_follow_their_target() -> None:
    """A channel to another allocation's relayed address is offloaded with that relay as its
    target; when the target ends, the entry comes again without it before its socket closes."""
    h = Mirrored()
    a = Client(h, addr=("198.51.100.30", 1000))
    b = Client(h, addr=("198.51.100.31", 1000))
    a.allocate()
    b.allocate()
    relay_a, relay_b = a.allocation.relays[0], b.allocation.relays[0]
    a.channel(0x4000, relay_b.advertised)
    b.channel(0x4001, relay_a.advertised)
    key_a, key_b = (a.transport, a.addr), (b.transport, b.addr)
    assert h.table.to_peer[(key_a, 0x4000)][3] is relay_b
    assert h.table.channel_data(key_a, 0x4000, h.now) == ("client", key_b, 0x4001)
    out = h.engine.forward_from_client(key_a, encode_channel_data(0x4000, b"x"), h.now)
    assert isinstance(out, SendToClient) and out.data[:2] == b"\x40\x01"
    assert h.engine.stats.relay_to_relay_packets == 1 and h.engine.stats.to_peer_packets == 0
    msg = Message(Method.REFRESH).add(Attr.LIFETIME, 0)
    actions = h.engine.handle_client(b.transport, b.addr, b._sign(msg, "sha1"), h.now)
    kinds = [type(x).__name__ for x in actions]
    again = [
        i for i, x in enumerate(actions) if isinstance(x, OffloadChannel) and x.key == key_a
    ]
    assert again and again[0] < kinds.index("CloseRelay"), kinds
    h.run(actions)
    assert h.table.channel_data(key_a, 0x4000, h.now) == ("peer", relay_a.handle, relay_b.advertised)
    out = h.engine.forward_from_client(key_a, encode_channel_data(0x4000, b"x"), h.now)
    assert isinstance(out, SendToPeer)  # the address is no relay now: the network's
