"""natkit/ice/check.py against coturn on loopback: healthy, wrong credential, dead and silent
ports, open relay, TLS (self-signed, trusted CA, wrong name), REST credentials, SRV, several
servers at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.ice.check import check, check_sync, relay_address_verdict
from natkit.ice.config import ConfigError
from natkit.server.coturn import free_port

from ._coturn import Coturn, coturn, rest_credentials, self_signed
from ._dnsserver import dns_server

pytestmark = [pytest.mark.coturn, pytest.mark.timeout(60)]

USERS = {"alice": "secret"}
TURN_STEPS = ["dns", "auth-challenge", "allocate", "relay-address", "permission",
              "relay-echo", "channel"]


@pytest.fixture(scope="module")
def lt_server() -> Iterator[Coturn]:
    with coturn(users=USERS) as server:
        yield server


def turn_server(urls: list[str], user: str = "alice", password: str = "secret") -> dict:
    return {"urls": urls, "username": user, "credential": password}


def names(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.name for c in result.checks]


async def test_healthy_four_urls_within_two_seconds(lt_server: Coturn) -> None:
    p = lt_server.port
    config = {"iceServers": [
        {"urls": [f"stun:127.0.0.1:{p}", f"stun:localhost:{p}"]},
        turn_server([f"turn:127.0.0.1:{p}", f"turn:127.0.0.1:{p}?transport=tcp"]),
    ]}
    start = time.monotonic()
    report = await check(config, timeout=3, families=(4,))
    assert time.monotonic() - start <= 2.0
    assert report.ok and report.exit_code == 0, report.as_dict()
    stun, stun_name, turn_udp, turn_tcp = report.servers
    assert names(stun) == ["dns", "binding"]
    assert stun.mapped_address is not None and stun.mapped_address.startswith("127.0.0.1:")
    assert stun_name.address == "127.0.0.1"
    assert names(turn_udp) == TURN_STEPS
    assert names(turn_tcp) == ["dns", "connect", *TURN_STEPS[1:]]
    assert turn_udp.relayed_address and turn_udp.relayed_address.startswith("127.0.0.1:")
    d = report.as_dict()
    assert set(d) >= {"schema_version", "pass", "servers", "urls", "duration_s"}
    assert set(d["servers"][2]) >= {"url", "pass", "status", "address", "checks", "hint"}
    assert set(d["servers"][2]["checks"][0]) >= {"name", "pass", "status", "duration_s",
                                                 "detail"}


async def test_wrong_password(lt_server: Coturn) -> None:
    report = await check([turn_server([f"turn:127.0.0.1:{lt_server.port}"],
                                      password="wrong")], timeout=3)
    server = report.servers[0]
    assert not report.ok and report.exit_code == 1
    failed = [c for c in server.checks if not c.ok]
    assert [(c.name, c.code) for c in failed] == [("allocate", 401)]
    assert server.hint is not None and "wrong username or password" in server.hint


async def test_dead_ports_fail_fast() -> None:
    dead = free_port()
    config = [turn_server([f"turn:127.0.0.1:{dead}", f"turn:127.0.0.1:{dead}?transport=tcp"]),
              {"urls": f"stun:127.0.0.1:{dead}"}]
    start = time.monotonic()
    report = await check(config, timeout=3)
    assert time.monotonic() - start < 1.0  # ICMP port unreachable / TCP RST, no waiting
    for server in report.servers:
        assert not server.ok
        assert server.hint is not None and "nothing listens" in server.hint


async def test_silent_server_costs_at_most_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", 0))  # bound, never answers
        port = hole.getsockname()[1]
        start = time.monotonic()
        report = await check([turn_server([f"turn:127.0.0.1:{port}"]),
                              {"urls": f"stun:127.0.0.1:{port}"}], timeout=0.6)
        elapsed = time.monotonic() - start
    assert 0.55 <= elapsed <= 0.9
    for server in report.servers:
        assert not server.ok
        assert server.hint is not None and "firewall" in server.hint


def test_open_relay_is_a_failure() -> None:
    with coturn(no_auth=True) as server:
        report = check_sync([turn_server([f"turn:127.0.0.1:{server.port}"])], timeout=3)
    result = report.servers[0]
    assert not report.ok
    failed = [c.name for c in result.checks if not c.ok]
    assert failed == ["auth-challenge"]
    assert result.hint is not None and result.hint.startswith("open relay")
    # relaying itself was still checked
    assert {"relay-echo", "channel"} <= {c.name for c in result.checks if c.ok}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coturn, str]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(str(directory), "localhost", "127.0.0.1")
    with coturn(users=USERS, tls=(cert, key)) as server:
        yield server, cert


async def test_tls_self_signed(tls_server: tuple[Coturn, str]) -> None:
    server, cert = tls_server
    config = [turn_server([f"turns:127.0.0.1:{server.tls_port}"]),
              {"urls": f"stuns:localhost:{server.tls_port}"}]
    strict = await check(config, timeout=3, families=(4,))
    for result in strict.servers:
        assert [c.name for c in result.checks if not c.ok] == ["tls"]
        assert result.hint is not None and "--insecure" in result.hint
    loose = await check(config, timeout=3, insecure=True, families=(4,))
    assert loose.ok, loose.as_dict()
    tls_step = loose.servers[0].checks[1]
    assert tls_step.name == "tls" and "NOT verified (--insecure)" in tls_step.detail
    assert "self-signed" in tls_step.detail
    assert any("--insecure" in w for w in loose.warnings)
    trusted = await check(config, timeout=3, ca_file=cert, families=(4,))
    assert trusted.ok, trusted.as_dict()
    assert "verified for 127.0.0.1" in trusted.servers[0].checks[1].detail
    assert "verified for localhost" in trusted.servers[1].checks[1].detail


def test_tls_wrong_name(tmp_path: Path) -> None:
    cert, key = self_signed(str(tmp_path), "turn.other.test", "127.0.0.9")
    with coturn(users=USERS, tls=(cert, key)) as server:
        report = check_sync([turn_server([f"turns:127.0.0.1:{server.tls_port}"])],
                            timeout=3, ca_file=cert)
    result = report.servers[0]
    assert not result.ok
    tls_step = next(c for c in result.checks if c.name == "tls")
    assert not tls_step.ok and "mismatch" in tls_step.detail


def test_rest_credentials_valid_and_expired() -> None:
    secret = "s3cr3t"
    good_user, good_pass = rest_credentials(secret, "alice", 3600)
    old_user, old_pass = rest_credentials(secret, "bob", -600)
    with coturn(auth_secrets=[secret]) as server:
        url = f"turn:127.0.0.1:{server.port}"
        report = check_sync([turn_server([url], good_user, good_pass),
                             turn_server([url + "?transport=tcp"], old_user, old_pass)],
                            timeout=3)
    good, expired = report.servers
    assert good.ok, good.as_dict()
    assert not expired.ok
    assert [(c.name, c.code) for c in expired.checks if not c.ok] == [("allocate", 401)]
    assert expired.hint is not None and "REST credential expired" in expired.hint
    assert any("REST credential expired" in w for w in report.warnings)


def test_several_servers_at_once(lt_server: Coturn) -> None:
    with coturn(no_auth=True) as open_server:
        config = {"iceServers": [
            turn_server([f"turn:127.0.0.1:{lt_server.port}"]),
            turn_server([f"turn:127.0.0.1:{open_server.port}"]),
            turn_server([f"turn:127.0.0.1:{lt_server.port}?transport=tcp"], password="nope"),
            {"urls": [f"stun:127.0.0.1:{open_server.port}"]},
        ]}
        report = check_sync(config, timeout=3)
    assert [s.ok for s in report.servers] == [True, False, False, True]
    assert [s.path for s in report.servers] == [
        "iceServers[0].urls[0]", "iceServers[1].urls[0]", "iceServers[2].urls[0]",
        "iceServers[3].urls[0]"]


async def test_srv_lookup_end_to_end(lt_server: Coturn) -> None:
    records = {
        ("_turn._udp.relay.example.test", "SRV"): [f"0 0 {lt_server.port} t1.example.test."],
        ("t1.example.test", "A"): ["127.0.0.1"],
    }
    with dns_server(records) as resolver:
        report = await check([turn_server(["turn:relay.example.test"])], timeout=3,
                             resolver=resolver)
    result = report.servers[0]
    assert result.ok, result.as_dict()
    assert result.checks[0].detail.startswith("SRV: 127.0.0.1:")
    assert result.port == lt_server.port


async def test_unresolvable_name() -> None:
    with dns_server({("other.example.test", "A"): ["127.0.0.1"]}) as resolver:
        report = await check([{"urls": "stun:missing.example.test:3478"}], timeout=2,
                             resolver=resolver)
    result = report.servers[0]
    assert [c.name for c in result.checks] == ["dns"] and not result.ok
    assert result.hint is not None and "host name" in result.hint


def test_invalid_config_raises_before_any_traffic() -> None:
    with pytest.raises(ConfigError) as info:
        check_sync({"iceServers": [{"urls": "turn:127.0.0.1:3478"}]})
    assert info.value.problems[0].error == "InvalidAccessError"


@pytest.mark.parametrize(("relayed", "server", "ok"), [
    ("10.0.0.5", "203.0.113.10", False),  # the missing external-ip mistake
    ("100.64.1.1", "198.51.100.1", False),
    ("203.0.113.10", "203.0.113.10", True),
    ("10.0.0.5", "10.0.0.1", True),  # a LAN server: private relay is expected
    ("127.0.0.1", "127.0.0.1", True),
])
def test_private_relay_verdict(relayed: str, server: str, ok: bool) -> None:
    assert relay_address_verdict(relayed, server)[0] is ok


async def test_turns_on_a_plain_port(lt_server: Coturn) -> None:
    report = await check([turn_server([f"turns:127.0.0.1:{lt_server.port}"])], timeout=0.5,
                         insecure=True)
    result = report.servers[0]
    assert [c.name for c in result.checks if not c.ok] == ["tls"]
    assert result.hint is not None and "rather than TLS" in result.hint


def test_first_exchange_gets_time_for_a_retransmission() -> None:
    """A TCP connect of a 3 s check may take 1.2 s (one lost SYN is retried after 1 s), yet
    never more than half of what is left; later steps keep their weighted shares."""
    from natkit.ice.check import _Budget

    plan = ["dns", "route", "connect", "tls", "auth-challenge", "allocate", "permission",
            "relay-echo", "channel"]
    budget = _Budget(3.0, plan)
    assert budget.share("connect", 0.0) == pytest.approx(1.2)
    assert budget.share("connect", 2.0) == pytest.approx(0.5)
    assert budget.share("allocate", 0.0) < 1.2
    udp = _Budget(3.0, ["dns", "binding", "auth-challenge", "allocate"])
    assert udp.first_contact == "binding"
    assert udp.share("auth-challenge", 0.0) == pytest.approx(3.0 * 1.0 / 2.5)
