"""The pytest plugin's fixtures (entry point ``natkit``), used the way a user's suite would."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from natkit.pytest_plugin import RunningServer
from natkit.stun import Attr, Class, Message, Method, decode

pytestmark = pytest.mark.timeout(60)


def _binding(addr: tuple[str, int]) -> Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(Message(Method.BINDING).encode(), addr)
        return decode(s.recv(2048))


def test_turn_server_fixture_is_ready_for_ice_servers(turn_server: RunningServer) -> None:
    entry = turn_server.ice_server
    assert entry["urls"][0].startswith("turn:127.0.0.1:") and entry["urls"][0].endswith(
        "?transport=udp"
    )
    assert any(u.endswith("?transport=tcp") for u in entry["urls"])
    assert entry["username"] and entry["credential"]
    resp = _binding(turn_server.address)
    assert resp.cls == Class.SUCCESS and resp.get(Attr.XOR_MAPPED_ADDRESS)[0] == "127.0.0.1"


async def test_turn_server_fixture_serves_both_families(turn_server: RunningServer) -> None:
    """Where the host has IPv6 loopback the fixture listens on ::1 too, ice_server names it,
    and a client may ask for an IPv6 or a dual allocation."""
    from natkit.client.turn import TurnClient
    from natkit.pytest_plugin import has_ipv6_loopback

    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    v6 = turn_server.address_of(6)
    assert v6 is not None and v6[0] == "::1"
    assert f"turn:[::1]:{v6[1]}?transport=udp" in turn_server.ice_server["urls"]
    user, password = turn_server.username, turn_server.credential
    async with await TurnClient.connect(v6, username=user, password=password) as client:
        allocation = await client.allocate(dual=True)
        assert {a[0] for a in allocation.relayed_all} == {"127.0.0.1", "::1"}


async def test_turn_server_fixture_relays_for_aioice_in_an_async_test(
    turn_server: RunningServer,
) -> None:
    from aioice.turn import create_turn_endpoint

    class Q(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.q: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.q.put_nowait((data, addr))

    loop = asyncio.get_running_loop()
    peer_t, peer = await loop.create_datagram_endpoint(Q, local_addr=("127.0.0.1", 0))
    t, _ = await create_turn_endpoint(
        Q, turn_server.address, turn_server.username, turn_server.credential
    )
    try:
        t.sendto(b"hi", peer_t.get_extra_info("sockname"))
        data, _ = await asyncio.wait_for(peer.q.get(), 5)
        assert data == b"hi"
        assert turn_server.stats()["allocations"] == 1
    finally:
        t.close()
        peer_t.close()


def test_stun_server_fixture(stun_server: RunningServer) -> None:
    assert stun_server.ice_server == {"urls": stun_server.urls}
    assert stun_server.urls[0].startswith("stun:127.0.0.1:")
    assert _binding(stun_server.address).cls == Class.SUCCESS


def test_plugin_is_registered_for_users(tmp_path: Path) -> None:
    """A user's suite gets the fixtures from the installed entry point, nothing to configure."""
    test = tmp_path / "test_user.py"
    test.write_text(
        "def test_it(turn_server, stun_server):\n"
        "    assert turn_server.ice_server['urls'] and stun_server.urls\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(test),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


@pytest.fixture
def natkit_turn_options() -> dict[str, Any]:
    return {"users": {"fixed": "pw"}}


def test_options_can_be_overridden(turn_server: RunningServer) -> None:
    assert (turn_server.username, turn_server.credential) == ("fixed", "pw")


class TestTurnOptionsObject:
    """The options fixture may give a TurnOptions, with handler objects in it."""

    @pytest.fixture
    def natkit_turn_options(self) -> Any:
        from natkit.server.service import TurnOptions
        from natkit.turn import StaticUsers

        return TurnOptions(auth=StaticUsers({"obj": "pw"}), user_quota=3)

    def test_handlers_reach_the_server(self, turn_server: RunningServer) -> None:
        assert (turn_server.username, turn_server.credential) == ("obj", "pw")
        assert turn_server.server.options.user_quota == 3
        assert turn_server.server.options.allow_peers == ("127.0.0.0/8", "::1/128")
