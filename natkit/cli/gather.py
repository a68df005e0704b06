"""`natkit gather`: gather candidates per STUN/TURN URL, reporting every failure.

Exit 0 when every URL produced its candidate, 1 when any failed, 2 for usage/config errors.
``--json`` keys: ok, elapsed_ms, candidates[] (the `natkit candidates` keys plus url and
elapsed_ms), errors[] (url, address, port, error_code, error_text, elapsed_ms), notes[],
diagnosis[] (code, severity, message).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from natkit.cli._common import print_json
from natkit.errors import UsageError


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(verb, help=help_text, description=help_text)
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
    parser.add_argument("--ipv6", action="store_true", help="also gather over IPv6")
    parser.add_argument("--ipv6-only", action="store_true", help="gather over IPv6 only")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds allowed per URL (default 5)")
    parser.add_argument("--insecure", action="store_true",
                        help="accept TLS certificates that do not verify")
    parser.add_argument("--ca-file", metavar="PEM", help="trust these CA certificates for TLS")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.ice.config import ConfigError, config_from_urls, load_config
    from natkit.ice.gather import Gathered, gather

    if not args.timeout > 0 or args.timeout > 600:
        raise UsageError(f"--timeout {args.timeout:g}: expected seconds between 0 and 600")
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
    families = (6,) if args.ipv6_only else (4, 6) if args.ipv6 else (4,)

    def show(event: Any) -> None:
        if args.json:
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
        if not args.json:
            print(f"warning: {warning}")
    result = asyncio.run(gather(config, policy=args.policy, families=families,
                                timeout=args.timeout, insecure=args.insecure,
                                ca_file=args.ca_file, on_event=show))
    if args.json:
        print_json(result.as_dict())
    else:
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
