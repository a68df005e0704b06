"""The ``nat_lab`` fixture: one lab for the session, commands and callables behind its NATs,
and what a user's test reads of it (STUN, TURN, signaling)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from natkit.errors import ConfigError
from natkit.lab.harness import NatLabError

pytestmark = [pytest.mark.timeout(120), pytest.mark.root]


def _mapped(server: tuple[str, int]) -> tuple[str, int]:
    """Runs behind a NAT: the public mapping the lab's STUN server reports (natkit's client)."""
    import asyncio

    from natkit.client.stun import UdpStunClient
    from natkit.stun import Attr, Class, Message, Method

    async def ask() -> tuple[str, int]:
        async with await UdpStunClient.open() as client:
            res = await client.transact(Message(Method.BINDING, Class.REQUEST), server, rto=0.2, rc=4)
            ip, port = res.message.get(Attr.XOR_MAPPED_ADDRESS)
            return (str(ip), int(port))

    return asyncio.run(ask())


def _boom() -> None:
    raise ValueError("from behind the NAT")


def test_a_command_behind_a_nat_sees_the_lab(nat_lab: Any) -> None:
    out = nat_lab.run("symmetric", [sys.executable, "-m", "natkit", "probe", "--server", nat_lab.stun_url, "--json"])
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert report["nat_type"] == "symmetric" or report.get("mapping") == "address-and-port-dependent", report
    assert out.node == "symmetric-1-p1" and out.duration_s > 0


def test_a_callable_behind_a_nat_returns_its_result(nat_lab: Any) -> None:
    ip, port = nat_lab.run("full-cone", _mapped, nat_lab.stun)
    assert ip == nat_lab.public_ip("full-cone") and 0 < port < 65536
    # no NAT: the mapping is the peer's own address
    ip, _ = nat_lab.run("open", _mapped, nat_lab.stun)
    assert ip == nat_lab.run("open", _own_ip)


def _own_ip() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=True)
    return out.stdout.split()[3].split("/")[0]


def test_errors_come_back_as_errors(nat_lab: Any) -> None:
    with pytest.raises(NatLabError, match="from behind the NAT") as err:
        nat_lab.run("port-restricted", _boom)
    assert "ValueError" in str(err.value) and "_boom" in err.value.remote
    with pytest.raises(ConfigError, match="not a NAT"):
        nat_lab.run("no-such-nat", ["true"])
    slow = nat_lab.run("open", ["sleep", "30"], timeout=1)
    assert slow.timed_out and slow.returncode != 0 and slow.duration_s < 10


def test_the_lab_says_where_its_servers_are(nat_lab: Any) -> None:
    assert nat_lab.stun_url.startswith("stun:203.0.113.") and nat_lab.signaling_url.startswith("ws://203.0.113.")
    relay = nat_lab.ice_servers("relay")
    assert relay[0]["urls"] == nat_lab.turn_urls and relay[0]["username"] == nat_lab.turn_credentials[0]
    assert "symmetric" in nat_lab.nats and nat_lab.ice_servers("host") == []
