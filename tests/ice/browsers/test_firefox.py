"""natkit/ice/browsers/firefox.py: headless Firefox over WebDriver BiDi, and `natkit check
--browser firefox` beside natkit's verdict against natkit's own servers on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from natkit.cli import main
from natkit.ice.browsers import get, names
from natkit.ice.browsers.firefox import (
    OFFLINE_PREFS,
    FirefoxBrowser,
    FirefoxGatherer,
    user_js,
    webrtc_prefs,
)
from natkit.ice.browsers.process import group_alive
from natkit.ice.check import check
from tests.ice.browsers._servers import loopback_servers

pytestmark = [pytest.mark.timeout(90)]

needs_firefox = pytest.mark.skipif(
    shutil.which("firefox-esr") is None and shutil.which("firefox") is None,
    reason="Firefox is not installed (apt-get install firefox-esr)")


def test_the_profile_keeps_firefox_off_the_network() -> None:
    for pref, value in {"network.captive-portal-service.enabled": False,
                        "app.update.disabledForTesting": True,
                        "toolkit.telemetry.enabled": False,
                        "browser.safebrowsing.malware.enabled": False,
                        "app.normandy.enabled": False, "dom.push.enabled": False,
                        "network.proxy.type": 0}.items():
        assert OFFLINE_PREFS[pref] == value, pref
    lab = webrtc_prefs(mdns=False)
    assert lab["media.peerconnection.ice.obfuscate_host_addresses"] is False
    assert lab["media.peerconnection.ice.loopback"] is False
    assert webrtc_prefs(loopback=True)["media.peerconnection.ice.loopback"] is True
    assert webrtc_prefs()["media.peerconnection.ice.obfuscate_host_addresses"] is True
    text = user_js({"a.b": True, "c": 'say "hi"', "n": 5})
    assert text == 'user_pref("a.b", true);\nuser_pref("c", "say \\"hi\\"");\nuser_pref("n", 5);\n'


def test_firefox_is_a_registered_browser() -> None:
    assert "firefox" in names() and isinstance(get("firefox"), FirefoxGatherer)


def test_missing_firefox_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = asyncio.run(FirefoxGatherer().gather([], [], timeout=1))
    assert result.error and "apt-get install firefox-esr" in result.error


@needs_firefox
async def test_firefox_beside_natkit() -> None:
    async with loopback_servers() as (config, _):
        report = await check(config, timeout=3, browsers=["firefox"])
    (gathering,) = report.browsers
    assert gathering.error is None and gathering.version, gathering.as_dict()
    assert gathering.browser == "firefox" and gathering.duration_s < 15
    by_path = {u.path: u for u in gathering.urls}
    assert by_path["iceServers[0].urls"].verdict == "produced"
    for i, transport in enumerate(("udp", "tcp")):
        url = by_path[f"iceServers[1].urls[{i}]"]
        assert url.verdict == "produced" and transport in url.url, url.as_dict()
        relay = [c for c in url.candidates if c["type"] == "relay"]
        assert relay and relay[0]["address"] == "127.0.0.1"
    wrong = by_path["iceServers[2].urls"]
    # nICEr fires icecandidateerror for a refused allocation, as Chromium does.
    assert wrong.verdict == "error" and any(e["errorCode"] == 401 for e in wrong.errors), wrong.as_dict()
    assert {u.path: u.status for u in report.urls}["iceServers[2].urls"] == "fail"
    from natkit.cli.check import format_report

    text = format_report(report)
    assert f"firefox {gathering.version} (beside natkit's verdict):" in text
    assert "natkit FAIL  firefox: icecandidateerror 401" in text


def test_check_cli_takes_firefox(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ice.json"
    path.write_text(json.dumps({"iceServers": []}))
    monkeypatch.setattr("natkit.ice.browsers.firefox.shutil.which", lambda name: None)
    assert main(["check", str(path), "--browser", "firefox", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["browsers"][0]["browser"] == "firefox"
    assert "apt-get install firefox-esr" in data["browsers"][0]["error"]


@needs_firefox
async def test_firefox_in_a_namespace_is_driven_from_outside() -> None:
    """BiDi listens on the namespace's loopback; the connection is made from inside it."""
    import subprocess

    from tests.ice._netns import ns_pair

    with ns_pair() as pair:
        # Firefox gathers nothing until the network is up: a namespace needs a default route.
        subprocess.run(pair.exec_argv(pair.client, "ip", "route", "add", "default", "via", pair.server_ip),
                       check=True, timeout=10)
        browser = await FirefoxBrowser.launch(netns=pair.client, mdns=False)
        try:
            tab = await browser.new_tab("about:blank")
            sdp = await browser.evaluate(tab, """(async () => {
                const pc = new RTCPeerConnection(); pc.createDataChannel("x");
                await pc.setLocalDescription(await pc.createOffer());
                await new Promise((r) => { pc.onicegatheringstatechange = () =>
                    pc.iceGatheringState === "complete" && r(); setTimeout(r, 3000); });
                const sdp = pc.localDescription.sdp; pc.close(); return sdp; })()""", timeout=10)
        finally:
            await browser.close()
    assert f" {pair.client_ip} " in sdp  # a host candidate of the namespace, not of the host
    assert not browser.process.root.exists() and not group_alive(browser.process.process.pid)
