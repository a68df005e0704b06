"""`natkit demo`: start natkit's STUN responder in RFC 5780 mode on two loopback addresses,
probe it with `natkit probe`, and print what the probe found. A self-test of the stack that
needs no network beyond loopback."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from natkit.cli._common import add_json_option, check_output, emit_json, verb_parser


async def demo(primary: str = "127.0.0.1", alternate: str = "127.0.0.2") -> dict[str, Any]:
    """Run the responder and the probe against it; the probe's JSON report."""
    from natkit.nat.probe import probe
    from natkit.server.stun import StunServer

    async with StunServer(listen=[(primary, 0)], alternate_ip=alternate) as server:
        port = server.addresses_of("udp")[0][1]
        result = await probe([f"stun:{primary}:{port}"], timeout=3.0)
        return result.to_json()


def register(sub: Any, verb: str, help_text: str) -> None:
    parser = verb_parser(sub, verb, help_text, help_text + ". Exit 0 when the probe sees no "
                         "NAT and endpoint-independent mapping, as it must on loopback.",
                         ("natkit demo", "natkit demo --json demo.json"))
    add_json_option(parser, "the probe's report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.cli.probe import render

    check_output("--json", args.json)
    data = asyncio.run(demo())
    if args.json:
        emit_json(args.json, data)
    if args.json != "-":
        print("natkit demo: STUN responder in RFC 5780 mode on 127.0.0.1 + 127.0.0.2, probed:")
        print(render(data))
    ok = data["nat_type"] == "open" and data["mapping"] in ("none", "endpoint-independent")
    return 0 if ok else 1
