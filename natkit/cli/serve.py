"""`natkit serve stun|turn`: the subcommands live in serve_stun.py and serve_turn.py."""

from __future__ import annotations

from typing import Any

from natkit.cli import serve_stun, serve_turn
from natkit.cli._common import verb_parser


def register(sub: Any, verb: str, help_text: str) -> None:
    parser = verb_parser(sub, verb, help_text, help_text, [
        "natkit serve stun --listen 127.0.0.1:3478                       # a STUN responder",
        "natkit serve turn --listen 127.0.0.1:3478 --user alice:s3cret   # a TURN relay",
    ])
    servers = parser.add_subparsers(dest="server", metavar="SERVER", parser_class=type(parser))
    servers.required = True
    serve_stun.register(servers)
    serve_turn.register(servers)
