"""natkit/ice/hints.py: what to fix, from what the server said."""

from __future__ import annotations

import pytest

from natkit.ice import hints
from natkit.ice.config import parse_ice_url

URL = parse_ice_url("turn:turn.example.com:3478")


def test_401_after_credentials() -> None:
    now = 1_800_000_000.0
    assert "wrong username or password" in hints.hint_for_401("alice", now)
    assert "expired 600 s ago" in hints.hint_for_401("1799999400:alice", now)
    assert "shared secret" in hints.hint_for_401("1800003600:alice", now)


@pytest.mark.parametrize(("code", "words"), [
    (438, "stale nonce"),
    (441, "different username"),
    (442, "does not relay UDP"),
    (486, "quota"),
    (508, "no free relay port"),
    (403, "forbids"),
    (599, "error 599"),
])
def test_error_codes(code: int, words: str) -> None:
    assert words in hints.hint_for_error(code, URL, "alice", "allocate")


def test_peer_refused_at_permission() -> None:
    assert "peer policy" in hints.hint_for_error(403, URL, "alice", "permission")


def test_timeouts_and_refusals() -> None:
    assert "firewall drops UDP" in hints.hint_for_timeout(URL, "auth-challenge", 3478)
    assert "transport=tcp" in hints.hint_for_timeout(URL, "auth-challenge", 3478)
    tcp = parse_ice_url("turn:turn.example.com?transport=tcp")
    assert "over TCP" in hints.hint_for_timeout(tcp, "connect", 3478)
    assert "relay ports" in hints.hint_for_timeout(URL, "relay-echo", 3478)
    assert "nothing listens on port 3478 over UDP" in hints.hint_for_refused(URL, 3478)
    turns = parse_ice_url("turns:turn.example.com")
    assert "--insecure" in hints.hint_for_tls(True, turns)
    assert "rather than TLS" in hints.hint_for_tls(False, turns)


def test_certificate_description(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from natkit.ice.tls import describe_certificate

    from ._coturn import self_signed

    cert_path, _ = self_signed(str(tmp_path), "turn.example.test")
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = cert.public_bytes(serialization.Encoding.DER)
    text = describe_certificate(der)
    assert text.startswith("CN=turn.example.test, self-signed, expires ")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    assert "EXPIRED" in describe_certificate(der, now=later)
    assert describe_certificate(None) == "no certificate"


def test_tls_handshake_timeout() -> None:
    turns = parse_ice_url("turns:turn.example.com")
    assert "plain TURN/STUN rather than TLS" in hints.hint_for_timeout(turns, "tls", 5349)


def test_timeout_hint_follows_what_passed() -> None:
    from natkit.ice.config import parse_ice_url
    from natkit.ice.hints import hint_for_timeout

    url = parse_ice_url("turn:turn.example.com:3478")
    cold = hint_for_timeout(url, "allocate", 3478)
    assert "firewall drops UDP" in cold
    warm = hint_for_timeout(url, "allocate", 3478, {"dns", "auth-challenge"})
    assert "answered this client before (auth-challenge)" in warm and "firewall" not in warm
