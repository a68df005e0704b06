"""`natkit serve stun|turn`: the subcommands live in serve_stun.py and serve_turn.py."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli import serve_stun, serve_turn


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(verb, help=help_text, description=help_text)
    servers = parser.add_subparsers(dest="server", metavar="SERVER", parser_class=type(parser))
    servers.required = True
    serve_stun.register(servers)
    serve_turn.register(servers)
