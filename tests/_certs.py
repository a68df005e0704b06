"""A throwaway self-signed certificate for TLS tests (openssl, CN=localhost, one day)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files written into ``tmp``."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def ec_self_signed(
    tmp: Path, common_name: str = "localhost", ip: str | None = None, days: float = 1
) -> tuple[Path, Path, bytes]:
    """(certificate, key, certificate PEM): an EC certificate made with ``cryptography``,
    with ``ip`` as a subject alternative name when given."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    cert_pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    cert, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert.write_bytes(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key_path, cert_pem
