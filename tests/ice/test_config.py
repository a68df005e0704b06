"""natkit/ice/config.py: the W3C "validate an ICE server URL" rules, JSON paths, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from natkit.errors import UsageError
from natkit.ice.config import (
    ConfigError,
    config_from_urls,
    load_config,
    parse_config,
    parse_ice_url,
    rest_expiry,
)


@pytest.mark.parametrize(("url", "scheme", "host", "port", "transport"), [
    ("stun:stun.l.google.com:19302", "stun", "stun.l.google.com", 19302, "udp"),
    ("stuns:stun.example.com", "stuns", "stun.example.com", None, "tcp"),
    ("turn:turn.example.com?transport=tcp", "turn", "turn.example.com", None, "tcp"),
    ("turn:[2001:db8::1]:3478?transport=udp", "turn", "2001:db8::1", 3478, "udp"),
    ("turns:203.0.113.5:443?transport=tcp", "turns", "203.0.113.5", 443, "tcp"),
    ("TURN:Example.COM:3478", "turn", "Example.COM", 3478, "udp"),
    (" stun:1.2.3.4 ", "stun", "1.2.3.4", None, "udp"),
])
def test_valid_urls(url: str, scheme: str, host: str, port: int | None, transport: str) -> None:
    u = parse_ice_url(url)
    assert (u.scheme, u.host, u.port, u.transport) == (scheme, host, port, transport)


@pytest.mark.parametrize(("url", "message"), [
    ("", "empty URL"),
    ("http://example.com", "scheme 'http'"),
    ("example.com:3478", "scheme 'example.com'"),
    ("3478", "not a URL"),
    ("stun://stun.example.com:3478", "no '//'"),
    ("turn:user@turn.example.com", "contains '@'"),
    ("stun:example.com/path", "contains '/'"),
    ("stun:example.com#frag", "fragment"),
    ("stun:example.com?transport=udp", "take no query"),
    ("stuns:example.com?x", "take no query"),
    ("turn:example.com?transport=sctp", "transport=udp or ?transport=tcp"),
    ("turn:example.com?transport=udp&x=1", "transport=udp or ?transport=tcp"),
    ("stun:example.com:0", "port 0 out of range"),
    ("stun:example.com:65536", "port 65536 out of range"),
    ("stun:example.com:abc", "port 'abc'"),
    ("stun:2001:db8::1", "bare IPv6"),
    ("stun:[2001:db8::1", "missing ']'"),
    ("stun:", "no host"),
])
def test_urls_a_browser_rejects(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ice_url(url, "iceServers[0].urls")
    problem = info.value.problems[0]
    assert problem.error == "SyntaxError"
    assert message in problem.message
    assert problem.path == "iceServers[0].urls"


def test_every_problem_with_its_json_path() -> None:
    text = json.dumps({"iceServers": [
        {"urls": ["stun:ok.example.com", "stun://bad"]},
        {"urls": "turn:turn.example.com"},
        {"urls": []},
        {"urls": 5},
        {"urls": ["turn:x"], "username": 7, "credential": "c"},
        "stun:not-an-object",
        {"urls": "turn:y", "username": "u", "credential": "p", "credentialType": "oauth"},
    ]})
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.json")
    found = {(p.path, p.error) for p in info.value.problems}
    assert found == {
        ("iceServers[0].urls[1]", "SyntaxError"),
        ("iceServers[1].urls", "InvalidAccessError"),
        ("iceServers[2].urls", "SyntaxError"),
        ("iceServers[3].urls", "TypeError"),
        ("iceServers[4].username", "TypeError"),
        ("iceServers[5]", "TypeError"),
        ("iceServers[6].credentialType", "NotSupportedError"),
    }
    assert str(info.value).startswith("cfg.json: iceServers[0].urls[1]: SyntaxError:")
    assert "(and 6 more)" in str(info.value)


def test_turn_needs_username_and_credential() -> None:
    with pytest.raises(ConfigError, match="no credential"):
        parse_config('[{"urls": "turn:t.example.com", "username": "u"}]')
    # empty strings exist: a browser accepts them
    cfg = parse_config('[{"urls": "turn:t.example.com", "username": "", "credential": ""}]')
    assert cfg.servers[0].urls[0].is_turn


def test_bare_list_legacy_url_and_warnings() -> None:
    cfg = parse_config(json.dumps([
        {"url": "stun:a.example.com"},
        {"urls": ["stun:a.example.com"], "username": "u", "credential": "p", "extra": 1},
    ]))
    assert [u.path for _, u in cfg.urls()] == ["[0].url", "[1].urls[0]"]
    text = "\n".join(cfg.warnings)
    assert "[0].url is deprecated" in text
    assert "repeats [0].url" in text
    assert "[1].extra: unknown member" in text
    assert "only STUN URLs" in text


def test_top_level_shapes() -> None:
    with pytest.raises(ConfigError, match="no 'iceServers'"):
        parse_config('{"servers": []}')
    with pytest.raises(ConfigError, match="expected a list of RTCIceServer"):
        parse_config('{"iceServers": {}}')
    with pytest.raises(ConfigError, match="got a string"):
        parse_config('"stun:x"')
    assert parse_config('{"iceServers": []}').warnings


def test_invalid_json_line_and_column() -> None:
    with pytest.raises(UsageError, match=r"^cfg.json:3:5: invalid JSON"):
        parse_config('{\n "iceServers": [\n    ,\n]}', "cfg.json")


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_config(str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="is a directory"):
        load_config(str(tmp_path))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_config(str(binary))
    good = tmp_path / "good.json"
    good.write_text('{"iceServers": [{"urls": "stun:127.0.0.1:3478"}]}')
    assert load_config(str(good)).source == str(good)


def test_rest_usernames() -> None:
    assert rest_expiry("1700000000:alice") == 1700000000
    assert rest_expiry("alice:1700000000") == 1700000000
    assert rest_expiry("alice") is None
    assert rest_expiry("12:alice") is None
    expired = f"{int(time.time()) - 7200}:alice"
    cfg = parse_config(json.dumps([{"urls": "turn:t", "username": expired, "credential": "x"}]))
    assert any("REST credential expired" in w for w in cfg.warnings)


def test_config_from_urls() -> None:
    cfg = config_from_urls(["stun:127.0.0.1"], ["turn:127.0.0.1?transport=tcp"], "u", "p")
    assert [u.url for _, u in cfg.urls()] == ["stun:127.0.0.1", "turn:127.0.0.1?transport=tcp"]
    with pytest.raises(ConfigError, match="InvalidAccessError"):
        config_from_urls([], ["turn:127.0.0.1"])


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ice"


def test_shipped_examples() -> None:
    good = load_config(str(CONFIGS / "example.json"))
    assert [u.protocol for _, u in good.urls()] == ["udp", "udp", "udp", "tcp", "tls"]
    loop = load_config(str(CONFIGS / "loopback-coturn.json"))
    assert len(loop.urls()) == 3
    with pytest.raises(ConfigError) as info:
        load_config(str(CONFIGS / "browser-rejects.json"))
    assert [(p.path, p.error) for p in info.value.problems] == [
        ("iceServers[0].urls", "SyntaxError"),
        ("iceServers[1].urls[0]", "SyntaxError"),
        ("iceServers[1].urls[1]", "SyntaxError"),
        ("iceServers[2].urls", "InvalidAccessError"),
        ("iceServers[3].urls", "SyntaxError"),
        ("iceServers[4].urls", "SyntaxError"),
        ("iceServers[5].urls", "SyntaxError"),
    ]


def test_udp_only_turn_warning() -> None:
    udp_only = parse_config(json.dumps([{"urls": ["turn:t.example.com"], "username": "u",
                                         "credential": "p"}]))
    assert any("TURN only over UDP" in w for w in udp_only.warnings)
    mixed = parse_config(json.dumps([{"urls": ["turn:t.example.com",
                                               "turns:t.example.com:443?transport=tcp"],
                                      "username": "u", "credential": "p"}]))
    assert not any("TURN only over UDP" in w for w in mixed.warnings)


@pytest.mark.parametrize("url", [
    "turn:127.0.0.1:" + "9" * 5000,
    "turn:127.0.0.1:" + "x" * 5000,
    "stun:" + "h" * 5000 + "/",
    "bogus" * 2000 + ":x",
    "turn:[" + "1" * 5000 + "]",
    "turn:127.0.0.1:00000000000000003478",
])
def test_huge_urls_give_a_short_message(url: str) -> None:
    try:
        parsed = parse_ice_url(url)
    except ConfigError as exc:
        message = exc.problems[0].message
        assert len(message) < 400, message[:100]
        assert "characters)" in message
    else:
        assert parsed.port == 3478
