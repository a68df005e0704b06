"""What each ICE stack supports, as data the lab's expectations can be derived from.

Every adapter has a ``capabilities`` attribute, a :class:`Capabilities`. The fields describe the
stack **as natkit runs it** (its peer program's settings), each with the sources it was read
from, so that an expectation can say why a stack differs ("pion gathers no TCP candidates").
A user's ``--peer`` command has ``Capabilities.unknown()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AIORTC", "CHROMIUM", "FIREFOX", "LIBNICE", "PEER_CAPS", "PION", "Capabilities"]

# The words of ``--peer-caps NAME=LIST`` (docs/lab-peers.md), what each declares.
PEER_CAPS = {
    "relay-udp": "allocates on TURN over UDP (turn:...?transport=udp)",
    "relay-tcp": "allocates on TURN over TCP (turn:...?transport=tcp)",
    "relay-tls": "allocates on TURN over TLS (turns:, trusting NATKIT_CA_FILE)",
    "relay-dtls": "allocates on TURN over DTLS",
    "ice-tcp": "gathers ICE-TCP host candidates (RFC 6544)",
    "ipv6": "gathers and pairs IPv6 candidates",
    "idle": "honours NATKIT_IDLE_S (the longevity path)",
    "keepalive=S": "sends on an idle selected pair every S seconds",
    "dtls=ecdsa|rsa": "its DTLS certificate's key type",
    "none": "none of these",
}


@dataclass(frozen=True)
class Capabilities:
    """What one stack does, as natkit runs it (``None``: not known).

    * ``tcp_candidates``: its ICE-TCP host candidates (RFC 6544), as tcptypes: ``()`` none,
      ``"active"``: it dials a remote passive candidate (signaled or not: the listener learns
      the dialer as a peer-reflexive TCP candidate), ``"passive"``: it listens on a TCP host
      candidate it signals, ``"so"``: simultaneous open. The model pairs active with passive
      on the host path.
    * ``turn``: TURN transports it can allocate over: ``"udp"``, ``"tcp"``, ``"tls"``
      (``turns:`` over TCP), ``"dtls"`` (``turns:`` over UDP).
    * ``turn_servers``: how many TURN URLs it uses at once (``None``: all it is given).
    * ``keepalive_s``: seconds between the packets it sends on an idle selected pair.
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
      picks the roles, and aiortc, pion, webrtcbin and both browsers answer as the DTLS
      client (``a=setup:active``): the caller is the server.
    * ``turn_tls_ip_literal``: a ``turns:`` URL whose host is an IP address is used (False: it
      is dropped, so TURN over TLS to a lab address gathers nothing).
    * ``redundant_srflx``: signals a server-reflexive candidate equal to its host address
      (behind no NAT). False: it drops it as redundant (RFC 8445 §5.1.3), so on the srflx
      path such a peer signals no candidate at all.
    * ``gives_up_without_candidates``: the roles in which it fails at once when the other
      side's description holds no candidate, without waiting for peer-reflexive ones.
    * ``mdns_host_candidates``: hides host addresses behind ``.local`` names by default
      (natkit runs it with that off); ``resolves_mdns``: resolves remote ``.local`` names.
    * ``relay_protocol_stats``: its stats name the protocol to the TURN server.
    * ``host_candidates_without_default_route``: gathers host candidates in a namespace
      without a default route.
    * ``hides_prflx_address``: its stats give no address for a remote peer-reflexive
      candidate (only the port).
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
    turn_tls_ip_literal: bool | None = None
    redundant_srflx: bool | None = None
    gives_up_without_candidates: tuple[str, ...] | None = None
    mdns_host_candidates: bool | None = None
    resolves_mdns: bool | None = None
    relay_protocol_stats: bool | None = None
    host_candidates_without_default_route: bool | None = None
    hides_prflx_address: bool | None = None
    notes: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=(), compare=False)
    # IPv6 candidates (None: not known; False: an IPv6 case cannot connect through it).
    ipv6: bool | None = None
    # Honours the contract's NATKIT_IDLE_S (longevity: idles, then echoes again). False: its
    # longevity cases are left out (an echo without the idle would pass without testing).
    idle: bool | None = None
    # Seconds between packets it sends on the selected pair while idle (consent checks or
    # keepalives): what keeps a NAT's UDP mapping alive through a quiet call. For the built-in
    # stacks it is measured: the gaps between a side's STUN packets on the pair in the capture
    # of `natkit lab run --full --only longevity --pcap F`.
    keepalive_s: float | None = None

    @classmethod
    def declared(cls, stack: str, spec: str) -> Capabilities:
        """What a user's peer says it supports: ``spec`` is ``--peer-caps``' comma-separated
        list (:data:`PEER_CAPS`); what it does not name it does not do. ConfigError
        (param="peer-caps") for a word that is not one."""
        from natkit.errors import ConfigError

        words = [w.strip() for w in spec.split(",") if w.strip()]
        if not words:
            raise ConfigError(f"{stack}: name what the peer supports ({', '.join(PEER_CAPS)}), or 'none'", param="peer-caps")
        turn: list[str] = []
        flags: set[str] = set()
        keepalive: float | None = None
        cert: str | None = None
        for w in words:
            key, _, value = w.partition("=")
            if key.startswith("relay-") and key[6:] in ("udp", "tcp", "tls", "dtls") and not value:
                turn.append(key[6:])
            elif key in ("ice-tcp", "ipv6", "idle", "none") and not value:
                flags.add(key)
            elif key == "keepalive" and value:
                try:
                    keepalive = float(value)
                except ValueError:
                    keepalive = -1.0
                if not 0 < keepalive <= 3600:
                    raise ConfigError(f"{stack}: keepalive={value}: give the seconds between its packets on an idle pair "
                                      "(0 < S <= 3600)", param="peer-caps")
            elif key == "dtls" and value in ("ecdsa", "rsa"):
                cert = value
            else:
                raise ConfigError(f"{stack}: {w!r} is not a capability; give a comma-separated list of "
                                  f"{', '.join(PEER_CAPS)}", param="peer-caps")
        if "none" in flags and (len(words) > 1):
            raise ConfigError(f"{stack}: 'none' stands alone", param="peer-caps")
        order = ("udp", "tcp", "tls", "dtls")
        return cls(
            stack, tcp_candidates=("active", "passive") if "ice-tcp" in flags else (),
            turn=tuple(t for t in order if t in turn), turn_tls_ip_literal="tls" in turn, ipv6="ipv6" in flags,
            idle="idle" in flags, keepalive_s=keepalive, dtls_certificate=cert,
            notes=(f"declared with --peer-caps {stack}={spec}",),
        )

    @classmethod
    def unknown(cls, stack: str) -> Capabilities:
        return cls(stack, notes=("a user's peer command: nothing is known of its ICE stack",))

    @property
    def known(self) -> bool:
        """Whether anything is known of the stack (a user's ``--peer`` knows nothing)."""
        return any(v is not None for k, v in asdict(self).items() if k not in ("stack", "notes", "sources"))

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
    # measured in natkit's longevity cases: a Binding request every 2.0 s (median) while idle
    keepalive_s=2.0,
    idle=True,  # natkit's peer idles on NATKIT_IDLE_S
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="ecdsa",
    dtls_client_suites=("ecdsa", "rsa"),
    turn_tls_ip_literal=True,
    redundant_srflx=True,
    gives_up_without_candidates=(),
    mdns_host_candidates=False,
    resolves_mdns=False,
    relay_protocol_stats=True,
    hides_prflx_address=False,
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
    # "turn:" URLs: UDP (transport=udp), TCP (transport=tcp), both without a transport.
    # "turns:" becomes NICE_RELAY_TYPE_TURN_TLS, which in RFC 5245 mode is plain TURN over TCP:
    # libnice has no TLS client (its pseudo-SSL socket is a canned handshake for Google's and
    # Microsoft's old relays only; it links GnuTLS for hashes), so a real TLS listener on 443
    # never completes an allocation. No TURN over DTLS either.
    turn=("udp", "tcp"),
    turn_servers=None,
    # libnice implements RFC 7675, but webrtcbin 1.22 does not enable it (later GStreamer does);
    # keepalives are binding indications (keepalive-conncheck off).
    consent_freshness=False,
    keepalive="binding-indication",
    # libnice's Tr timer (NICE_AGENT_TIMER_TR_DEFAULT): a keepalive every 25 s; measured in
    # natkit's longevity cases: a Binding indication every 25.0 s while idle, nothing else.
    keepalive_s=25.0,
    idle=True,  # natkit's peer idles on NATKIT_IDLE_S
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="rsa",
    dtls_client_suites=("ecdsa", "rsa"),
    turn_tls_ip_literal=True,
    # Behind no NAT its srflx candidate equals the host one and is not signaled (natkit's
    # runs: "signaling 0 candidate(s)" on the srflx path behind the open NAT).
    redundant_srflx=False,
    gives_up_without_candidates=(),
    mdns_host_candidates=False,
    resolves_mdns=True,
    relay_protocol_stats=True,
    hides_prflx_address=False,
    notes=(
        "as the offerer it is the DTLS server with an RSA certificate: a DTLS client that takes ECDSA only (aiortc) cannot connect to it",
        "given TURN over UDP and over TCP of one server, it signaled only the TCP relay in natkit's runs",
        "one STUN server only (webrtcbin's stun-server property); every TURN URL through add-turn-server",
        "UPnP port mapping is on by default in libnice; natkit's peer turns it off",
        "no TURN over TLS: a turns: URL is tried as plain TURN over TCP to port 443 (no relay-tls)",
    ),
    sources=(
        "GStreamer gst-libs/gst/webrtc/nice/nice.c (gst_webrtc_nice_constructed: ICE_TRICKLE | REGULAR_NOMINATION, CONSENT_FRESHNESS only in later releases; _add_turn_server: turn udp/tcp, turns -> TURN_TLS; get_selected_pair)",
        "the NiceAgent webrtcbin 1.22 makes, read at run time: ice-tcp True, ice-trickle True, consent-freshness False, keepalive-conncheck False, nomination-mode REGULAR, upnp True",
        "GStreamer ext/dtls gstdtlscertificate.c (the generated certificate is RSA); natkit's runs: webrtcbin offering to aiortc fails with OpenSSL 'no shared cipher'",
        "libnice agent/conncheck.c (peer-reflexive candidates from incoming checks, RFC 5245 §7.2.1.3)",
        "libnice agent/agent.c (priv_add_new_candidate_discovery_turn: NICE_RELAY_TYPE_TURN_TLS wraps the TCP socket in pseudossl only for the GOOGLE and OC2007 compatibilities); socket/pseudossl.c (fixed handshake bytes); libnice.so.10 imports no gnutls/GIO TLS session function",
    ),
)

AIORTC = Capabilities(
    stack="aiortc (aioice underneath)",
    tcp_candidates=(),
    turn=("udp", "tcp", "tls"),
    turn_servers=None,  # natkit's adapter allocates on every TURN URL (aiortc itself: one)
    consent_freshness=True,
    keepalive="binding-request",
    # measured in natkit's longevity cases: a consent check every 4.6-6.0 s while idle
    keepalive_s=5.0,
    idle=True,  # natkit's peer idles on NATKIT_IDLE_S
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="ecdsa",
    dtls_client_suites=("ecdsa",),
    turn_tls_ip_literal=True,
    redundant_srflx=True,
    # As the answerer it starts its checks as it answers; with no remote candidate its check
    # list is empty and aioice's connect() reports failure at once (no wait for prflx).
    gives_up_without_candidates=("callee",),
    mdns_host_candidates=False,
    resolves_mdns=False,
    relay_protocol_stats=True,
    hides_prflx_address=False,
    notes=("natkit's adapter sends its candidates inside the SDP and accepts trickled ones",),
    sources=(
        "aiortc 1.16 rtcdtlstransport.py (ECDSA P-256 certificate; client cipher list ECDHE-ECDSA-* only)",
        "aioice 0.13 ice.py (Connection.connect: an empty check list without early checks is ICE_FAILED at once)",
        "aioice 0.13 ice.py (query_consent: CONSENT_INTERVAL 5 s, CONSENT_FAILURES 6; prflx from checks; a second check with USE-CANDIDATE after success: regular nomination; turn_ssl, turn_transport)",
        "natkit/lab/stacks/aiortc.py (_gather_relays; offer/answer with candidates inside; _Inbox applies trickled candidates)",
    ),
)

CHROMIUM = Capabilities(
    stack="Chromium (Debian chromium; libwebrtc), headless, driven over the DevTools protocol",
    # ICE-TCP (RFC 6544): active only. Chromium's TCPPort (p2p/base/tcp_port.cc) does not
    # listen (the browser gives it no server socket), so it offers "tcptype active" at most
    # (port 9), and Chromium 156 (Debian) put no TCP candidate in its SDP in natkit's runs;
    # but it dials a remote passive one: behind udp-blocked, with libnice behind open on the
    # host path, it connected over TCP every time (its local candidate a prflx TCP one, the
    # firewall's mapping), `natkit lab run --stacks chromium,libnice,firefox --full --only
    # host --only udp-blocked,open`.
    tcp_candidates=("active",),
    # TURN over UDP, TCP and TLS: p2p/base/turn_port.cc (PROTO_UDP/TCP/TLS).
    turn=("udp", "tcp", "tls"),
    turn_servers=None,
    # The selected pair keeps being pinged and a pair that stops answering goes
    # "disconnected" then "failed" (p2p/base/connection.cc; p2p_constants.h).
    consent_freshness=True,
    keepalive="binding-request",
    # A stable writable selected pair is pinged every 2.5 s (STABLE_WRITABLE_CONNECTION_PING_INTERVAL);
    # measured in natkit's longevity cases: a Binding request every 2.6-2.7 s while idle.
    keepalive_s=2.5,
    idle=True,  # natkit's peer idles on NATKIT_IDLE_S
    # P2PTransportChannel::OnUnknownAddress creates a PRFLX_PORT_TYPE remote candidate.
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="ecdsa",
    dtls_client_suites=("ecdsa", "rsa"),
    # turns: to an IP literal works (the certificate is checked against it).
    turn_tls_ip_literal=True,
    # Seen in natkit's runs: behind no NAT it signals "typ srflx" with its host address.
    redundant_srflx=True,
    gives_up_without_candidates=(),
    # Feature WebRtcHideLocalIpsWithMdns (content/public/common/content_features.cc); remote
    # .local names are resolved (P2PTransportChannel::AddRemoteCandidate).
    mdns_host_candidates=True,
    resolves_mdns=True,
    # RTCIceCandidateStats.relayProtocol and transport.selectedCandidatePairId.
    relay_protocol_stats=True,
    # No host candidate at all in a namespace without a default route (Chromium 156).
    host_candidates_without_default_route=False,
    # getStats gives a remote peer-reflexive candidate's port, not its address (privacy).
    hides_prflx_address=True,
    notes=(
        "natkit runs it with mDNS host names off (host addresses in the SDP); the lab's page drops .local names",
        "getStats hides the address of a remote peer-reflexive candidate: the evidence matches that side by port",
    ),
    sources=(
        "libwebrtc p2p/base/tcp_port.cc, turn_port.cc, connection.cc, p2p_transport_channel.cc",
        "content/public/common/content_features.cc (WebRtcHideLocalIpsWithMdns)",
        "natkit's runs with Chromium 156 (Debian): getStats of every lab case",
    ),
)

FIREFOX = Capabilities(
    stack="Firefox ESR (Debian firefox-esr; nICEr), headless, driven over WebDriver BiDi",
    # ICE-TCP host candidates: "tcptype active" only (port 9), on by default
    # (media.peerconnection.ice.tcp = true; tcp_so_sock_count = 0 disables simultaneous-open;
    # nICEr ice_component.c, nr_ice_component_initialize_tcp); seen in its offers.
    tcp_candidates=("active",),
    turn=("udp", "tcp", "tls"),
    turn_servers=None,
    # nICEr ice_component.c: nr_ice_component_refresh_consent, consent timer.
    consent_freshness=True,
    keepalive="binding-request",
    # RFC 7675 consent checks every 5 s, randomised by +-20 % (nICEr's consent timer);
    # measured in natkit's longevity cases: a Binding request every 4.5-6.0 s while idle.
    keepalive_s=5.0,
    idle=True,  # natkit's peer idles on NATKIT_IDLE_S
    # nr_ice_component_process_incoming_check creates a prflx remote candidate.
    prflx=True,
    trickle=True,
    nomination="regular",
    relay_policy=True,
    dtls_certificate="ecdsa",
    dtls_client_suites=("ecdsa", "rsa"),
    # A turns: URL with an IP literal is dropped (dom/media/webrtc/transport/nricectx.cpp,
    # NrIceTurnServer; natkit/ice/browsers/knowledge.py): TURN/TLS to a lab address gathers
    # nothing.
    turn_tls_ip_literal=False,
    # Seen in natkit's runs: behind no NAT it gathers no srflx candidate (the STUN answer
    # equals its host address).
    redundant_srflx=False,
    gives_up_without_candidates=(),
    # media.peerconnection.ice.obfuscate_host_addresses = true; remote .local names resolved
    # (dom/media/webrtc/jsapi/PeerConnectionImpl.cpp).
    mdns_host_candidates=True,
    resolves_mdns=True,
    # The selected pair is marked on the candidate-pair itself (selected: true); the local
    # candidate names its relayProtocol.
    relay_protocol_stats=True,
    # iceGatheringState stays "new" in a namespace with only an on-link /24 (Firefox ESR 153).
    host_candidates_without_default_route=False,
    hides_prflx_address=False,
    notes=(
        "natkit runs it with mDNS host names off; the lab's page drops .local names",
        "TURN over TLS needs a host name in the turns: URL (no IP literal): the lab gives it "
        "turns:turn.lab.natkit, an /etc/hosts of the lab's names and the lab CA, in its own mount namespace",
    ),
    sources=(
        "Firefox ESR prefs (modules/libpref/init/all.js, greprefs.js in omni.ja)",
        "nICEr ice_component.c; dom/media/webrtc/transport/nricectx.cpp",
        "natkit's runs with Firefox ESR 153 (Debian): getStats of every lab case",
    ),
)
