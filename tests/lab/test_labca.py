"""The lab CA: a server certificate for the TURN/TLS listener, its chain and the CA's key pin."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from natkit.lab.labca import make_lab_ca, spki_sha256


def test_the_chain_ends_with_the_ca_and_the_pin_is_the_cas_key() -> None:
    ca = make_lab_ca(["203.0.113.4"], ["turn.lab.natkit"])
    certs = x509.load_pem_x509_certificates(ca.chain_pem.encode())
    assert [c.subject for c in certs] == [x509.load_pem_x509_certificate(ca.cert_pem.encode()).subject,
                                         x509.load_pem_x509_certificate(ca.ca_pem.encode()).subject]
    der = certs[1].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki_sha256(ca.ca_pem) == base64.b64encode(hashlib.sha256(der).digest()).decode()
    assert spki_sha256(ca.ca_pem) != spki_sha256(ca.cert_pem)


def test_chromium_starts_trusting_the_lab_ca_it_was_prepared_with(monkeypatch: pytest.MonkeyPatch) -> None:
    from natkit.lab.stacks import chromium

    seen: dict[str, Any] = {}

    async def launch(**kw: Any) -> Any:
        seen.update(kw)
        raise OSError("not started in this test")

    monkeypatch.setattr(chromium.ChromiumBrowser, "launch", staticmethod(launch))
    ca = make_lab_ca(["203.0.113.4"])
    peer = chromium.ChromiumPeer()
    peer.ca_pem = ca.ca_pem
    with pytest.raises(OSError):
        asyncio.run(peer.launch(loopback=False))
    assert seen["extra_flags"] == [f"--ignore-certificate-errors-spki-list={spki_sha256(ca.ca_pem)}"]
