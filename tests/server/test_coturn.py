"""coturn run through natkit's options: auth, REST secrets, peer policy, RFC 5780, clean stop."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import netaddr
import pytest

from natkit.errors import ConfigError, PrerequisiteError
from natkit.server.coturn import (
    NATKIT_ONLY,
    CoturnServer,
    _sweep_stale_workdirs,
    coturn_peer_policy,
    default_denied_peers,
)
from natkit.server.service import TurnOptions, TurnService
from natkit.stun import Attr, Class, Message, Method, decode, long_term_key
from natkit.turn import AllocationQuota, FirstOf, NoAuth, RestSecrets, StaticUsers
from natkit.turn.policy import DefaultPeerPolicy
from tests._certs import self_signed

pytestmark = pytest.mark.timeout(60)
needs_coturn = pytest.mark.skipif(
    shutil.which("turnserver") is None, reason="coturn's turnserver is not installed"
)

REALM = "natkit-test"
LOOPBACK = [("127.0.0.1", 0)]


def transact(sock: socket.socket, msg: Message, key: bytes | None = None) -> Message:
    """One request/response over UDP (a few retransmissions, bounded)."""
    data = msg.encode(key=key) if key else msg.encode()
    for _ in range(4):
        sock.send(data)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                answer = decode(sock.recv(2048))
            except TimeoutError:
                break
            if answer.transaction_id == msg.transaction_id:
                return answer
    raise AssertionError(f"no answer to {msg!r}")


class Client:
    """A UDP TURN client made of the codec, enough for Allocate and CreatePermission."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(server)
        self.auth: list[tuple[Attr, str]] = []
        self.key: bytes | None = None

    def close(self) -> None:
        self.sock.close()

    def allocate(self, username: str, password: str) -> Message:
        first = transact(
            self.sock, Message(Method.ALLOCATE, Class.REQUEST).add(Attr.REQUESTED_TRANSPORT, 17)
        )
        assert first.cls == Class.ERROR and first.error_code.code == 401
        realm, nonce = first.get(Attr.REALM), first.get(Attr.NONCE)
        assert realm == REALM
        self.auth = [(Attr.USERNAME, username), (Attr.REALM, realm), (Attr.NONCE, nonce)]
        self.key = long_term_key(username, realm, password)
        return self.request(
            Message(Method.ALLOCATE, Class.REQUEST).add(Attr.REQUESTED_TRANSPORT, 17)
        )

    def request(self, msg: Message) -> Message:
        for attr, value in self.auth:
            msg.add(attr, value)
        return transact(self.sock, msg, self.key)

    def permit(self, peer_ip: str) -> Message:
        msg = Message(Method.CREATE_PERMISSION, Class.REQUEST).add(
            Attr.XOR_PEER_ADDRESS, (peer_ip, 9)
        )
        return self.request(msg)


def rest_credentials(secret: str, user: str = "alice", ttl: int = 600) -> tuple[str, str]:
    username = f"{int(time.time()) + ttl}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(") ")[-1][0] != "Z"


@needs_coturn
def test_static_users_binding_allocate_and_wrong_password() -> None:
    with CoturnServer(
        LOOPBACK,
        users={"bob": "s3cret"},
        realm=REALM,
        relay_ip="127.0.0.1",
        min_port=42000,
        max_port=42999,
    ) as turn:
        addr = turn.addresses_of("udp")[0]
        assert addr[0] == "127.0.0.1" and addr[1] != 3478
        assert turn.urls == [
            f"turn:127.0.0.1:{addr[1]}?transport=udp",
            f"turn:127.0.0.1:{addr[1]}?transport=tcp",
        ]
        assert turn.ice_server() == {"urls": turn.urls, "username": "bob", "credential": "s3cret"}
        assert "use-auth-secret" not in turn.config_path.read_text()
        client = Client(addr)
        try:
            binding = transact(client.sock, Message(Method.BINDING, Class.REQUEST))
            assert binding.cls == Class.SUCCESS
            assert binding.get(Attr.XOR_MAPPED_ADDRESS) == client.sock.getsockname()
            ok = client.allocate("bob", "s3cret")
            assert ok.cls == Class.SUCCESS, ok.error_code
            relay_ip, relay_port = ok.get(Attr.XOR_RELAYED_ADDRESS)
            assert relay_ip == "127.0.0.1" and 42000 <= relay_port <= 42999
        finally:
            client.close()
        wrong = Client(addr)
        try:
            bad = wrong.allocate("bob", "not-the-password")
            assert bad.cls == Class.ERROR and bad.error_code.code == 401
        finally:
            wrong.close()


@needs_coturn
def test_rest_secrets_rotation_and_peer_policy() -> None:
    with CoturnServer(
        LOOPBACK,
        auth_secrets=["old-secret", "new-secret"],
        realm=REALM,
        allow_peers=["127.0.0.0/8"],
        deny_peers=["127.0.0.99/32"],
    ) as turn:
        addr = turn.addresses_of("udp")[0]
        for secret in ("old-secret", "new-secret"):  # both secrets of a rotation work at once
            client = Client(addr)
            try:
                assert client.allocate(*rest_credentials(secret)).cls == Class.SUCCESS
            finally:
                client.close()
        stranger = Client(addr)
        try:
            bad = stranger.allocate(*rest_credentials("unknown-secret"))
            assert bad.cls == Class.ERROR and bad.error_code.code == 401
        finally:
            stranger.close()

        client = Client(addr)
        try:
            assert client.allocate(*rest_credentials("new-secret")).cls == Class.SUCCESS
            assert client.permit("127.0.0.1").cls == Class.SUCCESS  # opened by allow_peers
            for peer in (
                "127.0.0.99",
                "10.1.2.3",
                "169.254.169.254",
                "192.168.1.1",
                "100.64.0.1",
                "0.0.0.1",
                "224.0.0.1",
                "198.18.0.1",
            ):
                answer = client.permit(peer)
                assert answer.cls == Class.ERROR, peer
                assert answer.error_code.code == 403, (peer, answer.error_code)
        finally:
            client.close()


@needs_coturn
async def test_async_stop_leaves_no_process_even_on_error() -> None:
    turn = CoturnServer(LOOPBACK, no_auth=True)
    with pytest.raises(RuntimeError):
        async with turn:
            pid, workdir = turn.pid, turn.workdir
            assert pid is not None and alive(pid)
            raise RuntimeError("body failed")
    assert not alive(pid)
    assert not Path(workdir).exists()
    turn.stop()  # twice is fine


@needs_coturn
def test_rfc5780_mode_with_alternate_ip() -> None:
    with CoturnServer(LOOPBACK, stun_only=True, alternate_ip="127.0.0.2") as turn:
        ip, port = turn.addresses_of("udp")[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((ip, port))
            answer = transact(sock, Message(Method.BINDING, Class.REQUEST))
            assert answer.get(Attr.OTHER_ADDRESS) == ("127.0.0.2", port + 1)
        # CHANGE-REQUEST (change IP and port): the answer comes from the other address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2)
            request = Message(Method.BINDING, Class.REQUEST).add(Attr.CHANGE_REQUEST, 0x6)
            sock.sendto(request.encode(), (ip, port))
            data, source = sock.recvfrom(2048)
            assert decode(data).transaction_id == request.transaction_id
            assert source == ("127.0.0.2", port + 1)


def test_missing_binary_is_a_prerequisite_error() -> None:
    with pytest.raises(PrerequisiteError, match="coturn is not installed: apt-get install coturn"):
        CoturnServer(no_auth=True, binary="turnserver-not-here").start()


def test_users_and_secrets_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="static users and REST API shared secrets") as err:
        CoturnServer(users={"a": "b"}, auth_secrets=["s"])
    assert err.value.param == "auth_secrets"
    generated = CoturnServer()  # like TurnServer: a generated user, not an open relay
    assert generated.username == "natkit" and len(generated.password) >= 16
    assert generated.generated_user and isinstance(generated, TurnService)
    assert generated.listen == [("0.0.0.0", 3478)]
    with pytest.raises(ConfigError, match="bad peer range") as err:
        CoturnServer(no_auth=True, deny_peers=["10.0.0.0/33"])
    assert err.value.param == "deny_peers"


class _PythonAuth:
    def lookup(self, username: str, realm: str, source: tuple[str, int], now: float) -> str:
        return "pw"


class _PythonPolicy:
    def refuse(self, peer: tuple[str, int]) -> str | None:
        return None


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"auth": _PythonAuth()}, "auth"),
        ({"auth": FirstOf(StaticUsers({"a": "b"}), _PythonAuth())}, "auth"),
        ({"peer_policy": _PythonPolicy()}, "peer_policy"),
        ({"quota": AllocationQuota(per_source=2)}, "quota"),
        ({"software": "x"}, "software"),
        ({"strict_channels": True}, "strict_channels"),
        ({"metrics": "127.0.0.1:9641"}, "metrics"),
        ({"max_permissions": 10}, "max_permissions"),
    ],
)
def test_what_coturn_cannot_express_is_refused_naming_the_option(
    kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(ConfigError) as err:
        CoturnServer(LOOPBACK, **kwargs)
    assert err.value.param == param
    assert param in NATKIT_ONLY or param in ("auth", "peer_policy", "quota")


def test_builtin_objects_and_options_map_to_the_same_config() -> None:
    """The built-in authenticators, peer policy and quota are what the plain options are."""
    workdir = Path("/nonexistent")

    def conf(**kwargs: object) -> list[str]:
        text = CoturnServer([("127.0.0.1", 3478)], **kwargs).render_config(workdir)
        return [line for line in text.splitlines() if not line.startswith("#")]

    assert conf(users={"a": "b"}) == conf(auth=StaticUsers({"a": "b"}))
    assert conf(auth_secrets=["s1", "s2"]) == conf(auth=RestSecrets(["s1", "s2"]))
    assert conf(no_auth=True) == conf(auth=NoAuth())
    policy = conf(users={"a": "b"}, allow_peers=["10.0.0.0/8"], deny_peers=["10.9.0.0/16"])
    assert policy == conf(
        users={"a": "b"}, peer_policy=DefaultPeerPolicy(["10.0.0.0/8"], ["10.9.0.0/16"])
    )
    quota = conf(users={"a": "b"}, user_quota=3, max_allocations=9)
    assert "user-quota=3" in quota and "total-quota=9" in quota
    assert quota == conf(users={"a": "b"}, quota=AllocationQuota(per_user=3, total=9))
    options = TurnOptions(users={"a": "b"}, bandwidth=1000)
    assert "max-bps=1000" in conf(options=options)


def test_peer_policy_as_coturn_ranges() -> None:
    lines = coturn_peer_policy(["127.0.0.0/8"], ["127.0.0.99/32", "8.8.8.0/24"])
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in lines
    assert "denied-peer-ip=169.254.0.0-169.254.255.255" in lines
    assert "denied-peer-ip=8.8.8.0-8.8.8.255" in lines
    # the explicit deny stays a hole in the allowed loopback range (coturn checks allows first)
    assert "allowed-peer-ip=127.0.0.0-127.0.0.98" in lines
    assert "allowed-peer-ip=127.0.0.100-127.255.255.255" in lines
    assert "allow-loopback-peers" in lines and "no-multicast-peers" in lines
    assert "allow-loopback-peers" not in coturn_peer_policy()
    denied = netaddr.IPSet(default_denied_peers())
    for cidr in (
        "fc00::/7",
        "fe80::/10",
        "::ffff:10.0.0.0/104",
        "64:ff9b::a9fe:0/112",
        "fec0::/10",  # deprecated site-local
        "3fff::/20",  # RFC 9637 documentation
    ):
        assert netaddr.IPSet([cidr]) <= denied, cidr
    assert not denied & netaddr.IPSet(["8.8.8.8/32", "::ffff:8.8.8.8/128"])


@functools.cache
def _ranges(lines: tuple[str, ...], key: str) -> netaddr.IPSet:
    out = netaddr.IPSet()
    for line in lines:
        if line.startswith(key + "="):
            first, _, last = line.split("=", 1)[1].partition("-")
            out.add(netaddr.IPRange(first, last or first))
    return out


def coturn_permits(lines: list[str], address: netaddr.IPAddress) -> bool:
    """coturn 4.6's peer check (ns_turn_server.c good_peer_addr) run over config lines."""
    if "no-multicast-peers" in lines and address.is_multicast():
        return False
    if "allow-loopback-peers" not in lines and address.is_loopback():
        return False
    if int(address) == 0:
        return False

    def listed(key: str) -> bool:
        return address in _ranges(tuple(lines), key)

    return listed("allowed-peer-ip") or not listed("denied-peer-ip")


POLICIES = [
    ((), ()),
    (("127.0.0.0/8",), ("127.0.0.99/32",)),
    (("10.0.0.0/8", "fd00::/8", "::1/128"), ("10.1.0.0/16", "2001:4860::/32", "fd00:1::/32")),
]


@pytest.mark.parametrize(("allow", "deny"), POLICIES)
def test_coturn_lines_decide_like_natkit_policy(
    allow: tuple[str, ...], deny: tuple[str, ...]
) -> None:
    """Both engines refuse and admit the same peers: boundaries of every range, in every form."""
    lines = coturn_peer_policy(allow, deny)
    policy = DefaultPeerPolicy(allow, deny)
    samples: set[int | netaddr.IPAddress] = set()
    ranges = [
        netaddr.IPRange(*(line.split("=", 1)[1].split("-") * 2)[:2])
        for line in lines
        if "peer-ip=" in line
    ]
    ranges += [
        netaddr.IPRange(c.first, c.last)
        if c.version == 4
        else netaddr.IPRange(netaddr.IPAddress(c.first, 6), netaddr.IPAddress(c.last, 6))
        for c in map(netaddr.IPNetwork, [*allow, *deny])
    ]
    for r in ranges:
        for value in (r.first - 1, r.first, r.last, r.last + 1):
            if 0 <= value < (1 << (32 if r.version == 4 else 128)):
                samples.add(netaddr.IPAddress(value, r.version))
    rng = random.Random(5780)
    v4 = [netaddr.IPAddress(rng.getrandbits(32), 4) for _ in range(300)]
    v4 += [
        netaddr.IPAddress(a)
        for a in (
            "8.8.8.8",
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "192.0.0.9",
            "100.64.0.1",
            "1.1.1.1",
        )
    ]
    for a in v4:  # each IPv4 address in its IPv6 disguises too
        value = int(a)
        samples.update(
            {
                a,
                netaddr.IPAddress((0xFFFF << 32) | value, 6),
                netaddr.IPAddress((0xFFFF << 48) | value, 6),
                netaddr.IPAddress(int(netaddr.IPAddress("64:ff9b::")) | value, 6),
                netaddr.IPAddress((0x2002 << 112) | (value << 80) | 1, 6),
                netaddr.IPAddress(value, 6),
            }
        )
    samples.update(netaddr.IPAddress(rng.getrandbits(128), 6) for _ in range(300))
    samples.update(
        netaddr.IPAddress(a)
        for a in ("2001:4860:4860::8888", "2606:4700::1111", "fe80::1", "fd00::1", "::1", "::")
    )
    mismatches = [str(a) for a in samples if coturn_permits(lines, a) != policy.permits(str(a))]
    assert not mismatches, mismatches[:10]
    assert len(samples) > 1000


@needs_coturn
def test_tls_listener_answers_binding(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with CoturnServer(LOOPBACK, no_auth=True, tls_cert=cert, tls_key=key, tls_port=0) as turn:
        (tls_addr,) = turn.addresses_of("tls")
        assert turn.urls[-1] == f"turns:127.0.0.1:{tls_addr[1]}?transport=tcp"
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with socket.create_connection(tls_addr, timeout=3) as raw, context.wrap_socket(raw) as tls:
            request = Message(Method.BINDING, Class.REQUEST)
            tls.sendall(request.encode())
            answer = decode(tls.recv(2048))
            assert answer.transaction_id == request.transaction_id
            assert answer.cls == Class.SUCCESS


@needs_coturn
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux setpriv is not installed")
def test_coturn_dies_with_a_killed_parent() -> None:
    """Even when natkit is SIGKILLed (no cleanup runs), its coturn does not outlive it."""
    script = (
        "from natkit.server.coturn import CoturnServer\n"
        "import sys, time\n"
        "turn = CoturnServer([('127.0.0.1', 0)], no_auth=True).start()\n"
        "print(turn.pid, turn.workdir, flush=True)\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid_text, workdir = parent.stdout.readline().split()
        pid = int(pid_text)
        assert alive(pid)
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    # its temp dir outlived it; the next start sweeps such leftovers away
    assert Path(workdir).exists()
    _sweep_stale_workdirs(min_age=0)
    assert not Path(workdir).exists()


def test_own_addresses_are_denied_peers_in_the_generated_config(tmp_path: Path) -> None:
    from natkit.server._local import local_addresses

    def lines(listen: list[tuple[str, int]], **kw: object) -> netaddr.IPSet:
        text = CoturnServer(listen, users={"a": "b"}, **kw).render_config(tmp_path)
        denied = netaddr.IPSet()
        for line in text.splitlines():
            if line.startswith("denied-peer-ip="):
                first, _, last = line.split("=", 1)[1].partition("-")
                denied.add(netaddr.IPRange(first, last or first))
        allowed = netaddr.IPSet()
        for line in text.splitlines():
            if line.startswith("allowed-peer-ip="):
                first, _, last = line.split("=", 1)[1].partition("-")
                allowed.add(netaddr.IPRange(first, last or first))
        return denied - allowed

    # a public relay and external address: refused although they are global unicast
    refused = lines([("127.0.0.1", 3478)], relay_ip="127.0.0.1", external_ip="8.8.4.4")
    assert "8.8.4.4" in refused and "::ffff:8.8.4.4" in refused and "64:ff9b::808:404" in refused
    # a wildcard listener owns every local address of the host
    refused = lines([("0.0.0.0", 3478)])
    for address in local_addresses():
        if ":" not in address:
            assert netaddr.IPNetwork(address) in refused
    # an allow reopens an own IP (coturn cannot keep its ports refused: documented)
    assert "8.8.4.4" not in lines([("127.0.0.1", 3478)], external_ip="8.8.4.4", relay_ip="127.0.0.1",
                                  allow_peers=["8.8.4.0/24"])  # fmt: skip


def test_tls_files_are_made_absolute_and_must_be_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.chdir(tmp_path)
    turn = CoturnServer(LOOPBACK, no_auth=True, tls_cert="cert.pem", tls_key="key.pem")
    text = turn.render_config(tmp_path)
    assert f"cert={cert.resolve()}" in text and f"pkey={key.resolve()}" in text
    with pytest.raises(ConfigError, match=r"nope\.pem: no such file") as err:
        CoturnServer(LOOPBACK, no_auth=True, tls_cert="nope.pem", tls_key="key.pem")
    assert err.value.param == "tls_cert"


@needs_coturn
def test_relative_certificate_paths_serve_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--tls-cert cert.pem`: coturn could not find it and nothing listened (issue 15, P3)."""
    self_signed(tmp_path)
    monkeypatch.chdir(tmp_path)
    with CoturnServer(
        LOOPBACK, no_auth=True, tls_cert="cert.pem", tls_key="key.pem", tls_port=0
    ) as turn:
        (tls_addr,) = turn.addresses_of("tls")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(tls_addr, timeout=3) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(Message(Method.BINDING, Class.REQUEST).encode())
            assert decode(tls.recv(2048)).cls == Class.SUCCESS


@needs_coturn
def test_a_listener_that_does_not_come_up_is_an_error_not_a_url(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("nonsense\n")
    turn = CoturnServer(LOOPBACK, no_auth=True, tls_cert=cert, tls_key=key, tls_port=0,
                        start_timeout=4)  # fmt: skip
    with pytest.raises(PrerequisiteError, match="tls") as err:
        turn.start()
    assert "\n" not in str(err.value)
    assert turn.process is None  # stopped, nothing left running
