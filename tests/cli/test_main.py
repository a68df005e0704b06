from __future__ import annotations

import subprocess
import sys

import pytest

from natkit.cli import VERBS, build_parser, main

MISSION_VERBS = {"serve", "probe", "gather", "candidates", "check", "lab", "bench"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natkit", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_verb_of_the_mission() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for verb in MISSION_VERBS:
        assert verb in out.stdout
    assert set(VERBS) >= MISSION_VERBS


def test_serve_lists_stun_and_turn() -> None:
    out = _run("serve", "--help")
    assert out.returncode == 0 and "stun" in out.stdout and "turn" in out.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-such-flag"],
        ["no-such-verb"],
        ["serve"],
        ["probe", "--timeout", "not-a-number"],
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv: list[str]) -> None:
    out = _run(*argv)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_parser_builds_in_process() -> None:
    assert build_parser().prog == "natkit"
    with pytest.raises(SystemExit) as info:
        main(["--bogus"])
    assert info.value.code == 2
