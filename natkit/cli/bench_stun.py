"""`natkit bench stun`: Binding responses/s of natkit vs coturn, per core, and the ratio."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from natkit.cli._common import print_json, progress_printer

HELP = "Binding responses/s of natkit vs coturn, per core"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "stun",
        help=HELP,
        description=HELP + ": both servers on loopback, alternating, each pinned to one core "
        "(taskset) with the C load generator stunflood on another core.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (5)")
    parser.add_argument("--rounds", type=int, default=2, help="natkit/coturn pairs to run (2)")
    parser.add_argument(
        "--server-cpu", type=int, default=1, help="core the server is pinned to (1)"
    )
    parser.add_argument(
        "--generator-cpu", type=int, default=0, help="core the generator is pinned to (0)"
    )
    parser.add_argument("--sockets", type=int, default=16, help="generator sockets (16)")
    parser.add_argument("--window", type=int, default=32, help="requests in flight per socket (32)")
    parser.add_argument(
        "--generator-source",
        type=Path,
        metavar="FILE",
        help="stunflood.c (default ../shared/tools/stunflood.c)",
    )
    parser.add_argument(
        "--fast-path", choices=("auto", "c", "python"), default="auto",
        help="natkit's UDP fast path: the C helper (auto/c) or pure Python",
    )  # fmt: skip
    parser.add_argument("--no-coturn", action="store_true", help="measure natkit alone")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.bench.stun import run as bench

    report = bench(
        seconds=args.seconds,
        rounds=args.rounds,
        server_cpu=args.server_cpu,
        generator_cpu=args.generator_cpu,
        sockets=args.sockets,
        window=args.window,
        generator_source=args.generator_source,
        fast_path=args.fast_path,
        with_coturn=not args.no_coturn,
        progress=progress_printer(args.json),
    )
    if args.json:
        print_json(report)
        return 0
    n = report["natkit"]
    print()
    print(f"natkit  {n['rate']:>10,} Binding responses/s  (fast path: {n['fast_path']})")
    if "coturn" in report:
        c = report["coturn"]
        print(f"coturn  {c['rate']:>10,} Binding responses/s  ({c['version']})")
        print(f"ratio   {report['ratio']:>10.2f}x natkit/coturn per core "
              f"(rounds: {', '.join(f'{r:.2f}' for r in report['ratio_per_round'])})")  # fmt: skip
        if report["ratio_per_cpu_second"]:
            print(
                f"        {report['ratio_per_cpu_second']:>10.2f}x per CPU-second of the server process"
            )
    return 0
