from __future__ import annotations

import argparse
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


def test_config_error_names_the_flag_of_its_parameter() -> None:
    from natkit.cli import _one_line, flag_for
    from natkit.errors import ConfigError, PrerequisiteError, ProtocolError

    parser = build_parser()
    assert flag_for(parser, "external_ip", ["serve", "turn"]) == "--external-ip"
    assert flag_for(parser, "no_such_parameter") is None
    exc = ConfigError("not an IP address: 'x'", param="external_ip")
    assert _one_line(exc, parser, ["serve", "turn"]) == "--external-ip: not an IP address: 'x'"
    located = ConfigError("bad value", param="external_ip", where="lab.toml:3")
    assert _one_line(located, parser, []) == "lab.toml:3: bad value"
    assert PrerequisiteError.exit_code == 2 and ProtocolError.exit_code == 1
    assert ConfigError.exit_code == 2 and isinstance(exc, ValueError)


def _every_parser(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _every_parser(child, (*path, name))
    return found


def test_every_help_has_a_description_and_an_example() -> None:
    missing = []
    for path, parser in _every_parser(build_parser())[1:]:
        text = parser.format_help()
        if not parser.description or "examples:\n  natkit " + " ".join(path) not in text:
            missing.append(" ".join(path))
    assert not missing, f"--help without a description or an example: {missing}"
