"""The lab's certificate authority: made fresh for every run, trusted only by the lab's peers.

The TURN server's TLS listener (``turns:`` on port 443, the ``relay-tls`` path) presents a
certificate this CA signed for the server's addresses and name; each peer gets the CA's PEM in
its :class:`~natkit.lab.stacks.base.PeerConfig` and trusts nothing else for it. Keys are EC
P-256 and live one day; nothing is written outside the run's scratch directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LabCA", "make_lab_ca", "spki_sha256"]


@dataclass(frozen=True)
class LabCA:
    """PEM texts: the CA's certificate, and the server certificate and key it issued."""

    ca_pem: str
    cert_pem: str
    key_pem: str

    @property
    def chain_pem(self) -> str:
        """What the TLS listener presents: its certificate, then the CA's (so a client that
        pins the CA's key, such as Chromium's SPKI allow-list, finds it in the chain)."""
        return self.cert_pem + self.ca_pem


def make_lab_ca(ips: Sequence[str], names: Sequence[str] = ()) -> LabCA:
    """A new CA and a server certificate for ``ips`` and DNS ``names`` (subject alt names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "natkit lab CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(n) for n in names]
    cn = names[0] if names else ips[0]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(later)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return LabCA(ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem.decode())


def spki_sha256(pem: str) -> str:
    """Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo (DER): the form
    Chromium's ``--ignore-certificate-errors-spki-list`` takes."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
