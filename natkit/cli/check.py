"""`natkit check FILE`: validate an iceServers configuration, statically and live.

Exit 0 when every URL passes, 1 when a live check fails, 2 for an invalid configuration.
``--json`` keys: ok, source, insecure, timeout, elapsed_ms, warnings, servers[] (url, path, ok,
scheme, protocol, host, port, address, mapped_address, relayed_address, checks[] (name, ok, ms,
detail[, code]), hint); for an invalid configuration: ok=false, errors[] (path, error, message).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from natkit.cli._common import print_json
from natkit.errors import UsageError


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        verb, help=help_text, description=help_text + ". Exit status: 0 all pass, "
        "1 a live check failed, 2 invalid configuration or usage.")
    parser.add_argument("file", metavar="FILE",
                        help="RTCConfiguration JSON ({\"iceServers\": [...]}) or a list of "
                        "RTCIceServer; '-' reads stdin")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds allowed per URL, all URLs in parallel (default 5)")
    parser.add_argument("--insecure", action="store_true",
                        help="accept TLS certificates that do not verify (self-signed, wrong "
                        "name); the report says so")
    parser.add_argument("--ca-file", metavar="PEM", help="trust these CA certificates for TLS")
    parser.add_argument("--static-only", action="store_true",
                        help="only validate the configuration as a browser would; no traffic")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="families", action="store_const", const=(4,),
                        default=(4, 6), help="IPv4 only")
    family.add_argument("-6", dest="families", action="store_const", const=(6,),
                        help="IPv6 only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.ice.check import check
    from natkit.ice.config import ConfigError, load_config

    if not args.timeout > 0 or args.timeout > 600:
        raise UsageError(f"--timeout {args.timeout:g}: expected seconds between 0 and 600")
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        if args.json:
            print_json({"ok": False, "source": exc.source,
                        "errors": [p.as_dict() for p in exc.problems]})
        for problem in exc.problems:
            print(f"natkit check: error: {exc.source}: {problem}", file=sys.stderr)
        return 2
    except UsageError as exc:  # unreadable file, invalid JSON: one line, and JSON if asked
        if args.json:
            print_json({"ok": False, "source": args.file,
                        "errors": [{"path": None, "error": "UsageError", "message": str(exc)}]})
        raise
    if args.static_only:
        if args.json:
            print_json({"ok": True, "source": config.source, "warnings": config.warnings,
                        "urls": [{"url": u.url, "path": u.path} for _, u in config.urls()]})
        else:
            for warning in config.warnings:
                print(f"warning: {warning}")
            print(f"{config.source}: {len(config.urls())} URL(s), valid for a browser")
        return 0
    report = asyncio.run(check(config, timeout=args.timeout, insecure=args.insecure,
                               ca_file=args.ca_file, families=args.families))
    if args.json:
        print_json(report.as_dict())
    else:
        print(format_report(report))
    return report.exit_code


def format_report(report: Any) -> str:
    lines: list[str] = []
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    if report.warnings:
        lines.append("")
    for server in report.servers:
        verdict = "PASS" if server.ok else "FAIL"
        where = f"{server.protocol} -> {server.address}:{server.port}" if server.address else (
            server.protocol)
        lines.append(f"{verdict}  {server.url}  ({where})  [{server.path}]")
        width = max((len(s.name) for s in server.checks), default=4)
        for step in server.checks:
            ms = "" if step.ms is None else f"{step.ms:7.1f} ms"
            mark = "ok  " if step.ok else "FAIL"
            lines.append(f"  {mark} {step.name:<{width}} {ms:>10}  {step.detail}")
        if server.hint:
            lines.append(f"  hint: {server.hint}")
        lines.append("")
    passed = sum(1 for s in report.servers if s.ok)
    lines.append(f"{passed} of {len(report.servers)} URL(s) pass "
                 f"({report.elapsed_ms / 1000:.2f} s)" + (" -- TLS not verified (--insecure)"
                                                          if report.insecure else ""))
    return "\n".join(lines)
