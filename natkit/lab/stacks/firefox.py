"""The Firefox stack: headless Firefox ESR (nICEr inside) as a lab peer, caller and callee.

:class:`FirefoxPeer` is a :class:`~natkit.lab.stacks.browser.BrowserPeer`: one Firefox per
peer namespace, started on the first case over WebDriver BiDi
(:class:`natkit.ice.browsers.firefox.FirefoxBrowser`: no geckodriver, a fresh profile kept off
the network, the same driver as ``natkit check --browser firefox``), one window per case on
the same peer page as Chromium. Host addresses are raw, not mDNS names
(``media.peerconnection.ice.obfuscate_host_addresses`` off), since nothing in a lab answers
mDNS; ``mdns=True`` keeps Firefox's default. ``python -m natkit.lab.stacks.firefox`` is the
stack as a contract peer command.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from natkit.ice.browsers.driver import Driver
from natkit.ice.browsers.firefox import FirefoxBrowser, find_firefox
from natkit.lab.stacks.browser import BrowserPeer, contract_main

__all__ = ["FirefoxPeer"]


class FirefoxPeer(BrowserPeer):
    """Headless Firefox as a lab stack (see the module docstring)."""

    name: ClassVar[str] = "firefox"
    title: ClassVar[str] = "Firefox"
    parallel: ClassVar[int] = 3
    start_s: ClassVar[float] = 8.0  # measured ~1.5-2.5 s alone; more beside other browsers
    # What nICEr does, for the expectations (sources in the comments; prefs are Firefox ESR's
    # defaults, modules/libpref/init/all.js, as shipped in omni.ja's greprefs.js).
    capabilities: ClassVar[dict[str, Any]] = {
        # ICE-TCP host candidates (RFC 6544): "tcptype active" only (port 9), on by default
        # (media.peerconnection.ice.tcp = true; tcp_so_sock_count = 0 disables simultaneous-
        # open; nICEr ice_component.c, nr_ice_component_initialize_tcp); seen in its offers.
        "tcp_candidates": "active",
        # TURN over UDP, TCP and TLS; turns: needs a host name: a turns: URL with an IP literal
        # is dropped (dom/media/webrtc/transport/nricectx.cpp, NrIceTurnServer; see
        # natkit/ice/browsers/knowledge.py), so TURN/TLS to a lab address does not gather.
        "turn_transports": ("udp", "tcp", "tls"),
        "turn_tls_ip_literal": False,
        # Consent freshness (RFC 7675): nICEr ice_component.c, nr_ice_component_refresh_consent
        # and nr_ice_component_consent_schedule_consent_timer.
        "consent_freshness": True,
        # Host candidates as <uuid>.local names for pages without camera/microphone permission
        # (media.peerconnection.ice.obfuscate_host_addresses = true); remote .local names are
        # resolved (dom/media/webrtc/jsapi/PeerConnectionImpl.cpp, the mDNS resolver).
        "mdns_host_candidates": True,
        "resolves_mdns": True,
        # Peer-reflexive candidates learned from checks (RFC 8445 §7.3.1.3): nICEr
        # ice_component.c, nr_ice_component_process_incoming_check creates a prflx remote one.
        "peer_reflexive": True,
        "trickle": True,
        # getStats: the selected pair is marked on the candidate-pair itself (selected: true,
        # Firefox's own field; no RTCTransportStats.selectedCandidatePairId), and the local
        # candidate names its relayProtocol.
        "relay_protocol_stats": True,
        # No gathering at all in a namespace without a default route: iceGatheringState stays
        # "new" until the network is up (observed with Firefox ESR 153 in a namespace with only
        # an on-link /24).
        "host_candidates_without_default_route": False,
    }

    def check(self) -> None:
        find_firefox()

    async def launch(self, *, loopback: bool) -> Driver:
        return await FirefoxBrowser.launch(netns=self.netns, mdns=self.mdns, loopback=loopback)


if __name__ == "__main__":
    sys.exit(contract_main(FirefoxPeer()))
