"""The library entry points: async-first names with _sync twins, an eager documented API."""

from __future__ import annotations

import asyncio
import inspect
import json
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest

import natkit
from natkit.ice.check import check, check_sync
from natkit.ice.config import ConfigError


def test_async_first_names_with_sync_twins() -> None:
    assert natkit.check is check and natkit.check_sync is check_sync
    for name in ("check", "probe", "gather"):
        assert inspect.iscoroutinefunction(getattr(natkit, name)), name
        twin = getattr(natkit, f"{name}_sync")
        assert not inspect.iscoroutinefunction(twin), name
    assert not hasattr(natkit, "check_async") and not hasattr(natkit, "probe_async")


def test_help_shows_the_api() -> None:
    text = pydoc.render_doc(natkit, renderer=pydoc.plaintext)
    for name in ("check_sync", "probe(", "TurnServer", "parse_candidates", "ConfigError"):
        assert name in text, name


def test_lab_is_lazy_but_reachable() -> None:
    code = ("import sys, natkit; assert 'natkit.lab' not in sys.modules; "
            "assert callable(natkit.lab.run); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_check_sync_with_a_path(tmp_path: Path) -> None:
    path = tmp_path / "ice.json"
    path.write_text(json.dumps({"iceServers": [{"urls": "stun:[::1"}]}))
    with pytest.raises(ConfigError, match=r"iceServers\[0\]\.urls: SyntaxError"):
        natkit.check_sync(str(path))
    path.write_text(json.dumps({"iceServers": []}))
    report = natkit.check_sync(path, timeout=1)
    assert report.ok and report.servers == [] and report.warnings


async def test_check_inside_a_running_loop() -> None:
    report = await natkit.check({"iceServers": []}, timeout=1)
    assert report.ok
    with pytest.raises(RuntimeError, match=r"await natkit\.check"):
        natkit.check_sync({"iceServers": []})


def test_library_errors_name_the_parameter() -> None:
    with pytest.raises(natkit.ConfigError) as info:
        asyncio.run(natkit.check({"iceServers": []}, timeout=0))
    assert info.value.param == "timeout" and "--" not in str(info.value)
    with pytest.raises(natkit.ConfigError) as info:
        natkit.probe_sync(["127.0.0.1"], timeout=-1)
    assert info.value.param == "timeout"
    with pytest.raises(natkit.ConfigError) as info:
        natkit.gather_sync({"iceServers": []}, policy="some")
    assert info.value.param == "policy"
