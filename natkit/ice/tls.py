"""TLS contexts for stuns:/turns: and a one-line summary of a server certificate."""

from __future__ import annotations

import datetime as dt
import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID

from natkit.errors import ConfigError


def verifying_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verify the chain and the name, like a browser (system CAs, or ``ca_file``).
    A CA file that cannot be loaded is a UsageError."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise ConfigError(f"CA file {ca_file}: no such file", param="ca_file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"CA file {ca_file}: not PEM certificates ({exc})",
                          param="ca_file") from None


def insecure_context() -> ssl.SSLContext:
    """Accept any certificate (``--insecure``); the report says so."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe_certificate(der: bytes | None, now: dt.datetime | None = None) -> str:
    """Subject, issuer (or 'self-signed') and expiry, e.g. 'CN=turn.example.com, by R3,
    expires 2026-01-31 (70 days)'."""
    if not der:
        return "no certificate"
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "unreadable certificate"
    now = now or dt.datetime.now(dt.UTC)
    subject = _cn(cert.subject) or cert.subject.rfc4514_string() or "(no subject)"
    issuer = "self-signed" if cert.issuer == cert.subject else f"by {_cn(cert.issuer) or '?'}"
    not_after = cert.not_valid_after_utc
    days = (not_after - now).days
    if not_after < now:
        expiry = f"EXPIRED {not_after:%Y-%m-%d}"
    else:
        expiry = f"expires {not_after:%Y-%m-%d} ({days} days)"
    return f"CN={subject}, {issuer}, {expiry}"


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None
