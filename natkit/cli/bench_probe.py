"""`natkit bench probe`: natkit probe vs turnutils_natdiscovery on lab NATs (natkit.bench.probe)."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import print_json, progress_printer, verb_parser


def register(sub: Any) -> None:
    help_text = "probe time of natkit vs turnutils_natdiscovery on lab NATs"
    parser: argparse.ArgumentParser = verb_parser(
        sub, "probe", help_text,
        help_text + " (needs root, nftables, coturn). "
        "Builds each NAT in network namespaces, runs an RFC 5780 server on its public side and "
        "both probes behind it, and prints the time ratio.",
        [
            "natkit bench probe --nat symmetric --nat full-cone",
            "natkit bench probe --server natkit --no-natdiscovery --json",
        ],
    )
    parser.add_argument(
        "--nat", action="append", metavar="PRESET", help="NAT preset (repeatable; default: all six)"
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=("coturn", "natkit"),
        help="STUN server to probe against (repeatable; default: coturn)",
    )
    parser.add_argument(
        "--no-natdiscovery", dest="natdiscovery", action="store_false", help="time natkit only"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.bench.probe import PRESETS, bench_probe

    result = bench_probe(
        args.nat or PRESETS,
        args.server or ("coturn",),
        natdiscovery=args.natdiscovery,
        progress=progress_printer(args.json),
    )
    data = result.to_json()
    if args.json:
        print_json(data)
        return 0 if data["all_correct"] else 1
    print()
    print(f"{'NAT':<16} {'server':<7} {'natkit':>8} {'natdiscovery':>13} {'ratio':>7}  natkit says")
    for r in data["rows"]:
        nd = f"{r['natdiscovery_s']:.2f}s" if r["natdiscovery_s"] is not None else "-"
        ratio = (
            "-"
            if r["ratio"] is None
            else (f"{r['ratio']:.1f}x" if r["ratio"] >= 1 else f"{r['ratio']:.2f}x")
        )
        ok = "" if r["correct"] else "  (WRONG)"
        print(
            f"{r['nat']:<16} {r['server']:<7} {r['natkit_s']:>7.2f}s {nd:>13} {ratio:>7}  "
            f"{r['natkit_nat_type']}{ok}"
        )
    if data["ratio"] is not None:
        print(
            f"\nturnutils_natdiscovery -m -f -H took {data['ratio']:.1f}x as long as natkit probe "
            "in total (wall time, same NATs, same run)"
        )
    print(f"reproduce: {data['command']}")
    return 0 if data["all_correct"] else 1
