"""pytest plugin (entry point ``natkit``): ``stun_server``, ``turn_server`` and ``nat_lab`` fixtures.

Each fixture runs a natkit server on loopback, on ports the kernel picks, in a thread of its
own (so it serves sync and async tests alike, whatever event loop they use) and yields a
:class:`RunningServer` whose ``ice_server`` is ready for an ``iceServers`` list::

    def test_call(turn_server):
        config = {"iceServers": [turn_server.ice_server]}
        ...

The TURN relay listens and relays on both families where the host has IPv6 loopback
(``127.0.0.1`` and ``::1``: its ``ice_server`` names both, and a client may ask for an IPv6 or
a dual allocation), and allows loopback peers (``127.0.0.0/8``, ``::1``) so tests can relay to
local peers; everything else follows the safe default policy. Options can be changed per test
module by overriding the ``natkit_turn_options`` fixture: keyword arguments of
:class:`natkit.TurnServer`, or a :class:`natkit.server.service.TurnOptions` (which may carry
an ``auth``, ``peer_policy`` or ``quota`` object).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

_START_TIMEOUT = 10.0


def has_ipv6_loopback() -> bool:
    """True when this host can bind UDP on ::1 (tests of IPv6 relaying skip without it)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@dataclass
class RunningServer:
    """What a test needs of a server running in the background."""

    urls: list[str]
    username: str | None
    credential: str | None
    addresses: list[tuple[str, tuple[str, int]]]
    server: Any = field(repr=False)

    @property
    def ice_server(self) -> dict[str, Any]:
        """An RTCIceServer dictionary (urls, and username/credential for TURN)."""
        entry: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            entry["username"] = self.username
            entry["credential"] = self.credential
        return entry

    @property
    def address(self) -> tuple[str, int]:
        """The UDP address (ip, port): the IPv4 one when there are both."""
        return next(a for t, a in self.addresses if t == "udp")

    def address_of(self, family: int, transport: str = "udp") -> tuple[str, int] | None:
        """The (ip, port) of ``transport`` for ``family`` (4 or 6), or None."""
        for t, a in self.addresses:
            if t == transport and (6 if ":" in a[0] else 4) == family:
                return a
        return None

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.server.stats()
        return result


class BackgroundServer:
    """Runs ``factory()`` (an async context manager: a TurnService, a StunServer) on a
    private event loop."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.server: Any = None
        self._thread = threading.Thread(target=self._run, name="natkit-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.server = self._factory()
            await self.server.__aenter__()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.__aexit__(None, None, None)

    def start(self) -> Any:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("natkit server did not start in time")
        if self._error is not None:
            raise self._error
        return self.server

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_START_TIMEOUT)


@pytest.fixture
def natkit_turn_options() -> Any:
    """Options for the ``turn_server`` fixture's TurnServer (override to change): a dict of
    keyword arguments, or a TurnOptions."""
    return {}


@pytest.fixture
def turn_server(natkit_turn_options: Any) -> Iterator[RunningServer]:
    """A natkit TURN relay on 127.0.0.1 and ::1 (UDP and TCP; IPv4 only where the host has
    no IPv6 loopback), relaying on both families, with a generated user."""
    from natkit.server.service import TurnOptions
    from natkit.server.turn import TurnServer

    given = natkit_turn_options
    base = given if isinstance(given, TurnOptions) else TurnOptions().replace(**given)
    changes: dict[str, Any] = {}
    dual = has_ipv6_loopback()
    if base.listen is None:
        changes["listen"] = [("127.0.0.1", 0), ("::1", 0)] if dual else [("127.0.0.1", 0)]
        if base.relay_ip is None and dual:
            changes["relay_ip"] = ("127.0.0.1", "::1")
    if base.peer_policy is None and not base.allow_peers:
        changes["allow_peers"] = ("127.0.0.0/8", "::1/128")
    options = base.replace(**changes)
    background = BackgroundServer(lambda: TurnServer(options=options))
    server = background.start()
    try:
        known = not server.no_auth and server.credentials()[0]
        username, credential = server.credentials() if known else (None, None)
        yield RunningServer(server.urls, username, credential, list(server.addresses), server)
    finally:
        background.stop()


@pytest.fixture
def stun_server() -> Iterator[RunningServer]:
    """A natkit STUN responder on 127.0.0.1 (UDP and TCP)."""
    from natkit.server.stun import StunServer

    background = BackgroundServer(lambda: StunServer([("127.0.0.1", 0)]))
    server = background.start()
    try:
        urls = [f"stun:{ip}:{port}" for t, (ip, port) in server.addresses if t == "udp"]
        yield RunningServer(urls, None, None, list(server.addresses), server)
    finally:
        background.stop()


@pytest.fixture(scope="session")
def nat_lab_topology() -> Any:
    """The topology the ``nat_lab`` fixture builds (override in a conftest.py): a path, a
    :class:`natkit.lab.topology.Topology`, or None for ``configs/lab/default.toml``."""
    return None


@pytest.fixture(scope="session")
def nat_lab(nat_lab_topology: Any) -> Iterator[Any]:
    """The NAT lab, built once per test session (a :class:`natkit.lab.harness.NatLab`)::

        def test_my_client(nat_lab):
            out = nat_lab.run("symmetric", ["my-client", "--connect", nat_lab.signaling_url])
            assert out.returncode == 0, out.stderr

    Needs root on Linux with nftables (``.ci/bootstrap`` installs it); skipped, with the
    reason, where the machine cannot build network namespaces.
    """
    import os
    import sys

    from natkit.errors import PrerequisiteError
    from natkit.lab.harness import NatLab
    from natkit.lab.topology import Topology, load

    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("nat_lab needs root on Linux (network namespaces and nftables)")
    topo = nat_lab_topology if isinstance(nat_lab_topology, Topology) or nat_lab_topology is None else load(nat_lab_topology)
    lab = NatLab(topo)
    try:
        lab.start()
    except PrerequisiteError as exc:
        pytest.skip(f"nat_lab cannot build the lab here: {exc}")
    try:
        yield lab
    finally:
        lab.close()
