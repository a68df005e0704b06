"""The probe end to end on loopback against scripted servers (no namespaces needed)."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import pytest

from natkit.nat.classify import NO_RFC5780
from natkit.nat.probe import probe
from tests.nat.fake_server import Behaviour, FakeStunServer, free_port

pytestmark = pytest.mark.timeout(30)


def url(server: FakeStunServer) -> str:
    return f"{server.primary[0]}:{server.primary[1]}"


async def test_rfc5780_server_no_nat_is_open_and_fast() -> None:
    async with FakeStunServer() as server:
        t0 = time.monotonic()
        result = await probe([url(server)], families=(4,))
        took = time.monotonic() - t0
    d = result.to_json()
    assert (d["nat_type"], d["mapping"], d["filtering"]) == ("open", "none", "endpoint-independent")
    assert d["public"] == d["local"]
    assert d["local"]["ip"] == "127.0.0.1"  # the routed address, not 0.0.0.0
    assert d["servers"][0]["rfc5780"] is True
    assert result.exit_code == 0
    assert took < 1.5
    names = [t["name"] for t in d["tests"]]
    assert names == ["binding", "filtering-2", "filtering-3", "mapping-2", "mapping-3", "mapping-4"]
    # each mapping test went to a destination tuple not used before
    assert (
        len({t["sent_to"] for t in d["tests"] if t["name"].startswith(("binding", "mapping"))}) == 4
    )
    # each filtering test had a socket of its own
    locals_ = [t["local"]["port"] for t in d["tests"]]
    assert len({locals_[0], locals_[1], locals_[2]}) == 3


async def test_server_ignoring_change_request_is_unknown_not_full_cone() -> None:
    async with FakeStunServer(behaviour=Behaviour(honour_change=False)) as server:
        result = await probe([url(server)], families=(4,))
    d = result.to_json()
    assert d["filtering"] == "unknown"
    assert d["nat_type"] == "unknown"
    assert d["reason"] == NO_RFC5780
    assert result.exit_code == 0
    f2 = next(t for t in d["tests"] if t["name"] == "filtering-2")
    assert f2["answered_from"] == f"127.0.0.1:{server.port}" != f2["expected_from"]


async def test_server_without_other_address() -> None:
    async with FakeStunServer(behaviour=Behaviour(other_address=False)) as server:
        result = await probe([url(server)], families=(4,))
    d = result.to_json()
    assert d["public"] is not None and d["servers"][0]["rfc5780"] is False
    assert d["nat_type"] == "unknown" and NO_RFC5780 in d["reason"]


async def test_alg_detected() -> None:
    b = Behaviour(plain_mapped=lambda a: ("10.0.0.2", a[1]))
    async with FakeStunServer(behaviour=b) as server:
        d = (await probe([url(server)], families=(4,))).to_json()
    assert d["alg"] is True
    assert any("ALG" in n for n in d["notes"])


def _apdm(client: tuple[str, int], local: tuple[str, int]) -> tuple[str, int]:
    """Play an address-and-port-dependent mapping NAT: a port per (client, server endpoint)."""
    key = f"{client}{local}".encode()
    return ("203.0.113.1", 20000 + zlib.crc32(key) % 40000)


async def test_endpoint_dependent_mapping_is_symmetric() -> None:
    async with FakeStunServer(behaviour=Behaviour(mapped=_apdm)) as server:
        d = (await probe([url(server)], families=(4,))).to_json()
    assert d["mapping"] == "address-and-port-dependent"
    assert d["nat_type"] == "symmetric"
    assert "port-restricted-cone" in d["ice"]["turn_needed_with"]


async def test_two_servers_seeing_different_ports_without_rfc5780() -> None:
    b = Behaviour(mapped=_apdm, other_address=False)
    async with (
        FakeStunServer(("127.0.0.1", "127.0.0.2"), behaviour=b) as s1,
        FakeStunServer(("127.0.0.3", "127.0.0.4"), behaviour=b) as s2,
    ):
        d = (await probe([url(s1), url(s2)], families=(4,))).to_json()
    assert d["mappings_agree"] is False
    assert d["nat_type"] == "symmetric"
    assert [s["mapped"] is not None for s in d["servers"]] == [True, True]


async def test_loss_is_retried_not_mistaken_for_filtering() -> None:
    async with FakeStunServer(behaviour=Behaviour(drop_first=3)) as server:
        d = (await probe([url(server)], families=(4,))).to_json()
    assert d["nat_type"] == "open"
    assert sum(t["attempts"] for t in d["tests"]) > len(d["tests"])


async def test_udp_silent_but_tcp_answers_is_udp_blocked_quickly() -> None:
    async with FakeStunServer(behaviour=Behaviour(silent=True)) as server:
        await server.start_tcp()
        t0 = time.monotonic()
        result = await probe([url(server)], families=(4,), timeout=5.0)
        took = time.monotonic() - t0
    d = result.to_json()
    assert d["nat_type"] == "udp-blocked" and d["udp_blocked"] is True
    assert result.exit_code == 0
    assert took < 1.5  # the TCP RTT bounds the wait, not the 5 s timeout


async def test_nothing_answers_is_exit_1_after_the_timeout() -> None:
    port = free_port()
    t0 = time.monotonic()
    result = await probe([f"127.0.0.1:{port}"], families=(4,), timeout=0.6)
    took = time.monotonic() - t0
    assert result.exit_code == 1
    assert result.to_json()["public"] is None
    assert 0.5 <= took < 2.0


async def test_no_behaviour_only_maps() -> None:
    async with FakeStunServer() as server:
        d = (await probe([url(server)], families=(4,), behaviour=False)).to_json()
    assert d["public"] is not None
    assert [t["name"] for t in d["tests"]] == ["binding"]
    assert len(server.requests) == 1
    assert d["servers"][0]["rfc5780"] is True and "--no-behaviour" in d["reason"]


async def test_ipv6_is_probed_separately() -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    port = free_port("127.0.0.1")
    # One IPv6 address only: OTHER-ADDRESS shares the IP, so no RFC 5780 tests over IPv6.
    async with (
        FakeStunServer(("::1", "::1"), port=port) as v6,
        FakeStunServer(("127.0.0.1", "127.0.0.2"), port=port) as v4,
    ):
        result = await probe([f"[::1]:{v6.port}", f"127.0.0.1:{v4.port}"])
    d = result.to_json()
    assert set(d["families"]) == {"ipv4", "ipv6"}
    six = d["families"]["ipv6"]
    assert six["public"]["ip"] == "::1" and six["public"] == six["local"]
    assert six["servers"][0]["address"] == f"[::1]:{port}"
    assert six["nat_type"] == "unknown"  # mapping "none", but filtering untested
    assert six["mapping"] == "none"
    assert d["family"] == "ipv4" and d["nat_type"] == "open"
    only6 = (await probe([f"[::1]:{port}"], families=(4,))).to_json()
    assert only6["families"] == {} and only6["errors"]


async def test_stuns_only_reports_the_tls_mapping_but_no_udp_verdict(tmp_path: Path) -> None:
    from natkit.nat.discovery import ProbeOptions
    from tests.nat.fake_server import self_signed

    server_ctx, client_ctx = self_signed(tmp_path)
    async with FakeStunServer() as server:
        await server.start_tcp(ssl=server_ctx)
        result = await probe(
            [f"stuns:127.0.0.1:{server.port}"],
            families=(4,),
            options=ProbeOptions(ssl_context=client_ctx),
        )
        d = result.to_json()
        assert d["public"] is not None and d["servers"][0]["stream"]["transport"] == "tls"
        assert d["nat_type"] == "unknown" and "stuns:" in d["reason"]
        assert result.exit_code == 0
        assert server.requests == []  # nothing over UDP
        # Without trusting the certificate the TLS handshake fails: nobody answered.
        bad = await probe([f"stuns:127.0.0.1:{server.port}"], families=(4,), timeout=1.0)
        assert bad.exit_code == 1


async def test_cancelled_probe_leaves_nothing_running() -> None:
    import asyncio

    async with FakeStunServer(behaviour=Behaviour(silent=True)) as server:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(probe([url(server)], families=(4,), timeout=5), 0.3)
        await asyncio.sleep(0.05)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == []
