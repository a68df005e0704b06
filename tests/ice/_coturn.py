"""coturn on loopback for a test through natkit.server.coturn.CoturnServer (free ports, ready
when it answers Binding, always stopped). Skips when the turnserver binary is missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from natkit.server.coturn import CoturnServer


@dataclass
class Coturn:
    port: int
    tls_port: int | None
    server: CoturnServer


@contextlib.contextmanager
def coturn(*, tls: tuple[str, str] | None = None, **options: Any) -> Iterator[Coturn]:
    """coturn with CoturnServer ``options`` (``users={"alice": "secret"}``, ``no_auth=True``,
    ``auth_secrets=[...]``); ``tls`` = (cert, key). Peers on 127.0.0.0/8 are allowed."""
    if shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    server = CoturnServer(
        [("127.0.0.1", 0)],
        realm="natkit.test",
        relay_ip="127.0.0.1",
        min_port=40000,
        max_port=60000,
        allow_peers=["127.0.0.0/8"],
        tls_cert=tls[0] if tls else None,
        tls_key=tls[1] if tls else None,
        tls_port=0,
        **options,
    )
    with server:
        port = server.addresses_of("udp")[0][1]
        yield Coturn(port, server.tls_port if tls else None, server)


def self_signed(directory: str, name: str = "localhost", ip: str = "127.0.0.1",
                ) -> tuple[str, str]:
    """A self-signed certificate (also usable as its own CA) for ``name`` and ``ip``."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, f"{name}.crt")
    key_path = os.path.join(directory, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o644)
    return cert_path, key_path


def rest_credentials(secret: str, user: str, expires_in: int) -> tuple[str, str]:
    """TURN REST API credentials: username 'EXPIRY:user', password base64(HMAC-SHA1)."""
    import base64
    import hashlib
    import hmac

    username = f"{int(time.time()) + expires_in}:{user}"
    password = base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password
