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
from typing import ClassVar

from natkit.ice.browsers.driver import Driver
from natkit.ice.browsers.firefox import FirefoxBrowser, find_firefox
from natkit.lab.stacks.browser import BrowserPeer, contract_main
from natkit.lab.stacks.capabilities import FIREFOX, Capabilities

__all__ = ["FirefoxPeer"]


class FirefoxPeer(BrowserPeer):
    """Headless Firefox as a lab stack (see the module docstring)."""

    name: ClassVar[str] = "firefox"
    title: ClassVar[str] = "Firefox"
    parallel: ClassVar[int] = 6  # connecting cases at once, over all its namespaces
    start_s: ClassVar[float] = 8.0  # measured ~1.5-2.5 s alone; more beside other browsers
    # What it does, for the expectations (sources in stacks/capabilities.py).
    capabilities: ClassVar[Capabilities] = FIREFOX

    def check(self) -> None:
        find_firefox()

    async def launch(self, *, loopback: bool) -> Driver:
        # The lab's names and CA: its turns: URL names the TURN server (nICEr drops IP
        # literals there), whose certificate the lab CA signed for that name.
        return await FirefoxBrowser.launch(netns=self.netns, mdns=self.mdns, loopback=loopback,
                                           hosts=self.hosts or None, ca_pem=self.ca_pem)


if __name__ == "__main__":
    sys.exit(contract_main(FirefoxPeer()))
