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


def test_private_files_give_one_firefox_the_lab_names_and_ca(tmp_path: Path) -> None:
    from natkit.ice.browsers.firefox import policies_json, private_files

    exe = tmp_path / "lib" / "firefox"
    (exe.parent / "distribution").mkdir(parents=True)
    exe.write_text("")
    files, binds = private_files(str(exe), {"turn.lab.natkit": "203.0.113.4"}, "PEM")
    assert files["etc/hosts"].splitlines()[-1] == "203.0.113.4 turn.lab.natkit"
    assert "127.0.0.1 localhost" in files["etc/hosts"]
    assert binds == {"/etc/hosts": "etc/hosts", str((exe.parent / "distribution").resolve()): "distribution"}
    assert files["distribution/ca.pem"] == "PEM"
    assert json.loads(policies_json("/x/ca.pem")) == {"policies": {"Certificates": {"Install": ["/x/ca.pem"]}}}
    # nothing asked, nothing bound; no distribution directory to show it over: no CA policy
    assert private_files(str(exe), None, None) == ({}, {})
    assert private_files(str(tmp_path / "elsewhere" / "firefox"), None, "PEM") == ({}, {})


@needs_firefox
async def test_firefox_resolves_the_lab_names_and_trusts_the_lab_ca_alone() -> None:
    """What TURN over TLS needs (turns:turn.lab.natkit): an HTTPS fetch by that name to a
    server whose certificate the lab CA signed; the host's /etc/hosts is left as it was."""
    import http.server
    import ssl
    import tempfile
    import threading

    from natkit.lab.labca import make_lab_ca

    ca = make_lab_ca(["127.0.0.1"], ["turn.lab.natkit"])
    before = Path("/etc/hosts").read_text()

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    with tempfile.TemporaryDirectory() as d:
        Path(d, "c.pem").write_text(ca.chain_pem)
        Path(d, "k.pem").write_text(ca.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{d}/c.pem", f"{d}/k.pem")
        server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://turn.lab.natkit:{server.server_address[1]}/"
    try:
        browser = await FirefoxBrowser.launch(mdns=False, loopback=True, hosts={"turn.lab.natkit": "127.0.0.1"},
                                              ca_pem=ca.ca_pem)
        try:
            tab = await browser.new_tab("about:blank")
            got = await browser.evaluate(tab, f"fetch({json.dumps(url)}).then(r => r.text(), e => 'ERR ' + e)",
                                         timeout=20)
        finally:
            await browser.close()
    finally:
        server.shutdown()
    assert got == "hello"
    assert Path("/etc/hosts").read_text() == before
