"""Start coturn on loopback for a test (free ports, ready when it answers Binding, always
stopped). Skips when the turnserver binary is missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from natkit.stun import Class, Message, Method, decode


@dataclass
class Coturn:
    port: int
    tls_port: int | None
    proc: subprocess.Popen[bytes]
    log: str


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _ready(port: int, deadline: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        while time.monotonic() < deadline:
            msg = Message(Method.BINDING, Class.REQUEST)
            with contextlib.suppress(OSError):
                s.sendto(msg.encode(), ("127.0.0.1", port))
                data = s.recv(2048)
                if decode(data).transaction_id == msg.transaction_id:
                    return True
            time.sleep(0.02)
    return False


@contextlib.contextmanager
def coturn(*options: str, tls: tuple[str, str] | None = None) -> Iterator[Coturn]:
    """coturn with ``options`` (e.g. "--lt-cred-mech", "--user=u:p"); ``tls`` = (cert, key)."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    port = free_port()
    tls_port = free_port() if tls else None
    workdir = tempfile.mkdtemp(prefix="nkice-coturn-")
    log = os.path.join(workdir, "turn.log")
    cmd = [
        binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
        "--relay-ip=127.0.0.1", "--min-port=40000", "--max-port=60000", "--no-cli",
        "--no-dtls", "--allow-loopback-peers", f"--log-file={log}", "--no-stdout-log",
        f"--pidfile={workdir}/turn.pid", "--realm=natkit.test", "--no-multicast-peers",
    ]
    if tls:
        cmd += [f"--tls-listening-port={tls_port}", f"--cert={tls[0]}", f"--pkey={tls[1]}"]
    else:
        cmd.append("--no-tls")
    cmd += list(options)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        if not _ready(port, time.monotonic() + 5):
            raise RuntimeError(f"coturn did not start: {' '.join(cmd)}")
        yield Coturn(port, tls_port, proc, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(3)
        shutil.rmtree(workdir, ignore_errors=True)


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
