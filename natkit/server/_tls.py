"""The TLS context of a server (turns:/stuns:), or a one-line UsageError."""

from __future__ import annotations

import os
import ssl

from natkit.errors import UsageError


def server_context(
    cert: str | os.PathLike[str] | None, key: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    """None without a certificate; both files are needed, and must load."""
    if bool(cert) != bool(key):
        raise UsageError("TLS needs both --tls-cert FILE and --tls-key FILE")
    if not (cert and key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return ctx
