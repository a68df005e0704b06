"""What each ICE stack supports, as data the lab's expectations can be derived from.

Every adapter has a ``capabilities`` attribute, a :class:`Capabilities`. The fields describe the
stack **as natkit runs it** (its peer program's settings), each with the sources it was read
from, so that an expectation can say why a stack differs ("pion gathers no TCP candidates").
A user's ``--peer`` command has ``Capabilities.unknown()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AIORTC", "LIBNICE", "PION", "Capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """What one stack does, as natkit runs it (``None``: not known).

    * ``tcp_candidates``: ICE-TCP host candidates (RFC 6544) it gathers and signals:
      ``()`` none, else the tcptypes (``"active"``, ``"passive"``, ``"so"``).
    * ``turn``: TURN transports it can allocate over: ``"udp"``, ``"tcp"``, ``"tls"``
      (``turns:`` over TCP), ``"dtls"`` (``turns:`` over UDP).
    * ``turn_servers``: how many TURN URLs it uses at once (``None``: all it is given).
    * ``consent_freshness``: RFC 7675: the selected pair is given up when the peer stops
      answering checks for 30 s. ``keepalive`` says what it sends on the selected pair:
      ``"binding-request"`` (answered, so usable as consent) or ``"binding-indication"``.
    * ``prflx``: learns peer-reflexive candidates from incoming checks (RFC 8445 §7.3.1.3):
      needed whenever the signaled candidate is not the address the other NAT maps to.
    * ``trickle``: accepts trickled candidates (``candidate`` messages) from the other side.
    * ``nomination``: ``"regular"`` or ``"aggressive"``.
    * ``relay_policy``: honours ``iceTransportPolicy: "relay"``.
    * ``dtls_certificate``: the key type of its DTLS certificate (``"ecdsa"``, ``"rsa"``);
      ``dtls_client_suites``: the certificate types its DTLS client accepts from a server.
      A pair connects only if the DTLS client accepts the server's certificate. The answerer
      picks the roles, and aiortc, pion and webrtcbin all answer as the DTLS client: the
      caller is the server.
    """

    stack: str
    tcp_candidates: tuple[str, ...] | None = None
    turn: tuple[str, ...] | None = None
    turn_servers: int | None = None
    consent_freshness: bool | None = None
    keepalive: str | None = None
    prflx: bool | None = None
    trickle: bool | None = None
    nomination: str | None = None
    relay_policy: bool | None = None
    dtls_certificate: str | None = None
    dtls_client_suites: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def unknown(cls, stack: str) -> Capabilities:
        return cls(stack, notes=("a user's peer command: nothing is known of its ICE stack",))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


PION = Capabilities(
    stack="pion/webrtc v3 (Debian golang-github-pion-webrtc.v3-dev; pion/ice v2, pion/turn v2)",
    # pion/ice v2 gathers TCP candidates only through a TCPMux set in the SettingEngine, and
    # then only passive ones; natkit's peer sets none. Remote active candidates are ignored.
    tcp_candidates=(),
    turn=("udp", "tcp", "tls", "dtls"),
    turn_servers=None,
    # Binding requests on the selected pair every 2 s (keepaliveInterval), but no 30 s consent
    # expiry: the pair goes "disconnected" after 5 s and "failed" after 25 s of silence.
    consent_freshness=False,
    keepalive="binding-request",
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="ecdsa",
    dtls_client_suites=("ecdsa", "rsa"),
    notes=(
        "ICE-TCP: passive only and only with SettingEngine.SetICETCPMux (not set by natkit's peer)",
        "host candidates: loopback excluded; mDNS query-only by default (host candidates are plain addresses)",
        "nomination waits for the acceptance timers (host 0 s, srflx 0.5 s, prflx 1 s, relay 2 s)",
    ),
    sources=(
        "pion/ice v2.3.1 gather.go (gatherCandidatesLocal: tcp only via tcpMux, TCPTypePassive; gatherCandidatesRelay: turn udp/tcp, turns tcp (TLS) and udp (DTLS))",
        "pion/ice v2.3.1 agent.go (AddRemoteCandidate ignores tcptype active; handleInbound creates prflx remote candidates; checkKeepalive sends binding requests)",
        "pion/ice v2.3.1 agent_config.go (defaultKeepaliveInterval 2 s, defaultDisconnectedTimeout 5 s, defaultFailedTimeout 25 s, acceptance min waits)",
        "pion/ice v2.3.1 selection.go (controllingSelector.nominatePair: USE-CANDIDATE in a separate check: regular nomination)",
        "pion/webrtc v3.1.56 peerconnection.go (AddICECandidate, OnICECandidate: trickle); certificate.go (GenerateCertificate: ECDSA P-256)",
        "pion/dtls v2 cipher_suite.go (ECDHE-ECDSA and ECDHE-RSA AES-GCM suites by default)",
    ),
)

LIBNICE = Capabilities(
    stack="libnice 0.1.21 through GStreamer 1.22 webrtcbin (Debian gstreamer1.0-nice, gstreamer1.0-plugins-bad)",
    # webrtcbin leaves libnice's ice-tcp on: active and passive TCP host candidates (RFC 6544).
    tcp_candidates=("active", "passive"),
    # "turn:" URLs: UDP (transport=udp), TCP (transport=tcp), both without a transport;
    # "turns:": TLS over TCP. No TURN over DTLS.
    turn=("udp", "tcp", "tls"),
    turn_servers=None,
    # libnice implements RFC 7675, but webrtcbin 1.22 does not enable it (later GStreamer does);
    # keepalives are binding indications (keepalive-conncheck off).
    consent_freshness=False,
    keepalive="binding-indication",
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="rsa",
    dtls_client_suites=("ecdsa", "rsa"),
    notes=(
        "as the offerer it is the DTLS server with an RSA certificate: a DTLS client that takes ECDSA only (aiortc) cannot connect to it",
        "given TURN over UDP and over TCP of one server, it signaled only the TCP relay in natkit's runs",
        "one STUN server only (webrtcbin's stun-server property); every TURN URL through add-turn-server",
        "UPnP port mapping is on by default in libnice; natkit's peer turns it off",
    ),
    sources=(
        "GStreamer gst-libs/gst/webrtc/nice/nice.c (gst_webrtc_nice_constructed: ICE_TRICKLE | REGULAR_NOMINATION, CONSENT_FRESHNESS only in later releases; _add_turn_server: turn udp/tcp, turns -> TURN_TLS; get_selected_pair)",
        "the NiceAgent webrtcbin 1.22 makes, read at run time: ice-tcp True, ice-trickle True, consent-freshness False, keepalive-conncheck False, nomination-mode REGULAR, upnp True",
        "GStreamer ext/dtls gstdtlscertificate.c (the generated certificate is RSA); natkit's runs: webrtcbin offering to aiortc fails with OpenSSL 'no shared cipher'",
        "libnice agent/conncheck.c (peer-reflexive candidates from incoming checks, RFC 5245 §7.2.1.3)",
    ),
)

AIORTC = Capabilities(
    stack="aiortc (aioice underneath)",
    tcp_candidates=(),
    turn=("udp", "tcp", "tls"),
    turn_servers=None,  # natkit's adapter allocates on every TURN URL (aiortc itself: one)
    consent_freshness=True,
    keepalive="binding-request",
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="ecdsa",
    dtls_client_suites=("ecdsa",),
    notes=("natkit's adapter sends its candidates inside the SDP and accepts trickled ones",),
    sources=(
        "aiortc 1.16 rtcdtlstransport.py (ECDSA P-256 certificate; client cipher list ECDHE-ECDSA-* only)",
        "aioice 0.13 ice.py (query_consent: CONSENT_INTERVAL 5 s, CONSENT_FAILURES 6; prflx from checks; a second check with USE-CANDIDATE after success: regular nomination; turn_ssl, turn_transport)",
        "natkit/lab/stacks/aiortc.py (_gather_relays; offer/answer with candidates inside; _Inbox applies trickled candidates)",
    ),
)
