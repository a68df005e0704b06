"""`natkit candidates`, `natkit check`, `natkit gather`: exit codes, one-line errors, --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.cli import main
from natkit.server.coturn import free_port

from ._coturn import Coturn, coturn

pytestmark = pytest.mark.timeout(60)

CHROME_SRFLX = ("candidate:842163049 1 udp 1677729535 203.0.113.5 46154 typ srflx raddr "
                "0.0.0.0 rport 0 generation 0 ufrag sK/p network-cost 999")
FIREFOX_TCP = ("candidate:2 1 TCP 2105524479 9f4b0d5e-2c3f-4a8e-b1d6-7e8f9a0b1c2d.local 9 "
               "typ host tcptype active")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- candidates ----------------------------------------------------------------------------

def test_candidates_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.txt"
    f.write_text(f"a={CHROME_SRFLX}\n{FIREFOX_TCP}\n")
    code, out, _ = run(capsys, "candidates", str(f), "--json")
    assert code == 0
    data = json.loads(out)
    first = data["candidates"][0]
    for key in ("foundation", "component", "transport", "priority", "address", "port", "type",
                "related_address", "related_port", "tcptype", "scope", "extensions"):
        assert key in first
    assert first["line"] == CHROME_SRFLX
    assert data["candidates"][1]["tcptype"] == "active"
    assert data["candidates"][1]["scope"] == "mdns"
    assert {"no-relay"} <= {d["code"] for d in data["diagnosis"]}


def test_candidates_table_and_invalid_exit_1(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.txt"
    f.write_text(CHROME_SRFLX + "\ncandidate:1 1 udp 1686052607 1.2.3.4 5 typ srflx\n"
                 "candidate:oops\n")
    code, out, _ = run(capsys, "candidates", str(f))
    assert code == 1
    assert "raddr missing" in out and "malformed: line 3" in out
    assert "documentation/v4" in out


@pytest.mark.parametrize(("content", "message"), [
    ('[{"candidate": "x"},\n  ]', "in.txt:2:3: invalid JSON"),
    ("hello world\n", None),
    ("", "no candidates found"),
])
def test_candidates_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              content: str, message: str | None) -> None:
    f = tmp_path / "in.txt"
    f.write_text(content)
    code, out, err = run(capsys, "candidates", str(f))
    if message is None:  # a line that is no candidate: reported, exit 1
        assert code == 1 and "malformed" in out
    else:
        assert code == 2 and message in err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_candidates_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "candidates", "/nonexistent/file.sdp")
    assert code == 2 and "no such file" in err and err.count("\n") == 1


# -- check ---------------------------------------------------------------------------------

def write(tmp_path: Path, data: object, name: str = "ice.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return str(path)


@pytest.mark.parametrize(("config", "expect"), [
    ({"iceServers": [{"urls": "stun://x.example.com"}]}, "iceServers[0].urls: SyntaxError"),
    ({"iceServers": [{"urls": ["stun:a.example.com", "turn:b.example.com"]}]},
     "iceServers[0].urls[1]: InvalidAccessError"),
    ({"iceServers": [{"urls": "turn:b?transport=sctp", "username": "u", "credential": "p"}]},
     "SyntaxError"),
    ({"iceServers": [{"urls": []}]}, "iceServers[0].urls: SyntaxError: urls is an empty list"),
    ({"iceServers": "stun:x"}, "iceServers: TypeError"),
    ([{"urls": 42}], "[0].urls: TypeError"),
    ('{"iceServers": [}', "ice.json:1:17: invalid JSON"),
])
def test_check_invalid_configs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      config: object, expect: str) -> None:
    path = write(tmp_path, config)
    code, out, err = run(capsys, "check", path)
    assert code == 2 and out == ""
    assert expect in err and "Traceback" not in err
    assert all(line.startswith("natkit check: error: ") for line in err.splitlines())


def test_check_invalid_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"iceServers": [{"urls": "stun:a#b"}, {"urls": "turn:c"}]})
    code, out, _ = run(capsys, "check", path, "--json")
    assert code == 2
    data = json.loads(out)
    assert data["pass"] is False and data["schema_version"] >= 1
    assert [(e["path"], e["error"]) for e in data["errors"]] == [
        ("iceServers[0].urls", "SyntaxError"), ("iceServers[1].urls", "InvalidAccessError")]


def test_check_unreadable_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check", str(tmp_path))
    assert code == 2 and "is a directory" in err
    code, _, err = run(capsys, "check", str(tmp_path / "nope.json"))
    assert code == 2 and "no such file" in err
    path = write(tmp_path, {"iceServers": []})
    code, _, err = run(capsys, "check", path, "--timeout", "0")
    assert code == 2 and "--timeout" in err
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2


def test_check_static_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"iceServers": [{"url": "stun:127.0.0.1:9"}]})
    code, out, _ = run(capsys, "check", path, "--static-only")
    assert code == 0 and "deprecated" in out and "valid for a browser" in out


@pytest.fixture(scope="module")
def lt_server() -> Iterator[Coturn]:
    with coturn(users={"alice": "secret"}) as server:
        yield server


@pytest.mark.coturn
def test_check_live_pass_and_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  lt_server: Coturn) -> None:
    p = lt_server.port
    good = write(tmp_path, {"iceServers": [
        {"urls": [f"stun:127.0.0.1:{p}"]},
        {"urls": [f"turn:127.0.0.1:{p}", f"turn:127.0.0.1:{p}?transport=tcp"],
         "username": "alice", "credential": "secret"}]}, "good.json")
    code, out, _ = run(capsys, "check", good)
    assert code == 0, out
    assert out.count("PASS") == 3 and "3 of 3 URL(s) pass" in out
    code, out, _ = run(capsys, "check", good, "--json", "--timeout", "2")
    data = json.loads(out)
    assert code == 0 and data["pass"] is True and len(data["servers"]) == 3
    bad = write(tmp_path, [{"urls": f"turn:127.0.0.1:{p}", "username": "alice",
                            "credential": "wrong"},
                           {"urls": f"stun:127.0.0.1:{free_port()}"}], "bad.json")
    code, out, _ = run(capsys, "check", bad)
    assert code == 1
    assert "FAIL  turn:" in out and "hint: wrong username or password" in out
    assert "0 of 2 URL(s) pass" in out


# -- gather --------------------------------------------------------------------------------

def test_gather_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "gather")
    assert code == 2 and "nothing to gather from" in err
    path = write(tmp_path, {"iceServers": []})
    code, _, err = run(capsys, "gather", path, "--stun", "stun:127.0.0.1")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "gather", "--turn", "turn:127.0.0.1:9")
    assert code == 2 and "InvalidAccessError" in err


@pytest.mark.coturn
def test_gather_live(capsys: pytest.CaptureFixture[str], lt_server: Coturn) -> None:
    p = lt_server.port
    code, out, _ = run(capsys, "gather", "--turn", f"turn:127.0.0.1:{p}?transport=tcp",
                       "--username", "alice", "--credential", "secret", "--policy", "relay",
                       "--json")
    data = json.loads(out)
    assert code == 0 and data["pass"] and data["schema_version"] == 1
    assert [c["type"] for c in data["candidates"]] == ["relay"]
    assert data["candidates"][0]["relay_protocol"] == "tcp"
    assert data["candidates"][0]["url"] == f"turn:127.0.0.1:{p}?transport=tcp"
    code, out, _ = run(capsys, "gather", "--turn", f"turn:127.0.0.1:{p}", "--username",
                       "alice", "--credential", "bad", "--policy", "relay")
    assert code == 1 and "error  401" in out


def test_check_invalid_json_with_json_flag(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '{"iceServers": [\n  {"urls": "stun:x"\n]}')
    code, out, err = run(capsys, "check", path, "--json")
    assert code == 2
    data = json.loads(out)
    assert data["pass"] is False and "3:1: invalid JSON" in data["errors"][0]["message"]
    assert err.count("\n") == 1 and "ice.json:3:1: invalid JSON" in err


def test_bad_ca_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"iceServers": [{"urls": "stun:127.0.0.1:9"}]})
    code, _, err = run(capsys, "check", path, "--ca-file", str(tmp_path / "none.pem"))
    assert code == 2 and "no such file" in err
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    code, _, err = run(capsys, "gather", path, "--ca-file", str(junk))
    assert code == 2 and "not PEM" in err and err.count("\n") == 1
