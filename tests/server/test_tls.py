"""TLS on the STUN and TURN listeners (natkit/server/_tls.py): every failed handshake is named
in the log and counted by kind (issue 16: libnice's plain STUN on a turns: port was dropped
without a word), and a good client still gets through."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import natkit
from natkit.server._tls import classify_clear_text, name_matches
from natkit.server.turn import TurnServer
from natkit.stun import Class, Message, Method, decode
from tests._certs import ec_self_signed

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def tls_server(kind: str, tmp: Path) -> AsyncIterator[tuple[Any, tuple[str, int], bytes]]:
    cert, key, pem = ec_self_signed(tmp)
    server: Any
    if kind == "stun":
        server = natkit.StunServer(["127.0.0.1:0"], tls_cert=cert, tls_key=key, tls_port=0)
    else:
        server = TurnServer([("127.0.0.1", 0)], users={"u": "p"}, tls_cert=cert, tls_key=key,
                            tls_port=0)  # fmt: skip
    server.guard.limits = dataclasses.replace(server.guard.limits, tls_handshake_timeout=1.0)
    async with server:
        yield server, server.addresses_of("tls")[0], pem


def attempt(target: tuple[str, int], how: str, pem: bytes) -> str:
    """One client of kind ``how``; what it saw."""
    s = socket.create_connection(target, timeout=4)
    try:
        if how == "plain_stun":  # libnice in standard mode on a turns: port
            s.sendall(Message(Method.BINDING).encode())
            return repr(s.recv(100))
        if how == "no_sni_match":  # asks for another name: the client refuses our certificate
            ctx = ssl.create_default_context(cadata=pem.decode())
            ctx.wrap_socket(s, server_hostname="turn.wrong.example")
        elif how == "bad_version":  # TLS 1.0 only
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            with contextlib.suppress(ValueError):
                ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
            ctx.wrap_socket(s)
        elif how == "timeout":  # connects and says nothing
            return repr(s.recv(10))
        elif how == "good":
            ctx = ssl.create_default_context(cadata=pem.decode())
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(Message(Method.BINDING).encode())
                return "good" if decode(t.recv(200)).cls == Class.SUCCESS else "bad"
        return "handshake done?"
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__
    finally:
        s.close()


@pytest.mark.parametrize("kind", ["stun", "turn"])
async def test_failed_handshakes_are_named_logged_and_counted(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warnings = pytest.warns(DeprecationWarning) if hasattr(ssl.TLSVersion, "TLSv1") else None
    with caplog.at_level(logging.INFO):
        async with tls_server(kind, tmp_path) as (srv, tls, pem):
            for how in ("plain_stun", "no_sni_match", "timeout"):
                await asyncio.to_thread(attempt, tls, how, pem)
            if warnings is not None:
                with warnings:
                    await asyncio.to_thread(attempt, tls, "bad_version", pem)
            assert await asyncio.to_thread(attempt, tls, "good", pem) == "good"
            await asyncio.sleep(1.6)  # the handshake deadline passes for the silent one
            failures = srv.stats()["stream"]["tls_failures"]
    assert failures == {"plain_stun": 1, "no_sni_match": 1, "timeout": 1, "bad_version": 1}
    for failure in failures:
        assert f"event=tls_handshake_failed kind={failure}" in caplog.text
    assert "sni='turn.wrong.example'" in caplog.text
    assert "sent STUN without TLS" in caplog.text  # says what the client should do


def test_clear_text_and_names() -> None:
    assert classify_clear_text(Message(Method.BINDING).encode()) == "plain_stun"
    assert classify_clear_text(b"\x40\x00\x00\x04abcd") == "plain_stun"  # ChannelData
    assert classify_clear_text(b"GET / HTTP/1.1\r\n") == "not_tls"
    dns, ips = frozenset({"turn.example.org", "*.example.net"}), frozenset({"192.0.2.1"})
    assert name_matches("TURN.example.org.", dns, ips)
    assert name_matches("a.example.net", dns, ips) and not name_matches("a.b.example.net", dns, ips)
    assert name_matches("192.0.2.1", dns, ips) and not name_matches("192.0.2.2", dns, ips)
