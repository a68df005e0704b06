"""`natkit gather`: gather candidates per STUN/TURN URL, reporting every failure.

Exit 0 when every URL produced its candidate, 1 when any failed, 2 for usage/config errors.
The JSON shape is in docs/json.md ("gather").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from natkit.cli._common import (
    add_family_options,
    add_json_option,
    add_timeout_option,
    add_tls_options,
    check_output,
    check_timeout,
    emit_json,
    verb_parser,
)
from natkit.errors import UsageError


def register(sub: Any, verb: str, help_text: str) -> None:
    parser = verb_parser(sub, verb, help_text, help_text + ". Exit status: 0 every URL gave "
                         "its candidate, 1 one failed, 2 usage or configuration errors.", (
                             "natkit gather iceServers.json",
                             "natkit gather --turn turn:turn.example.org --username u "
                             "--credential p --policy relay",
                             "natkit gather --stun stun:stun.example.org -4 --json",
                         ))
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="iceServers JSON file ('-' for stdin); or use --stun/--turn")
    parser.add_argument("--stun", action="append", default=[], metavar="URL",
                        help="a stun: URL (repeatable)")
    parser.add_argument("--turn", action="append", default=[], metavar="URL",
                        help="a turn:/turns: URL (repeatable)")
    parser.add_argument("--username", help="TURN username for --turn")
    parser.add_argument("--credential", help="TURN password for --turn")
    parser.add_argument("--policy", choices=("all", "relay"), default="all",
                        help="RTCIceTransportPolicy (default all)")
    add_family_options(parser, "gather")
    add_timeout_option(parser, 5.0, "seconds allowed per URL")
    add_tls_options(parser)
    add_json_option(parser, "the candidates and errors")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.ice.config import ConfigError, config_from_urls, load_config
    from natkit.ice.gather import Gathered, gather

    check_timeout(args.timeout)
    inputs = [args.file if args.file not in (None, "-") else None]
    check_output("--json", args.json, inputs)
    if args.file and (args.stun or args.turn):
        raise UsageError("give either an iceServers FILE or --stun/--turn, not both")
    if not args.file and not (args.stun or args.turn):
        raise UsageError("nothing to gather from: give an iceServers FILE or --stun/--turn URLs")
    try:
        if args.file:
            config = load_config(args.file)
        else:
            config = config_from_urls(args.stun, args.turn, args.username, args.credential)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"natkit gather: error: {exc.source}: {problem}", file=sys.stderr)
        return 2
    families = tuple(args.families)
    text = args.json != "-"

    def show(event: Any) -> None:
        if not text:
            return
        if isinstance(event, Gathered):
            c = event.candidate
            related = (f" raddr {c.related_address}:{c.related_port}"
                       if c.related_address else "")
            via = f"  {c.url}" + (f" ({c.relay_protocol})" if c.relay_protocol else "")
            print(f"{event.elapsed_ms / 1000:7.3f}  {c.type:<5}  {c.transport} "
                  f"{c.address}:{c.port}{related}{via if c.url else ''}", flush=True)
        else:
            local = f" from {event.address}:{event.port}" if event.address else ""
            print(f"{event.elapsed_ms / 1000:7.3f}  error  {event.error_code}  {event.url}"
                  f"{local}: {event.error_text}", flush=True)

    for warning in config.warnings:
        if text:
            print(f"warning: {warning}")
    result = asyncio.run(gather(config, policy=args.policy, families=families,
                                timeout=args.timeout, insecure=args.insecure,
                                ca_file=args.ca_file, on_event=show))
    if args.json:
        emit_json(args.json, result.as_dict(), inputs)
    if text:
        for note in result.notes:
            print(f"note: {note}")
        findings = result.diagnosis()
        if findings:
            print()
        for finding in findings:
            print(f"{finding.severity}: {finding.message}")
        print(f"{len(result.candidates)} candidate(s), {len(result.errors)} error(s) in "
              f"{result.elapsed_ms / 1000:.2f} s")
    return 0 if result.ok else 1
