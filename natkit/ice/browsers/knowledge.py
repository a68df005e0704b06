"""What browsers ignore or reject in an iceServers list that the W3C algorithm lets through.

Each rule names the browser, what it does (``ignored``: the URL gathers nothing and raises no
``icecandidateerror``; ``rejected``: the configuration throws or the URL fails; ``warning``:
it works but not as written; ``info``) and where the behaviour comes from in that browser's
source, so a rule can be re-checked when the browser changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from natkit.ice.config import IceConfig

__all__ = ["FETCH_BAD_PORTS", "BrowserNote", "browser_notes"]

CHROMIUM, FIREFOX = "chromium", "firefox"

# Sources (paths in the browsers' trees):
_FF_NRICECTX = "Firefox dom/media/webrtc/transport/nricectx.cpp, NrIceStunServer::ToNicerStunStruct"
_FF_HANDLER = "Firefox dom/media/webrtc/jsapi/MediaTransportHandler.cpp, addNrIceServer"
_FF_PC = "Firefox dom/media/PeerConnection.sys.mjs, _mustValidateRTCConfiguration"
_CR_PARSING = "libwebrtc pc/ice_server_parsing.cc (Chromium), ParseIceServerUrl"
_CR_LIMIT = ("libwebrtc pc/ice_server_parsing.cc, ParseAndValidateIceServersFromConfiguration; "
             "api/candidate.h kMaxTurnServers")

# The Fetch Standard's "bad port" list, which Firefox's NS_CheckPortSafety applies to ICE
# servers on any port but 53, 3478 and 5349 (gGoodWebrtcPortList in MediaTransportHandler.cpp).
FETCH_BAD_PORTS = frozenset({
    0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95,
    101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179,
    389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601,
    636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566,
    6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
})
_FIREFOX_GOOD_PORTS = frozenset({53, 3478, 5349})
CHROMIUM_MAX_TURN = 32  # kMaxTurnServers: TURN URLs past the 32nd are dropped
CHROMIUM_MAX_USERNAME = 509  # kMaxTurnUsernameLength (RFC 8489's USERNAME limit)
FIREFOX_MAX_USERNAME = 512
FIREFOX_MANY_SERVERS = 5  # "Using five or more STUN/TURN servers slows down discovery"


@dataclass(frozen=True)
class BrowserNote:
    browser: str  # chromium | firefox
    severity: str  # ignored | rejected | warning | info
    path: str  # JSON path of the URL or server, "$" for the whole list
    url: str | None
    message: str
    source: str

    def __str__(self) -> str:
        name = {"chromium": "Chromium", "firefox": "Firefox"}.get(self.browser, self.browser)
        where = f"{self.path} {self.url}" if self.url else self.path
        verb = {"ignored": " ignores it", "rejected": " rejects it"}.get(self.severity, "")
        return f"{where}: {name}{verb}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"browser": self.browser, "severity": self.severity, "path": self.path,
                "url": self.url, "message": self.message, "source": self.source}


def browser_notes(config: IceConfig) -> list[BrowserNote]:
    """Per URL and per browser, what the browser will do differently from what is written."""
    notes: list[BrowserNote] = []
    turn_count = 0
    for server, url in config.urls():

        def add(browser: str, severity: str, message: str, source: str,
                path: str = url.path, text: str = url.url) -> None:
            notes.append(BrowserNote(browser, severity, path, text, message, source))

        port = url.effective_port
        if url.scheme == "turns" and url.host_is_ip:
            add(FIREFOX, "ignored", f"a turns: URL whose host is an IP address ({url.host}) "
                "is skipped without an icecandidateerror (\"Refuse to try TLS without an "
                "FQDN\"): use a host name its certificate names", _FF_NRICECTX)
            add(CHROMIUM, "info", f"the TLS certificate is verified against the IP address "
                f"{url.host} itself: it needs that IP in its subjectAltName", _CR_PARSING)
        if url.scheme == "stuns":
            add(FIREFOX, "ignored", "stuns: URLs are not supported and are skipped "
                "(bug 1056934)", _FF_HANDLER)
        if url.scheme == "turns" and url.explicit_transport and url.transport == "udp":
            add(CHROMIUM, "warning", "turns:...?transport=udp means TURN over DTLS, which few "
                "servers offer", _CR_PARSING)
            add(FIREFOX, "warning", "turns:...?transport=udp is TURN over TLS/TCP anyway "
                "(the transport is ignored)", _FF_HANDLER)
        if port in FETCH_BAD_PORTS and port not in _FIREFOX_GOOD_PORTS:
            add(FIREFOX, "rejected", f"port {port} is on the Fetch standard's list of unsafe "
                "ports: the whole configuration fails to apply", _FF_HANDLER)
        if url.is_turn:
            turn_count += 1
            if turn_count == CHROMIUM_MAX_TURN + 1:
                add(CHROMIUM, "ignored", f"more than {CHROMIUM_MAX_TURN} TURN URLs: this one "
                    "and every later one are dropped", _CR_LIMIT)
            name = server.username or ""
            if len(name) > CHROMIUM_MAX_USERNAME:
                add(CHROMIUM, "rejected", f"the username has {len(name)} characters (at most "
                    f"{CHROMIUM_MAX_USERNAME}): the configuration throws", _CR_PARSING)
            if len(name.encode()) > FIREFOX_MAX_USERNAME:
                add(FIREFOX, "rejected", f"the username has more than {FIREFOX_MAX_USERNAME} "
                    "bytes: InvalidAccessError", _FF_PC)
    if len(config.urls()) >= FIREFOX_MANY_SERVERS:
        notes.append(BrowserNote(FIREFOX, "warning", "$", None,
                                 f"{len(config.urls())} STUN/TURN URLs: five or more slow "
                                 "down candidate gathering (Firefox says so in its console)",
                                 _FF_PC))
    return notes
