"""A scripted TURN client against the sans-IO engine: no sockets, time passed in."""

from __future__ import annotations

import itertools
from typing import Any

from natkit.stun import Attr, Class, Message, Method, PasswordAlgorithm, decode, long_term_key
from natkit.turn.actions import (
    BindRelays,
    CloseRelay,
    Offload,
    OffloadAllocation,
    OffloadChannel,
    OffloadPermission,
    OffloadWithdraw,
    Reply,
    SendToPeer,
)
from natkit.turn.allocation import Relay
from natkit.turn.auth import Authenticator, FirstOf, NoAuth, RestSecrets, StaticUsers
from natkit.turn.engine import TurnConfig, TurnEngine
from natkit.turn.policy import DefaultPeerPolicy, OwnAddresses
from natkit.turn.quota import AllocationQuota

REALM = "test.realm"
T0 = 1_700_000_000.0


class FakeHandle:
    """Stands in for a relay socket."""

    _ids = itertools.count(1)

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.closed = False
        self.id = next(self._ids)


class Harness:
    """Runs an engine, binding fake relay sockets, and records what it asked for."""

    def __init__(self, engine: TurnEngine) -> None:
        self.engine = engine
        self.now = T0
        self.port = itertools.count(50000, 2)
        self.open: dict[int, FakeHandle] = {}
        self.sent_to_peers: list[SendToPeer] = []
        self.offloads: list[Offload] = []
        self.fail_bind = False

    def bind(self, pending: BindRelays) -> list[Any]:
        relays = []
        reserved = None
        if not self.fail_bind:
            for family in pending.families:
                port = next(self.port)
                ip = "192.0.2.1" if family == 4 else "2001:db8::1"
                handle = FakeHandle((ip, port))
                self.open[handle.id] = handle
                relays.append(
                    Relay(family, (ip, port), ("203.0.113.1" if family == 4 else ip, port), handle)
                )
            if pending.reserve_next:
                port = relays[0].address[1] + 1
                handle = FakeHandle((relays[0].address[0], port))
                self.open[handle.id] = handle
                reserved = Relay(
                    relays[0].family, handle.address, (relays[0].advertised[0], port), handle
                )
        return self.engine.complete_allocate(pending, relays, self.now, reserved=reserved)

    def run(self, actions: list[Any]) -> list[bytes]:
        replies: list[bytes] = []
        for action in actions:
            if isinstance(action, Reply):
                replies.append(action.data)
            elif isinstance(action, BindRelays):
                replies += self.run(self.bind(action))
            elif isinstance(action, CloseRelay):
                assert not action.handle.closed, "relay closed twice"
                action.handle.closed = True
                del self.open[action.handle.id]
            elif isinstance(action, SendToPeer):
                self.sent_to_peers.append(action)
            elif isinstance(
                action, OffloadAllocation | OffloadPermission | OffloadChannel | OffloadWithdraw
            ):
                self.offloads.append(action)
            else:
                raise AssertionError(f"unknown action {action!r}")
        # a bug is answered 500 and counted, never hidden: no test may cause one
        assert self.engine.stats.bugs == 0, "the engine raised; see the log for the traceback"
        return replies

    def feed(
        self, client: Any, addr: tuple[str, int], data: bytes, stream: bool = False
    ) -> list[bytes]:
        return self.run(self.engine.handle_client(client, addr, data, self.now, stream=stream))

    def tick(self, seconds: float = 0.0) -> None:
        self.now += seconds
        self.run(self.engine.tick(self.now))


class Client:
    """A TURN client speaking to the harness from one 5-tuple."""

    def __init__(
        self,
        harness: Harness,
        addr: tuple[str, int] = ("198.51.100.10", 40000),
        username: str | None = "alice",
        password: str = "secret",
        *,
        algorithm: PasswordAlgorithm | None = None,
        stream: bool = False,
    ) -> None:
        self.h = harness
        self.addr = addr
        self.transport = object()
        self.username = username
        self.password = password
        self.algorithm = algorithm
        self.stream = stream
        self.nonce: str | None = None
        self.realm = REALM

    def key(self) -> bytes:
        assert self.username is not None
        return long_term_key(
            self.username, self.realm, self.password, self.algorithm or PasswordAlgorithm.MD5
        )

    def raw(self, data: bytes) -> list[bytes]:
        return self.h.feed(self.transport, self.addr, data, self.stream)

    def send(self, msg: Message, *, integrity: str = "sha1") -> Message:
        """Send a request, answering one 401/438 challenge; returns the final response."""
        for _ in range(3):
            data = self._sign(msg, integrity)
            replies = self.raw(data)
            assert len(replies) == 1, replies
            resp = decode(replies[0])
            err = resp.error_code
            if err is not None and err.code in (401, 438) and self.username is not None:
                nonce = resp.get(Attr.NONCE)
                if nonce and nonce != self.nonce:
                    self.nonce = nonce
                    self.realm = resp.get(Attr.REALM) or self.realm
                    msg = Message(msg.method, msg.cls, attributes=[a for a in msg.attributes])
                    continue
            return resp
        return resp

    def try_send(self, msg: Message) -> list[bytes]:
        """Like send() but for anything: no reply (a dropped request) is fine."""
        replies = self.raw(self._sign(msg, "sha1"))
        if len(replies) == 1:
            resp = decode(replies[0])
            err = resp.error_code
            nonce = resp.get(Attr.NONCE)
            if err is not None and err.code in (401, 438) and nonce and nonce != self.nonce:
                self.nonce = nonce
                replies = self.raw(self._sign(msg, "sha1"))
        return replies

    def _sign(self, msg: Message, integrity: str) -> bytes:
        if self.username is None or self.nonce is None:
            return msg.encode()
        signed = Message(msg.method, msg.cls, msg.transaction_id, list(msg.attributes))
        signed.add(Attr.USERNAME, self.username).add(Attr.REALM, self.realm).add(
            Attr.NONCE, self.nonce
        )
        if self.algorithm is not None:
            signed.add(Attr.PASSWORD_ALGORITHMS, (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256))
            signed.add(Attr.PASSWORD_ALGORITHM, self.algorithm)
        return signed.encode(key=self.key(), integrity=integrity)

    def allocate(self, **attrs: Any) -> Message:
        msg = Message(Method.ALLOCATE).add(Attr.REQUESTED_TRANSPORT, attrs.pop("transport", 17))
        for name, value in attrs.items():
            msg.add(Attr[name.upper()], value)
        return self.send(msg)

    def refresh(self, lifetime: int | None = None) -> Message:
        msg = Message(Method.REFRESH)
        if lifetime is not None:
            msg.add(Attr.LIFETIME, lifetime)
        return self.send(msg)

    def permit(self, *peers: str) -> Message:
        msg = Message(Method.CREATE_PERMISSION)
        for ip in peers:
            msg.add(Attr.XOR_PEER_ADDRESS, (ip, 9))
        return self.send(msg)

    def permit_exact(self, *peers: tuple[str, int]) -> Message:
        """CreatePermission naming whole transport addresses (the port is the client's)."""
        msg = Message(Method.CREATE_PERMISSION)
        for peer in peers:
            msg.add(Attr.XOR_PEER_ADDRESS, peer)
        return self.send(msg)

    def channel(self, number: int, peer: tuple[str, int]) -> Message:
        msg = (
            Message(Method.CHANNEL_BIND)
            .add(Attr.CHANNEL_NUMBER, number)
            .add(Attr.XOR_PEER_ADDRESS, peer)
        )
        return self.send(msg)

    def send_indication(self, peer: tuple[str, int], data: bytes, **attrs: Any) -> list[bytes]:
        msg = (
            Message(Method.SEND, Class.INDICATION)
            .add(Attr.XOR_PEER_ADDRESS, peer)
            .add(Attr.DATA, data)
        )
        for name, value in attrs.items():
            msg.add(Attr[name.upper()], value)
        return self.raw(msg.encode())

    @property
    def allocation(self) -> Any:
        return self.h.engine.allocations.get((self.transport, self.addr))


def code(resp: Message) -> int | None:
    err = resp.error_code
    return None if err is None else err.code


def make_engine(
    *,
    users: dict[str, str] | None = None,
    secrets: tuple[str, ...] = (),
    allow: tuple[str, ...] = ("198.51.100.0/24", "2001:db8:1::/48"),
    families: frozenset[int] = frozenset({4}),
    auth: bool | Authenticator = True,
    user_quota: int | None = None,
    max_allocations: int | None = None,
    offload: bool = False,
    own: OwnAddresses | None = None,
    **config: Any,
) -> TurnEngine:
    cfg = TurnConfig(realm=REALM, families=families, **config)
    if auth is True:
        static = StaticUsers(users if users is not None else {"alice": "secret", "bob": "pw"})
        auth = FirstOf(static, RestSecrets(secrets)) if secrets else static
    elif auth is False:
        auth = NoAuth()
    return TurnEngine(
        cfg,
        auth=auth,
        peer_policy=DefaultPeerPolicy(allow=allow),
        quota=AllocationQuota(per_user=user_quota, total=max_allocations),
        offload=offload,
        own=own,
    )
