"""natkit/ice/browsers/knowledge.py: each rule fires where the browser differs, names the
browser and its source, and stays quiet where it does not."""

from __future__ import annotations

import pytest

from natkit.ice.browsers.knowledge import browser_notes
from natkit.ice.config import config_from_data


def notes_for(urls: list[str], username: str = "u") -> set[tuple[str, str, str]]:
    config = config_from_data([{"urls": urls, "username": username, "credential": "p"}])
    return {(n.browser, n.severity, n.url or "$") for n in browser_notes(config)}


def test_quiet_for_an_ordinary_configuration() -> None:
    assert notes_for(["stun:stun.example.com:3478", "turn:turn.example.com:3478",
                      "turns:turn.example.com:443?transport=tcp"]) == set()


@pytest.mark.parametrize(("url", "expect"), [
    ("turns:192.0.2.1:443", {("firefox", "ignored"), ("chromium", "info")}),
    ("turns:[2001:db8::1]:443", {("firefox", "ignored"), ("chromium", "info")}),
    ("stuns:stun.example.com", {("firefox", "ignored")}),
    ("turns:turn.example.com?transport=udp", {("chromium", "warning"), ("firefox", "warning")}),
    ("turn:turn.example.com:25", {("firefox", "rejected")}),
    ("turn:turn.example.com:53", set()),  # DNS's port is on Firefox's list of good ports
])
def test_rules(url: str, expect: set[tuple[str, str]]) -> None:
    assert {(b, s) for b, s, _ in notes_for([url])} == expect


def test_counts_and_lengths() -> None:
    many = [f"turn:t{i}.example.com" for i in range(33)]
    got = notes_for(many)
    assert ("chromium", "ignored", "turn:t32.example.com") in got
    assert ("firefox", "warning", "$") in got  # five or more servers
    long = notes_for(["turn:t.example.com"], username="x" * 510)
    assert ("chromium", "rejected", "turn:t.example.com") in long
    assert ("firefox", "rejected", "turn:t.example.com") not in long  # 510 <= 512 bytes


def test_notes_say_where_they_come_from() -> None:
    config = config_from_data([{"urls": "turns:192.0.2.1", "username": "u", "credential": "p"}])
    (firefox,) = [n for n in browser_notes(config) if n.browser == "firefox"]
    assert "nricectx.cpp" in firefox.source
    assert str(firefox).startswith("[0].urls turns:192.0.2.1: Firefox ignores it: ")
