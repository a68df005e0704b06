"""`natkit check` (natkit/cli/check.py) against natkit's own servers: provider envelopes,
REST credentials minted from the secret, millisecond timestamps, browser warnings, output
files (--json FILE, --prometheus FILE) and the /metrics server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from natkit.cli import main
from natkit.server.turn import TurnServer

pytestmark = pytest.mark.timeout(60)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, data: object, name: str = "ice.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
async def rest_turn() -> AsyncIterator[TurnServer]:
    async with TurnServer(["127.0.0.1:0"], auth_secrets=["s3cret"], relay_ip="127.0.0.1",
                          allow_peers=["127.0.0.0/8"]) as turn:
        yield turn


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # main() runs its own event loop: give it a thread while the server runs in ours.
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_auth_secret_mints_rest_credentials(tmp_path: Path, rest_turn: TurnServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = rest_turn.urls[0]
    path = write(tmp_path, {"iceServers": [{"urls": url}]})  # no credentials at all
    code, out, _ = await _cli(capsys, "check", path, "--auth-secret", "s3cret", "--user", "ci",
                              "--json")
    data = json.loads(out)
    assert code == 0 and data["pass"], data
    assert any("minted from the TURN REST secret" in w for w in data["warnings"])
    code, out, _ = await _cli(capsys, "check", path, "--auth-secret", "wrong", "--json")
    assert code == 1
    (target,) = json.loads(out)["servers"]
    assert [(c["name"], c.get("code")) for c in target["checks"] if not c["pass"]] == [
        ("allocate", 401)]


def test_minted_username_shape() -> None:
    import base64
    import hashlib
    import hmac

    from natkit.ice.config import with_rest_credentials

    data, _ = with_rest_credentials([{"urls": "turn:t.example.com"}, {"urls": "stun:s"}],
                                    "k", "ci", ttl=600, now=1_700_000_000)
    assert data[0]["username"] == "1700000600:ci"
    mac = hmac.new(b"k", b"1700000600:ci", hashlib.sha1).digest()
    assert data[0]["credential"] == base64.b64encode(mac).decode()
    assert "username" not in data[1]


@pytest.mark.parametrize("key", ["v", "d"])
def test_provider_envelope_is_unwrapped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        key: str) -> None:
    path = write(tmp_path, {key: {"iceServers": [{"urls": "stun:127.0.0.1:9"}]}, "s": "ok"})
    code, out, err = run(capsys, "check", path, "--static-only")
    assert code == 0, err
    assert f"{key}: a provider's response envelope" in out


def test_xirsys_single_object_and_error_envelope(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    single = write(tmp_path, {"v": {"iceServers": {"urls": ["stun:127.0.0.1:9"]}}, "s": "ok"})
    code, _, err = run(capsys, "check", single)
    assert code == 2 and err.count("\n") == 1
    assert "iceServers is one RTCIceServer object, not a list" in err
    failed = write(tmp_path, {"s": "error", "v": "unauthorized"}, "err.json")
    code, _, err = run(capsys, "check", failed)
    assert code == 2 and "the provider answered with an error: unauthorized" in err
    assert "TypeError: no 'iceServers'" not in err


def test_millisecond_timestamp_gets_its_own_hint(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from natkit.ice.config import parse_ice_url
    from natkit.ice.hints import hint_for_401

    stamp = int(time.time() * 1000) + 3_600_000
    path = write(tmp_path, [{"urls": "turn:t.example.com", "username": f"{stamp}:alice",
                             "credential": "x"}])
    code, out, _ = run(capsys, "check", path, "--static-only")
    assert code == 0 and "is in milliseconds" in out and "Date.now()" in out
    assert parse_ice_url("turn:t.example.com")
    hint = hint_for_401(f"{stamp}:alice")
    assert "milliseconds" in hint and "wrong username or password" not in hint


def test_firefox_ignores_ip_literal_turns(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, [{"urls": ["turns:127.0.0.1:5349", "stuns:stun.example.com"],
                             "username": "u", "credential": "p"}])
    code, out, _ = run(capsys, "check", path, "--static-only")
    assert code == 0
    assert "[0].urls[0] turns:127.0.0.1:5349: Firefox ignores it:" in out
    assert "[0].urls[1] stuns:stun.example.com: Firefox ignores it: stuns: URLs" in out
    code, out, _ = run(capsys, "check", path, "--static-only", "--json")
    notes = json.loads(out)["browser_notes"]
    assert {(n["browser"], n["severity"], n["path"]) for n in notes} >= {
        ("firefox", "ignored", "[0].urls[0]"), ("chromium", "info", "[0].urls[0]")}
    assert all(n["source"] for n in notes)


async def test_json_file_and_prometheus_file(tmp_path: Path, rest_turn: TurnServer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, [{"urls": rest_turn.urls}])
    report, prom = tmp_path / "report.json", tmp_path / "turn.prom"
    code, out, _ = await _cli(capsys, "check", path, "--auth-secret", "s3cret", "--json",
                              str(report), "--prometheus", str(prom))
    assert code == 0 and "PASS" in out  # the text still goes to stdout
    doc = json.loads(report.read_text())
    assert doc["schema_version"] >= 2 and doc["kind"] == "check"
    text = prom.read_text()
    assert text.startswith("# natkit check metrics\n")
    assert 'natkit_check_up{url="' + rest_turn.urls[0] + '"' in text
    assert "natkit_check_relay_success{" in text and "natkit_check_success 1" in text
    # A second run may replace its own files, never someone else's.
    code, _, _ = await _cli(capsys, "check", path, "--auth-secret", "s3cret", "--prometheus",
                            str(prom))
    assert code == 0
    other = tmp_path / "other.prom"
    other.write_text("node_load1 0.5\n")
    code, _, err = await _cli(capsys, "check", path, "--prometheus", str(other))
    assert code == 2 and "refusing to overwrite" in err
    assert other.read_text() == "node_load1 0.5\n"
    code, _, err = await _cli(capsys, "check", path, "--json", path)
    assert code == 2 and "input of this command" in err


async def test_prometheus_to_stdout(tmp_path: Path, rest_turn: TurnServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """'--prometheus -' (as the refusal to overwrite a file suggests) puts the gauges on stdout
    instead of the text; with '--json -' too, stdout cannot take both."""
    path = write(tmp_path, [{"urls": rest_turn.urls}])
    code, out, _ = await _cli(capsys, "check", path, "--auth-secret", "s3cret", "--prometheus", "-")
    assert code == 0 and out.startswith("# natkit check metrics\n") and "PASS" not in out
    assert "natkit_check_success 1" in out
    code, _, err = await _cli(capsys, "check", path, "--json", "-", "--prometheus", "-")
    assert code == 2 and "both want stdout" in err
    code, _, err = await _cli(capsys, "check", path, "--static-only", "--prometheus",
                              str(tmp_path / "x.prom"))
    assert code == 2 and "drop --static-only" in err and not (tmp_path / "x.prom").exists()


async def test_metrics_server_probes_on_every_scrape(tmp_path: Path,
                                                     rest_turn: TurnServer) -> None:
    from natkit.ice.check import check
    from natkit.ice.config import load_config
    from natkit.ice.monitor import serve_metrics

    path = write(tmp_path, [{"urls": rest_turn.urls[0]}])
    calls: list[float] = []

    async def one(budget: float):  # type: ignore[no-untyped-def]
        calls.append(budget)
        return await check(load_config(path, rest_secret="s3cret"), timeout=budget)

    bound: list[tuple[str, int]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(serve_metrics("127.0.0.1", 0, one, timeout=3,
                                             started=bound.append, stop=stop))
    try:
        for _ in range(100):
            if bound:
                break
            await asyncio.sleep(0.02)

        async def get(path: str, headers: str = "") -> str:
            reader, writer = await asyncio.open_connection(*bound[0])
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
            data = await reader.read()
            writer.close()
            return data.decode()

        first = await get("/metrics", "X-Prometheus-Scrape-Timeout-Seconds: 2\r\n")
        assert first.startswith("HTTP/1.1 200 OK") and "natkit_check_up{" in first
        assert "natkit_check_allocate_success{" in first
        await asyncio.sleep(1.1)
        await get("/metrics")
        assert len(calls) == 2 and calls[0] == pytest.approx(1.5) and calls[1] == 3
        assert (await get("/nope")).startswith("HTTP/1.1 404")
    finally:
        stop.set()
        await task


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("check", "probe", "gather", "candidates", "demo"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = capsys.readouterr().out
        assert "examples:\n  natkit " + verb in out, verb


async def test_serve_flag_runs_a_metrics_server(tmp_path: Path, rest_turn: TurnServer) -> None:
    import sys

    path = write(tmp_path, [{"urls": rest_turn.urls[0]}])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "natkit", "check", path, "--auth-secret", "s3cret", "--serve",
        "127.0.0.1:0", "--timeout", "3", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "serving http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = (await asyncio.wait_for(reader.read(), 30)).decode()
        writer.close()
        assert "natkit_check_up{" in body and "natkit_check_success 1" in body, body
    finally:
        proc.terminate()
        await proc.wait()
