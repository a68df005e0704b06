"""The library entry points: natkit.check / natkit.check_async."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import natkit
from natkit.ice.check import check, check_sync
from natkit.ice.config import ConfigError


def test_lazy_exports() -> None:
    assert natkit.check is check_sync
    assert natkit.check_async is check


def test_check_sync_with_a_path(tmp_path: Path) -> None:
    path = tmp_path / "ice.json"
    path.write_text(json.dumps({"iceServers": [{"urls": "stun:[::1"}]}))
    with pytest.raises(ConfigError, match=r"iceServers\[0\]\.urls: SyntaxError"):
        natkit.check(str(path))
    path.write_text(json.dumps({"iceServers": []}))
    report = natkit.check(path, timeout=1)
    assert report.ok and report.servers == [] and report.warnings
