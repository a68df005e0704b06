"""`natkit check --browser`: headless Chromium gathers from every URL of the configuration,
against natkit's own servers on loopback, and its result stands beside natkit's verdict."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from natkit.cli import main
from natkit.ice.browsers import get, names, process, register
from natkit.ice.browsers.base import BrowserGathering
from natkit.ice.check import check
from natkit.server.stun import StunServer
from tests.ice.browsers._servers import loopback_servers

pytestmark = [pytest.mark.timeout(120)]

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Chromium is not installed (apt-get install chromium)")


def _record_profiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The profile directories this test's browsers make (other processes on the machine may
    run Chromium at the same time: a glob of the temporary directory would see theirs)."""
    made: list[str] = []
    real = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = real(*args, **kwargs)
        if Path(path).name.startswith("natkit-chromium-"):
            made.append(path)
        return path

    monkeypatch.setattr(process.tempfile, "mkdtemp", mkdtemp)
    return made


@needs_chromium
async def test_chromium_beside_natkit(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _record_profiles(monkeypatch)
    async with loopback_servers() as (config, turn_urls):
        report = await check(config, timeout=3, browsers=["chromium"])
    (gathering,) = report.browsers
    assert gathering.error is None and gathering.version, gathering.as_dict()
    by_path = {u.path: u for u in gathering.urls}
    assert by_path["iceServers[0].urls"].verdict == "produced"
    assert "srflx" in by_path["iceServers[0].urls"].produced
    for i in range(len(turn_urls)):
        assert by_path[f"iceServers[1].urls[{i}]"].verdict == "produced"
    wrong = by_path["iceServers[2].urls"]
    assert wrong.verdict == "error"
    assert any(e["errorCode"] == 401 for e in wrong.errors)
    natkit_verdict = {u.path: u.status for u in report.urls}
    assert natkit_verdict["iceServers[2].urls"] == "fail"
    d = report.as_dict()
    assert d["browsers"][0]["browser"] == "chromium"
    assert {u["verdict"] for u in d["browsers"][0]["urls"]} == {"produced", "error"}
    from natkit.cli.check import format_report

    text = format_report(report)
    assert "natkit FAIL  chromium: icecandidateerror 401" in text
    assert made and not [p for p in made if Path(p).exists()]  # the profile directory is gone


class _Fake:
    name = "fakefox"

    async def gather(self, servers, ice_servers, *, timeout):  # type: ignore[no-untyped-def]
        return BrowserGathering("fakefox", "1.0", error="not installed here")


def test_a_second_browser_plugs_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register("fakefox", _Fake)
    assert "fakefox" in names() and "chromium" in names()
    assert isinstance(get("fakefox"), _Fake)
    path = tmp_path / "ice.json"
    path.write_text(json.dumps({"iceServers": []}))
    code = main(["check", str(path), "--browser", "fakefox"])
    out = capsys.readouterr().out
    assert code == 0 and "fakefox 1.0 (beside natkit's verdict):" in out
    assert "not run: not installed here" in out
    code = main(["check", str(path), "--browser", "nosuch"])
    err = capsys.readouterr().err
    assert code == 2 and "--browser: unknown browser 'nosuch'" in err


def test_missing_chromium_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from natkit.ice.browsers.chromium import ChromiumGatherer

    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = asyncio.run(ChromiumGatherer().gather([], [], timeout=1))
    assert result.error and "apt-get install chromium" in result.error


def test_one_flag_list_for_check_and_the_lab() -> None:
    from natkit.ice.browsers.chromium import GOOGLE_SERVICES, chromium_flags, url_host

    lab = chromium_flags(mdns=False)
    assert "--disable-features=WebRtcHideLocalIpsWithMdns" in lab and "--remote-debugging-pipe" in lab
    assert "--allow-loopback-in-peer-connection" not in lab
    web = chromium_flags(loopback=True, allow=["stun.l.google.com"])
    assert "--allow-loopback-in-peer-connection" in web
    assert not any("WebRtcHideLocalIpsWithMdns" in f for f in web)
    (rules,) = [f for f in web if f.startswith("--host-resolver-rules=")]
    assert rules.startswith("--host-resolver-rules=EXCLUDE stun.l.google.com, MAP ")
    assert all(f"MAP {p} ~NOTFOUND" in rules for p in GOOGLE_SERVICES)
    assert [url_host(u) for u in ("stun:Stun.Example.com:3478", "turn:192.0.2.1?transport=tcp",
                                  "turns:[2001:db8::1]:443", "turn:x.example")] == \
        ["stun.example.com", None, None, "x.example"]


@needs_chromium
async def test_chromium_resolves_the_servers_names() -> None:
    """Its own services' names are blocked; the names in the configuration still resolve."""
    async with StunServer(["127.0.0.1:0"]) as stun:
        port = stun.addresses[0][1][1]
        report = await check({"iceServers": [{"urls": f"stun:localhost:{port}"}]}, timeout=3,
                             browsers=["chromium"])
    (gathering,) = report.browsers
    assert gathering.urls[0].verdict == "produced", gathering.as_dict()
