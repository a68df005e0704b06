"""No input, however hostile, gives a traceback: `check` and `candidates` on deep nesting, huge
integers, NaN, /dev/zero, a 2 GB file end in one line and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

HOSTILE = {
    "nested": "[" * 100_000 + "]" * 100_000,
    "nested-object": '{"iceServers": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001,
    "big-int": '{"iceServers": [{"urls": "stun:x", "n": ' + "9" * 5000 + "}]}",
    "nan": '{"iceServers": [{"urls": "stun:127.0.0.1", "n": NaN}]}',
    "infinity": '[{"urls": "stun:127.0.0.1", "n": -Infinity}]',
    "overflow": '[{"urls": "stun:127.0.0.1", "n": 1e999}]',
}


def natkit(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "natkit", *argv], capture_output=True,
                          text=True, timeout=50, input=None if stdin is None else stdin.decode())


def assert_one_line(out: subprocess.CompletedProcess[str], *expect: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    for text in expect:
        assert text in out.stderr, out.stderr


@pytest.mark.parametrize("verb", ["check", "candidates"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_json(tmp_path: Path, verb: str, kind: str) -> None:
    path = tmp_path / f"{kind}.json"
    path.write_text(HOSTILE[kind])
    out = natkit(verb, str(path))
    want = {"nested": "nested more than", "nested-object": "nested more than",
            "big-int": "5000 digits", "nan": "NaN is not JSON", "infinity": "-Infinity is not JSON",
            "overflow": "Infinity"}[kind]
    assert_one_line(out, str(path), want)


@pytest.mark.parametrize("verb", ["check", "candidates"])
def test_dev_zero_and_a_2gb_file(tmp_path: Path, verb: str) -> None:
    assert_one_line(natkit(verb, "/dev/zero"), "/dev/zero: larger than")
    big = tmp_path / "big.json"
    with big.open("wb") as f:  # sparse: costs no disk
        f.truncate(2 * 1024 ** 3)
    assert_one_line(natkit(verb, str(big)), "larger than 8 MiB")


def test_huge_stdin_is_capped(tmp_path: Path) -> None:
    out = natkit("check", "-", stdin=b"[" + b" " * (9 * 1024 * 1024) + b"]")
    assert_one_line(out, "<stdin>: larger than")


def test_nul_bytes_are_not_text(tmp_path: Path) -> None:
    path = tmp_path / "nul.json"
    path.write_bytes(b'{"iceServers": []}\x00\x00')
    assert_one_line(natkit("check", str(path)), "NUL bytes")
    assert os.path.getsize(path) == 20
