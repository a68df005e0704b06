"""natkit's STUN responder against clients it did not write, and natkit's codec against coturn.

All traffic stays on loopback (127.0.0.0/8). coturn, its turnutils and Debian's stun-client
are installed in CI, which runs as root: as root (or with NATKIT_REQUIRE_INTEROP=1) a missing
tool fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

import natkit
from natkit.server.coturn import free_port as free_port_span
from natkit.stun import Attr, Class, Message, Method, StreamFramer, decode

pytestmark = pytest.mark.timeout(90)

_REQUIRED = os.geteuid() == 0 or bool(os.environ.get("NATKIT_REQUIRE_INTEROP"))


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if _REQUIRED:
            pytest.fail(f"{binary} missing in CI: apt-get install {package}")
        pytest.skip(f"{binary} not installed (apt-get install {package})")
    return path


async def run_tool(*cmd: str, timeout: float = 40) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace")


async def run_bound_tool(*cmd: str) -> str:
    """run_tool, again when the tool could not bind the local port it picked (coturn's tools
    pick port + 1 of an ephemeral port for some tests, which another process may hold)."""
    for _ in range(5):
        out = await run_tool(*cmd)
        if "Address already in use" not in out:
            break
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.3", 0))
        return int(s.getsockname()[1])


def free_pair() -> int:
    """A port p with p and p + 1 free on every address."""
    return free_port_span("0.0.0.0", 2)


# ------------------------------------------------------------------ coturn's clients


async def test_turnutils_stunclient_gets_the_reflexive_address() -> None:
    tool = need("turnutils_stunclient", "coturn")
    async with natkit.StunServer(["127.0.0.1:0"]) as srv:
        port = srv.udp_address[1]
        # The client on 127.0.0.3: the reflexive address must name it, not the server.
        out = await run_bound_tool(tool, "-p", str(port), "-L", "127.0.0.3", "127.0.0.1")
        found = re.findall(r"UDP reflexive addr: ([\d.]+):(\d+)", out)
        assert found, out
        assert {ip for ip, _ in found} == {"127.0.0.3"}, out
        assert srv.stats()["udp"]["responses"] >= 1


async def test_turnutils_natdiscovery_rfc5780_mode() -> None:
    tool = need("turnutils_natdiscovery", "coturn")
    async with natkit.StunServer(["127.0.0.1:0"], alternate_ip="127.0.0.2") as srv:
        port = srv.udp_address[1]
        local_port = free_port()
        out = await run_bound_tool(
            tool, "-m", "-f", "-p", str(port), "-L", "127.0.0.3", "-l", str(local_port), "127.0.0.1"
        )
        assert "NAT with Endpoint Independent Mapping!" in out, out
        assert "NAT with Endpoint Independent Filtering!" in out, out
        # exact reflexive address: it bound the port we gave it
        assert f"UDP reflexive addr: 127.0.0.3:{local_port}" in out, out
        assert f"Other addr: : 127.0.0.2:{port + 1}" in out, out
        # and with 1500-byte PADDING in every request
        out = await run_bound_tool(tool, "-m", "-f", "-P", "-p", str(port), "127.0.0.1")
        assert "NAT with Endpoint Independent Mapping!" in out, out
        assert "NAT with Endpoint Independent Filtering!" in out, out


async def test_turnutils_stunclient_rfc5780_attributes() -> None:
    tool = need("turnutils_stunclient", "coturn")
    async with natkit.StunServer(["127.0.0.1:0"], alternate_ip="127.0.0.2") as srv:
        port = srv.udp_address[1]
        out = await run_bound_tool(tool, "-f", "-p", str(port), "127.0.0.1")
        assert f"Other addr: : 127.0.0.2:{port + 1}" in out, out
        assert f"Response origin: : 127.0.0.2:{port + 1}" in out, out  # CHANGE-REQUEST ip+port


# ------------------------------------------------------------------ aioice


async def test_aioice_gathers_srflx_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioice
    import aioice.ice

    # Host candidates only on a loopback address (no traffic on real interfaces).
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.3"])
    async with natkit.StunServer(["127.0.0.1:0"]) as srv:
        conn = aioice.Connection(ice_controlling=True, stun_server=srv.udp_address)
        try:
            await asyncio.wait_for(conn.gather_candidates(), 10)
            srflx = [c for c in conn.local_candidates if c.type == "srflx"]
            host = [c for c in conn.local_candidates if c.type == "host"]
            assert srflx and host, conn.local_candidates
            assert (srflx[0].host, srflx[0].port) == (host[0].host, host[0].port)
            assert srflx[0].related_address == "127.0.0.3"
        finally:
            await conn.close()


# ------------------------------------------------------------------ Debian's stun client


async def test_stun_client_classic_test() -> None:
    tool = need("stun", "stun-client")
    async with natkit.StunServer(["127.0.0.1:0"], alternate_ip="127.0.0.2") as srv:
        port = srv.udp_address[1]
        for _ in range(5):  # it opens a port pair of its own; pick a free one, retry if taken
            out = await run_tool(tool, f"127.0.0.1:{port}", "-v", "-p", str(free_pair()))
            if "is in use" not in out:
                break
        for line in ("test I = 1", "test II = 1", "test III = 1", "test I(2) = 1"):
            assert line in out, out
        assert f"ChangedAddress = 127.0.0.2:{port + 1}" in out, out
        assert "Primary: Open" in out, out  # no NAT on loopback


# ------------------------------------------------------------------ coturn's server


def _coturn(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            need("turnserver", "coturn"),
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--listening-ip=127.0.0.1",
            "--listening-ip=127.0.0.2",
            f"--listening-port={port}",
            f"--alt-listening-port={port + 1}",
            f"--log-file={workdir / 'turn.log'}",
            f"--pidfile={workdir / 'turn.pid'}",
            f"--userdb={workdir / 'turndb'}",
            "--fingerprint",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def _ask(sock: socket.socket, data: bytes, dst: tuple[str, int], tries: int = 50) -> bytes:
    """The answer to ``data`` (matched by transaction id: retries may earn several)."""
    for _ in range(tries):  # coturn may still be starting: retry
        sock.sendto(data, dst)
        try:
            while True:
                raw = (await asyncio.to_thread(sock.recvfrom, 4096))[0]
                if raw[4:20] == data[4:20]:
                    return raw
        except (TimeoutError, ConnectionRefusedError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"no answer from coturn at {dst}")


def _log_tail(workdir: Path) -> str:
    return "".join(p.read_text(errors="replace")[-2000:] for p in workdir.glob("*.log"))


async def test_codec_decodes_what_coturn_sends() -> None:
    need("turnserver", "coturn")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="natkit-coturn-") as tmp:
        proc = _coturn(port, Path(tmp))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(0.3)
                c.bind(("127.0.0.1", 0))
                me = c.getsockname()
                server = ("127.0.0.1", port)

                req = Message(Method.BINDING)
                resp = decode(await _ask(c, req.encode(), server))
                assert resp.cls == Class.SUCCESS and resp.transaction_id == req.transaction_id
                assert resp.get(Attr.XOR_MAPPED_ADDRESS) == me
                assert Attr.FINGERPRINT in resp  # decode checked it

                req = Message(Method.BINDING).add(Attr.CHANGE_REQUEST, 0x6)
                raw = await _ask(c, req.encode(fingerprint=True), server)
                resp = decode(raw)
                assert resp.get(Attr.XOR_MAPPED_ADDRESS) == me
                assert resp.get(Attr.OTHER_ADDRESS) == ("127.0.0.2", port + 1)
                assert resp.get(Attr.RESPONSE_ORIGIN) == ("127.0.0.2", port + 1)

                req = Message(Method.BINDING).add(0x0033, b"\x01\x02\x03\x04")
                resp = decode(await _ask(c, req.encode(), server))
                assert resp.cls == Class.ERROR
                assert resp.error_code is not None and resp.error_code.code == 420
                assert 0x0033 in resp.get(Attr.UNKNOWN_ATTRIBUTES)

                req = Message(Method.BINDING, legacy=True)
                resp = decode(await _ask(c, req.encode(), server), allow_legacy=True)
                assert resp.legacy and resp.get(Attr.MAPPED_ADDRESS) == me

                assert resp.get(Attr.CHANGED_ADDRESS) == ("127.0.0.2", port + 1)
                assert isinstance(resp.get(Attr.SOFTWARE), str)

                # over TCP, through natkit's stream framer: two requests in one segment
                reader, writer = await asyncio.open_connection(*server)
                reqs = [Message(Method.BINDING), Message(Method.BINDING)]
                writer.write(b"".join(r.encode(fingerprint=True) for r in reqs))
                framer, frames = StreamFramer(), []
                while len(frames) < 2:
                    chunk = await asyncio.wait_for(reader.read(4096), 5)
                    assert chunk, "coturn closed the TCP connection"
                    frames += framer.feed(chunk)
                local = writer.get_extra_info("sockname")[:2]
                writer.close()
                for req, frame in zip(reqs, frames):
                    resp = decode(frame)
                    assert resp.transaction_id == req.transaction_id
                    assert resp.get(Attr.XOR_MAPPED_ADDRESS) == local
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\ncoturn exit={proc.poll()} log:\n{_log_tail(Path(tmp))}"
            ) from None
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
