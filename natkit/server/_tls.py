"""TLS for the servers' stream listeners (turns:/stuns:): the context, and a TLS session run
over memory buffers so that a failed handshake can be told apart and counted.

asyncio's own TLS transport drops a failed handshake before the protocol hears of it (an
``ssl.SSLError`` is an ``OSError``, logged at debug level only), so an operator could not see
why a client never got through: libnice sending plain STUN to a ``turns:`` port, a client
asking for a name the certificate does not carry, an old TLS version, a scanner that never
finishes. :class:`TlsSession` is what asyncio does underneath (``ssl.MemoryBIO`` and
``SSLContext.wrap_bio``), driven by the listener's protocol, which names each failure with one
of :data:`FAILURE_KINDS`.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

from natkit.errors import ConfigError

#: how a TLS handshake failed, as counted in the metrics and named in the log
FAILURE_KINDS = (
    "plain_stun",  # STUN or ChannelData sent in the clear to the TLS port
    "not_tls",  # something else that is not TLS (HTTP, a scanner's probe)
    "bad_version",  # a TLS version (or no cipher) the server does not accept
    "no_sni_match",  # the client asked for a name the certificate does not carry, and gave up
    "cert_rejected",  # the client refused the certificate (unknown CA, expired...)
    "timeout",  # the handshake did not finish in time
    "aborted",  # the client closed the connection during the handshake
    "other",
)

_COOKIE = b"\x21\x12\xa4\x42"
_HTTP = (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"CONN", b"DELE", b"PRI ")
_BAD_VERSION = (
    "UNSUPPORTED_PROTOCOL",
    "WRONG_VERSION_NUMBER",
    "VERSION_TOO_LOW",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
)
_CERT_REJECTED = (
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "TLSV1_ALERT_DECRYPT_ERROR",
    "TLSV1_ALERT_ACCESS_DENIED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_UNRECOGNIZED_NAME",
    "TLSV1_ALERT_UNRECOGNIZED_NAME",
)


class TlsFailure(Exception):
    """A handshake (or the TLS stream after it) failed; ``kind`` is one of FAILURE_KINDS."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def server_context(
    cert: str | os.PathLike[str] | None, key: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    """None without a certificate; both files are needed, and must load."""
    if bool(cert) != bool(key):
        raise ConfigError("TLS needs both a certificate and a key", param="tls_key" if cert else "tls_cert")
    if not (cert and key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}", param="tls_cert") from None
    ctx.sni_callback = _record_sni
    return ctx


def _record_sni(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
    """Keep the name the client asked for (SNI) on its connection; the handshake goes on with
    the one certificate (a client that wanted another name decides)."""
    obj.natkit_sni = name  # type: ignore[union-attr]


def certificate_names(cert: str | os.PathLike[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(DNS names, IP addresses) the first certificate of a PEM file is valid for: its
    subjectAltName entries, or its common name when it has none."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        pem = Path(cert).read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
    except (OSError, ValueError):
        return frozenset(), frozenset()
    dns: set[str] = set()
    ips: set[str] = set()
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            dns.add(str(attribute.value).lower())
    return frozenset(dns), frozenset(ips)


def name_matches(name: str, dns: frozenset[str], ips: frozenset[str]) -> bool:
    """True when the certificate names ``name`` (a wildcard covers one label)."""
    name = name.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name)) in ips
    except ValueError:
        pass
    if name in dns:
        return True
    _, dot, rest = name.partition(".")
    return bool(dot) and f"*.{rest}" in dns


def classify_clear_text(first: bytes) -> str:
    """What a connection's first bytes are, when they are not a TLS handshake record."""
    if len(first) >= 8 and first[0] < 0x40 and first[4:8] == _COOKIE:
        return "plain_stun"
    if first[:4] in _HTTP:
        return "not_tls"
    if first and 0x40 <= first[0] <= 0x4F:
        return "plain_stun"  # ChannelData (RFC 8656 channel numbers)
    return "not_tls"


def classify_error(exc: ssl.SSLError, sni_mismatch: bool) -> str:
    reason = getattr(exc, "reason", None) or ""
    if reason in _BAD_VERSION or "VERSION" in reason:
        return "bad_version"
    if reason in _CERT_REJECTED or "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        return "no_sni_match" if sni_mismatch else "cert_rejected"
    if reason == "HTTP_REQUEST" or reason == "HTTPS_PROXY_REQUEST":
        return "not_tls"
    if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason:
        return "no_sni_match" if sni_mismatch else "aborted"
    return "no_sni_match" if sni_mismatch else "other"


class TlsSession:
    """The server side of one TLS connection over memory buffers.

    :meth:`feed` takes bytes from the network and returns the plaintext they completed (and
    queues what must go back: :meth:`pending`); :meth:`encrypt` turns plaintext into records.
    A failure raises :class:`TlsFailure` with its kind. ``names`` are the certificate's
    (DNS names, IPs), to tell a client that asked for another name (SNI) from other failures.
    """

    __slots__ = ("_in", "_obj", "_out", "established", "first", "names", "server_name")

    def __init__(
        self, ctx: ssl.SSLContext, names: tuple[frozenset[str], frozenset[str]] | None = None
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.established = False
        self.first = True
        self.names = names
        self.server_name: str | None = None

    @property
    def sni_mismatch(self) -> bool:
        self.server_name = getattr(self._obj, "natkit_sni", None)
        if self.server_name is None or self.names is None or not any(self.names):
            return False
        return not name_matches(self.server_name, *self.names)

    def feed(self, data: bytes) -> bytes:
        if self.first:
            self.first = False
            if data and data[0] != 0x16:  # not a TLS handshake record
                raise TlsFailure(classify_clear_text(data), f"first byte 0x{data[0]:02x}")
        self._in.write(data)
        if not self.established:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            except ssl.SSLError as exc:
                raise TlsFailure(classify_error(exc, self.sni_mismatch), exc.reason or "") from None
            self.established = True
        chunks = []
        while True:
            try:
                chunk = self._obj.read(1 << 16)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise TlsFailure("closed", "close_notify") from None
            except ssl.SSLError as exc:
                raise TlsFailure("other", exc.reason or str(exc)) from None
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def pending(self) -> bytes:
        """Records to send (handshake messages, alerts, encrypted data)."""
        return self._out.read()

    def encrypt(self, data: bytes) -> bytes:
        self._obj.write(data)
        return self._out.read()
