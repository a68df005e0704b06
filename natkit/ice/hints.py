"""What to fix, from what a STUN/TURN server said (or did not say)."""

from __future__ import annotations

import time

from natkit.ice.config import MS_TIMESTAMP, IceUrl, rest_expiry, rest_timestamp_in_ms

# STUN/TURN error codes (RFC 8489 §14.8, RFC 8656 §19) -> what usually causes them.
ERROR_HINTS = {
    300: "the server redirects elsewhere (ALTERNATE-SERVER): point the URL at that server",
    400: "the server rejected the request as malformed: is this really a STUN/TURN port?",
    403: "the server forbids this (coturn: denied-peer-ip, or no-loopback-peers for a loopback "
    "peer; allow-loopback-peers is for tests only)",
    420: "the server does not understand a mandatory attribute: a very old or partial server",
    437: "allocation mismatch: the 5-tuple already has (or no longer has) an allocation; retry "
    "from a new local port",
    438: "stale nonce again after a retry: the server's nonce lifetime is broken or its clock jumps",
    440: "address family not supported: ask for an IPv4 relay or enable IPv6 relaying",
    441: "wrong credentials: the request used a different username than the one that created "
    "the allocation",
    442: "unsupported transport protocol: the server does not relay UDP (coturn: no-udp-relay)",
    443: "peer address family mismatch: the peer is IPv6 and the relay IPv4 (or back)",
    486: "allocation quota reached for this user (coturn: user-quota / total-quota): close old "
    "sessions or raise the quota",
    500: "server error: see the TURN server's log",
    508: "insufficient capacity: the server has no free relay port (coturn: widen "
    "min-port..max-port, or it is overloaded)",
}


def hint_for_error(code: int, url: IceUrl, username: str | None, step: str) -> str:
    """A hint for an error response ``code`` seen at ``step``."""
    if code == 401:
        if step == "auth-challenge":
            return "the server demands credentials even for the first Allocate without any"
        return hint_for_401(username)
    if code == 403 and step in ("permission", "channel"):
        return ("the server refuses the test peer address: its peer policy (coturn: "
                "denied-peer-ip, no-loopback-peers) blocks it")
    return ERROR_HINTS.get(code, f"error {code}: see the server's documentation and log")


def hint_for_401(username: str | None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    ms = rest_timestamp_in_ms(username or "")
    if ms is not None:
        return MS_TIMESTAMP.format(stamp=ms) + "; the server reads it as a date far ahead"
    expiry = rest_expiry(username or "")
    if expiry is not None:
        if expiry < now:
            return (f"REST credential expired {int(now - expiry)} s ago (username timestamp "
                    f"{int(expiry)}): fetch a fresh one; if it was just issued, the clock of "
                    "the credential service is behind or its TTL is too short")
        return ("REST credential rejected although not expired: the shared secret of the "
                "credential service differs from the TURN server's (coturn: "
                "static-auth-secret), or the clocks differ")
    return ("wrong username or password (coturn: user=NAME:PASSWORD with lt-cred-mech, and the "
            "realm must match); for time-limited REST credentials the server needs "
            "use-auth-secret")


def hint_for_echo(step: str, direction: str, passed: set[str]) -> str:
    """What a relayed datagram that did not arrive means, given the steps that passed."""
    if step == "channel" and "relay-echo" in passed:
        if direction == "outbound":
            return ("data in Send indications was relayed both ways, but ChannelData from this "
                    "client never reached the peer: the server (or a proxy or load balancer in "
                    "front of it that passes only STUN messages) drops ChannelData; browsers "
                    "send media as ChannelData once a channel is bound")
        return ("data in Send/Data indications was relayed both ways, but after ChannelBind "
                "the peer's data did not come back as ChannelData: the server (or something in "
                "front of it) does not deliver on bound channels")
    if direction == "outbound":
        return ("the relay delivered the peer's datagram to this client but not this client's "
                "datagram to the peer: the server drops Send indications, or the relay's "
                "outbound traffic is firewalled")
    return ("nothing came back through the relay: relay ports (coturn min-port..max-port) "
            "are firewalled, or the server advertises an address that is not its own "
            "(coturn: external-ip)")


def hint_for_timeout(url: IceUrl, step: str, port: int, passed: set[str] | None = None) -> str:
    answered = {"auth-challenge", "binding", "allocate", "permission"} & (passed or set())
    if answered and step in ("allocate", "permission", "auth-challenge"):
        return (f"the server answered this client before ({', '.join(sorted(answered))}) but "
                f"not its {step} request: it is overloaded, rate-limits this source, or drops "
                "authenticated requests (see its log)")
    if step == "relay-echo" or step == "channel":
        return ("nothing came back through the relay: relay ports (coturn min-port..max-port) "
                "are firewalled, or the server advertises an address that is not its own "
                "(coturn: external-ip)")
    if step == "tls":
        return (f"no TLS handshake with port {port}: either a firewall drops the connection, or "
                "the port speaks plain TURN/STUN rather than TLS (coturn serves TLS on "
                "tls-listening-port, 5349 by default)")
    if url.protocol == "udp":
        return (f"no answer over UDP to port {port}: a firewall drops UDP, or the port is wrong; "
                f"offer a TCP/TLS fallback too (turn:{url.host}:{port}?transport=tcp, "
                f"turns:{url.host}:443)")
    return (f"no answer over {url.protocol.upper()} to port {port}: a firewall drops the "
            "connection or the host is wrong")


def hint_for_refused(url: IceUrl, port: int) -> str:
    return (f"nothing listens on port {port} over {url.protocol.upper()}: wrong port, the server "
            "is down, or it does not serve this transport (coturn: listening-port, "
            "tls-listening-port, no-udp, no-tcp)")


def hint_for_tls(verify_error: bool, url: IceUrl) -> str:
    if verify_error:
        return (f"the certificate is not trusted or does not name {url.host}: use a certificate "
                f"from a public CA that covers {url.host} (coturn: cert=, pkey=), or pass "
                "--insecure to test with a self-signed one (browsers will still refuse it)")
    return ("the TLS handshake failed: the port may speak plain TURN/STUN rather than TLS "
            "(turns:/stuns: need coturn's tls-listening-port, 5349 or 443), or the server has "
            "no certificate")


OPEN_RELAY = ("open relay: the server allocates relays without credentials, so anyone can use "
              "it; enable authentication (coturn: lt-cred-mech with user=, or use-auth-secret "
              "with static-auth-secret)")
PRIVATE_RELAY = ("the server is public but advertises a private relay address: it sits behind "
                 "NAT without knowing its public address (coturn: external-ip=PUBLIC/PRIVATE)")
NO_CHALLENGE = ("the 401 lacks REALM or NONCE: this is not a TURN server speaking long-term "
                "credentials (RFC 8656)")
INTEGRITY = ("the server's response failed its integrity check: the realm or password the server "
             "uses differs from the one that answered, or something in between alters messages")
DNS_UNREACHABLE = ("the DNS server did not answer at all, which says nothing about the name: "
                   "check /etc/resolv.conf and that this host can reach its DNS server")
UDP_BLOCKED_HERE = ("this host cannot send UDP, so the relay's UDP side cannot be exercised "
                    "from here; run the check from a host that can, or trust the allocation "
                    "over TCP/TLS, which worked")
LOCAL_UDP_BLOCKED = ("this host's own firewall drops outgoing UDP: from here only TURN over "
                     "TCP/TLS can work (turn:HOST:PORT?transport=tcp, turns:HOST:443)")
