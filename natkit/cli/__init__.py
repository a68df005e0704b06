"""The ``natkit`` command line: parse arguments, call a library function, print.

Each verb lives in a module of its own here (``natkit/cli/<verb>.py``) exposing
``register(subparsers)``; the modules hold no logic a library caller would need.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from natkit.errors import ConfigError, NatkitError

# verb -> (module, one-line help). Order is the order of ``natkit --help``.
VERBS: dict[str, tuple[str, str]] = {
    "serve": ("natkit.cli.serve", "run a STUN responder or TURN relay (serve stun | serve turn)"),
    "probe": ("natkit.cli.probe", "find the public address and classify the NAT (RFC 4787/5780)"),
    "gather": ("natkit.cli.gather", "gather ICE candidates per server, reporting every failure"),
    "candidates": ("natkit.cli.candidates", "parse, classify and validate ICE candidates / SDP"),
    "check": ("natkit.cli.check", "validate an iceServers configuration, statically and live"),
    "lab": ("natkit.cli.lab", "NAT test lab: real Linux NATs and real WebRTC peers"),
    "bench": ("natkit.cli.bench", "benchmarks against coturn (bench stun | bench turn | bench probe)"),
    "demo": ("natkit.cli.demo", "start a local RFC 5780 responder and probe it (a self-test)"),
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="natkit",
        description="natkit: STUN/TURN and NAT-traversal toolkit. "
        "Run a NAT test lab, probe your public address, validate ICE server configs.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    sub.required = True
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(module_name)
        module.register(sub, verb, help_text)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"natkit {version('natkit')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "natkit (source)"


def flag_for(parser: argparse.ArgumentParser, param: str, argv: Sequence[str] = ()) -> str | None:
    """The option string of the flag whose value is the library parameter ``param``.

    Looks in the sub-parsers of the verb named in ``argv`` first (``serve turn`` before
    ``serve stun``), then anywhere; None when no flag sets it.
    """
    found: list[tuple[int, str]] = []

    def walk(p: argparse.ArgumentParser, depth: int) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, depth + (1 if name in argv else 0))
            elif action.dest == param and action.option_strings:
                long = [o for o in action.option_strings if o.startswith("--")]
                found.append((depth, (long or action.option_strings)[0]))

    walk(parser, 0)
    return max(found)[1] if found else None


def _one_line(exc: NatkitError, parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    if isinstance(exc, ConfigError) and exc.param and not exc.where:
        flag = flag_for(parser, exc.param, argv)
        if flag:
            return f"{flag}: {exc.message}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except NatkitError as exc:
        # User input (2), the environment (2) and remote failures (1) end in one line; any
        # other exception is a bug and keeps its traceback.
        print(f"natkit {args.verb}: error: {_one_line(exc, parser, argv)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("natkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`natkit ... | head`): not an error of ours.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(result or 0)
