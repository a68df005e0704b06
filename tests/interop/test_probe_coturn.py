"""natkit probe against coturn on loopback (RFC 5780 with two listening IPs, and without)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from natkit.bench.probe import server_command, stop
from natkit.nat.classify import NO_RFC5780
from natkit.nat.probe import probe
from natkit.stun import Class, Message, Method, decode
from tests.nat.fake_server import free_port

pytestmark = [pytest.mark.coturn, pytest.mark.timeout(60)]

if shutil.which("turnserver") is None:  # pragma: no cover - CI installs coturn
    pytest.skip("coturn is not installed (apt-get install coturn)", allow_module_level=True)


def _answers(addr: tuple[str, int], tcp: bool) -> bool:
    import socket

    req = Message(Method.BINDING, Class.REQUEST)
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(0.2)
        try:
            if tcp:
                s.connect(addr)
                s.sendall(req.encode())
                data = s.recv(2048)
            else:
                s.sendto(req.encode(), addr)
                data = s.recvfrom(2048)[0]
            return decode(data).transaction_id == req.transaction_id
        except OSError:
            return False


@contextmanager
def coturn(
    tmp: Path,
    *extra: str,
    ips: tuple[str, str] = ("127.0.0.1", "127.0.0.2"),
    tcp_ready: bool = False,
) -> Iterator[int]:
    port = free_port("127.0.0.1", 2)
    # the RFC 5780 coturn that `natkit bench probe` runs, plus this test's options
    argv = [*server_command("coturn", ips, port), f"--pidfile={tmp / 'turnserver.pid'}", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers(("127.0.0.1", port), tcp_ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coturn did not start: {' '.join(argv)}")
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)


async def test_coturn_rfc5780_on_loopback_is_open(tmp_path: Path) -> None:
    with coturn(tmp_path) as port:
        result = await probe([f"stun:127.0.0.1:{port}"], families=(4,))
    d = result.to_json()
    assert (d["nat_type"], d["mapping"], d["filtering"]) == ("open", "none", "endpoint-independent")
    s = d["servers"][0]
    assert s["rfc5780"] is True and s["other_address"] == {"ip": "127.0.0.2", "port": port + 1}
    assert s["stream"]["answered"] is True  # coturn answers Binding over TCP too
    assert d["duration_s"] < 1.5


async def test_coturn_without_rfc5780_is_unknown(tmp_path: Path) -> None:
    with coturn(tmp_path, "--no-rfc5780") as port:
        d = (await probe([f"127.0.0.1:{port}"], families=(4,))).to_json()
    assert d["public"] is not None
    assert d["nat_type"] == "unknown" and NO_RFC5780 in d["reason"]
    assert d["servers"][0]["rfc5780"] is False


async def test_coturn_with_udp_off_is_udp_blocked(tmp_path: Path) -> None:
    with coturn(tmp_path, "--no-udp", tcp_ready=True) as port:
        t0 = time.monotonic()
        result = await probe([f"127.0.0.1:{port}"], families=(4,), timeout=5)
        took = time.monotonic() - t0
    d = result.to_json()
    assert d["nat_type"] == "udp-blocked" and result.exit_code == 0
    assert took < 1.5


def test_cli_json_and_exit_codes(tmp_path: Path) -> None:
    with coturn(tmp_path) as port:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "natkit",
                "probe",
                "--server",
                f"stun:127.0.0.1:{port}",
                "--json",
                "--ipv4",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        human = subprocess.run(
            [sys.executable, "-m", "natkit", "probe", "-s", f"127.0.0.1:{port}", "-v"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in (
        "public",
        "local",
        "mapping",
        "filtering",
        "hairpinning",
        "nat_type",
        "servers",
        "duration_s",
    ):
        assert key in d
    assert set(d["servers"][0]) >= {"address", "rtt_s", "mapped", "rfc5780"}
    assert human.returncode == 0 and "NAT type        open" in human.stdout
    assert "filtering-2" in human.stdout  # -v shows each test
    # Nobody there: exit 1.
    dead = free_port()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "natkit",
            "probe",
            "-s",
            f"127.0.0.1:{dead}",
            "--timeout",
            "0.5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and json.loads(out.stdout)["public"] is None
    # Usage errors: exit 2, one line, no traceback.
    for argv in (
        ["-s", "turn:127.0.0.1"],
        ["-s", "127.0.0.1:99999"],
        ["--timeout", "-1", "-s", "127.0.0.1"],
        ["--local", "nonsense", "-s", "127.0.0.1"],
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "natkit", "probe", *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 2, argv
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
