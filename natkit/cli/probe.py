"""`natkit probe`: the public address and the NAT's behaviour (natkit.probe)."""

from __future__ import annotations

import argparse
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
    parse_hostport,
    verb_parser,
)
from natkit.errors import UsageError

EXAMPLES = (
    "natkit probe                                   # the default public STUN servers",
    "natkit probe --server stun:stun.example.org --server stun.other.net:3478 --json",
    "natkit probe -4 --timeout 2 --no-behaviour     # only the public IPv4 mapping",
    "natkit probe --server stuns:stun.example.org --ca-file ca.pem",
    "natkit probe --lifetime                        # also measure the binding lifetime",
)


def register(sub: Any, verb: str, help_text: str) -> None:
    parser = verb_parser(
        sub, verb, help_text,
        help_text + ". Exit 0 when classified (udp-blocked included), 1 when no server "
        "answered, 2 for usage errors.", EXAMPLES)
    parser.add_argument(
        "--server",
        "-s",
        action="append",
        metavar="URL",
        default=[],
        help="stun:host[:port], stuns:host[:port] or host[:port]; repeat to ask "
        "several servers concurrently (default: configs/stun-servers.toml)",
    )
    add_json_option(parser, "the result")
    add_timeout_option(parser, 3.0, "seconds for the whole probe, DNS included")
    parser.add_argument(
        "--local",
        metavar="ADDR[:PORT]",
        help="bind the probe's primary socket to this address (and port)",
    )
    add_family_options(parser, "probe")
    add_tls_options(parser)
    parser.add_argument(
        "--lifetime",
        action="store_true",
        help="also measure how long an idle UDP binding lives (bounded search, after "
        "--timeout)",
    )
    parser.add_argument(
        "--lifetime-max",
        type=float,
        default=60.0,
        metavar="S",
        help="upper bound of the lifetime search in seconds (default 60)",
    )
    parser.add_argument(
        "--no-behaviour",
        "--no-behavior",
        dest="behaviour",
        action="store_false",
        help="only find the public address",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="per-test detail")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.nat.probe import probe_sync

    check_timeout(args.timeout)
    if args.lifetime_max < 1 or args.lifetime_max > 3600:
        raise UsageError(f"--lifetime-max {args.lifetime_max}: give seconds in [1, 3600]")
    check_output("--json", args.json)
    local = parse_hostport(args.local, 0) if args.local else None
    families = None if set(args.families) == {4, 6} else tuple(args.families)
    if local is not None and families is not None and (6 if ":" in local[0] else 4) not in families:
        raise UsageError(f"--local {args.local} is not an address of the family asked for")
    ssl_context = None
    if args.insecure or args.ca_file:
        from natkit.ice.tls import insecure_context, verifying_context

        ssl_context = insecure_context() if args.insecure else verifying_context(args.ca_file)
    if args.lifetime:
        print(
            f"natkit probe: measuring the binding lifetime (up to {args.lifetime_max:g} s)...",
            file=sys.stderr,
            flush=True,
        )
    result = probe_sync(
        args.server or None,
        timeout=args.timeout,
        local=local,
        families=families,
        behaviour=args.behaviour,
        lifetime=args.lifetime,
        lifetime_max=args.lifetime_max,
        ssl_context=ssl_context,
    )
    data = result.to_json()
    if args.json:
        emit_json(args.json, data)
    if args.json != "-":
        print(render(data, verbose=args.verbose))
    if not result.answered:
        dns_only = data["errors"] and all("did not answer within" in e for e in data["errors"])
        print("natkit probe: " + (
            "the DNS server did not answer, so no STUN server was asked (check "
            "/etc/resolv.conf, or give --server with an IP address)" if dns_only else
            "no server answered (check the address, or that UDP/TCP to it is allowed)"),
            file=sys.stderr)
    return result.exit_code


def _a(a: Any) -> str:
    if not a:
        return "-"
    return f"[{a['ip']}]:{a['port']}" if ":" in a["ip"] else f"{a['ip']}:{a['port']}"


def render(data: dict[str, Any], verbose: bool = False) -> str:
    """The human summary of ``ProbeResult.to_json()``."""
    lines: list[str] = []
    fams = data.get("families") or {}
    for name, d in fams.items() or [("", data)]:
        label = "IPv6" if name == "ipv6" else "IPv4"
        nat = d["nat_type"] + (
            f": {d['reason']}" if d["nat_type"] == "unknown" and d["reason"] else ""
        )
        hp = {True: "yes", False: "no", None: "not tested"}[d["hairpinning"]]
        lines.append(f"{label}")
        lines.append(
            f"  public address  {_a(d['public'])}"
            + ("  (seen over TCP/TLS)" if d["udp_blocked"] else "")
        )
        lines.append(f"  local address   {_a(d['local'])}")
        lines.append(f"  NAT type        {nat}")
        lines.append(f"  mapping         {d['mapping']}")
        lines.append(f"  filtering       {d['filtering']}")
        lines.append(f"  hairpinning     {hp}")
        if d.get("lifetime_s"):
            lt = d["lifetime_s"]
            lines.append(f"  binding lives   {lt['min']}s .. {lt['max'] or '?'}s")
        if d["alg"]:
            lines.append("  ALG             yes: something rewrites addresses in packets")
        lines.append(f"  for peers       {d['ice']['summary']}")
        for s in d["servers"]:
            where = s["url"] if s["url"] == s["address"] else f"{s['url']} ({s['address']})"
            parts = []
            if s["transport"] == "udp":
                parts.append(
                    f"UDP {s['rtt_s'] * 1000:.1f} ms, mapped {_a(s['mapped'])}"
                    if s["rtt_s"] is not None
                    else "no UDP answer"
                )
            st = s.get("stream")
            if st and (st["answered"] or s["transport"] != "udp"):
                parts.append(
                    f"{st['transport'].upper()} {st['rtt_s'] * 1000:.1f} ms, mapped {_a(st['mapped'])}"
                    if st["answered"]
                    else f"no {st['transport'].upper()} answer"
                )
            if s["rfc5780"]:
                parts.append("RFC 5780")
            lines.append(f"  server {where}: {'; '.join(parts)}")
        if verbose:
            for t in d["tests"]:
                got = (
                    f"from {t['answered_from']} mapped {_a(t['mapped'])}"
                    + (f" error {t['error']}" if t["error"] is not None else "")
                    if t["answered"]
                    else "no answer"
                )
                lines.append(
                    f"    {t['name']:<12} {_a(t['local'])} -> {t['sent_to']} "
                    f"change={t['change_request']} expect {t['expected_from']}: {got} "
                    f"({t['attempts']} sent)"
                )
            for n in d["notes"]:
                lines.append(f"    note: {n}")
    for e in data.get("errors", []):
        lines.append(f"error: {e}")
    lines.append(f"took {data['duration_s']:.2f} s")
    return "\n".join(lines)
