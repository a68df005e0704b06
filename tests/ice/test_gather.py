"""natkit/ice/gather.py: candidates per URL with the URL and time, errors like
icecandidateerror (701, 401), relay policy; against coturn on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from natkit.ice.gather import UNREACHABLE, Gathered, gather
from natkit.server.coturn import free_port
from natkit.stun import Attr, Class, Method, decode

from ._coturn import Coturn, coturn

pytestmark = [pytest.mark.coturn, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def lt_server() -> Iterator[Coturn]:
    with coturn(users={"alice": "secret"}) as server:
        yield server


class NattedStun(asyncio.DatagramProtocol):
    """A STUN responder that reports a fixed mapped address, as a server behind a NAT would
    see us: so that a srflx differs from its base on loopback."""

    def __init__(self, mapped: tuple[str, int]) -> None:
        self.mapped = mapped
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = decode(data)
        if msg.method == Method.BINDING and msg.cls == Class.REQUEST:
            resp = msg.response().add(Attr.XOR_MAPPED_ADDRESS, self.mapped)
            assert self.transport is not None
            self.transport.sendto(resp.encode(fingerprint=True), addr)


async def test_gather_all_urls(lt_server: Coturn) -> None:
    loop = asyncio.get_running_loop()
    stun_transport, _ = await loop.create_datagram_endpoint(
        lambda: NattedStun(("203.0.113.5", 40000)), local_addr=("127.0.0.1", 0))
    stun_port = stun_transport.get_extra_info("sockname")[1]
    dead = free_port()
    p = lt_server.port
    events: list[object] = []
    config = {"iceServers": [
        {"urls": [f"stun:127.0.0.1:{stun_port}", f"stun:127.0.0.1:{p}"]},
        {"urls": [f"turn:127.0.0.1:{p}", f"turn:127.0.0.1:{p}?transport=tcp",
                  f"turn:127.0.0.1:{dead}"], "username": "alice", "credential": "secret"},
        {"urls": [f"turn:127.0.0.1:{p}"], "username": "alice", "credential": "bad"},
    ]}
    try:
        result = await gather(config, host_addresses=["127.0.0.1"], timeout=3,
                              on_event=events.append)
    finally:
        stun_transport.close()
    by_type: dict[str, list[Gathered]] = {}
    for g in result.candidates:
        by_type.setdefault(g.candidate.type, []).append(g)
    assert len(by_type["host"]) == 1 and by_type["host"][0].candidate.address == "127.0.0.1"
    (srflx,) = by_type["srflx"]
    assert (srflx.candidate.address, srflx.candidate.port) == ("203.0.113.5", 40000)
    assert srflx.candidate.url == f"stun:127.0.0.1:{stun_port}"
    assert srflx.candidate.related_address == "127.0.0.1"
    relays = {g.candidate.url: g.candidate for g in by_type["relay"]}
    assert set(relays) == {f"turn:127.0.0.1:{p}", f"turn:127.0.0.1:{p}?transport=tcp"}
    assert relays[f"turn:127.0.0.1:{p}?transport=tcp"].relay_protocol == "tcp"
    assert relays[f"turn:127.0.0.1:{p}?transport=tcp"].relay_transport == "tcp"
    for cand in relays.values():
        assert cand.validate()[0] == []
    # the loopback STUN server sees our real address: no srflx, a note instead
    assert any("no NAT" in n for n in result.notes)
    errors = {(e.url, e.error_code) for e in result.errors}
    assert errors == {(f"turn:127.0.0.1:{dead}", UNREACHABLE), (f"turn:127.0.0.1:{p}", 401)}
    assert not result.ok
    assert all(g.elapsed_ms >= 0 for g in result.candidates)
    assert len(events) == len(result.candidates) + len(result.errors)
    # a loopback TURN server's loopback relay is not the external-ip mistake
    assert "private-relay" not in {f.code for f in result.diagnosis()}
    d = result.as_dict()
    assert set(d) >= {"schema_version", "pass", "duration_s", "candidates", "errors",
                      "diagnosis"}
    assert set(d["errors"][0]) == {"url", "address", "port", "error_code", "error_text",
                                   "at_s"}


async def test_relay_policy_only_relays(lt_server: Coturn) -> None:
    p = lt_server.port
    result = await gather(
        [{"urls": f"stun:127.0.0.1:{p}"},
         {"urls": f"turn:127.0.0.1:{p}", "username": "alice", "credential": "secret"}],
        policy="relay", host_addresses=["127.0.0.1"], timeout=3)
    assert [g.candidate.type for g in result.candidates] == ["relay"]
    assert result.ok


async def test_unreachable_costs_at_most_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await gather([{"urls": f"stun:127.0.0.1:{port}"}], host_addresses=[],
                              timeout=0.5)
        assert loop.time() - start < 0.8
    assert [e.error_code for e in result.errors] == [UNREACHABLE]


def test_stuns_reachability_is_a_note(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ._coturn import self_signed

    cert, key = self_signed(str(tmp_path))
    with coturn(users={"alice": "secret"}, tls=(cert, key)) as server:
        result = asyncio.run(gather([{"urls": f"stuns:127.0.0.1:{server.tls_port}"}],
                                    host_addresses=[], timeout=3, ca_file=cert))
        untrusted = asyncio.run(gather([{"urls": f"stuns:127.0.0.1:{server.tls_port}"}],
                                       host_addresses=[], timeout=3))
    assert result.candidates == [] and result.ok
    assert any("reachable over TLS" in n for n in result.notes)
    assert [e.error_code for e in untrusted.errors] == [UNREACHABLE]
    assert "TLS" in untrusted.errors[0].error_text
