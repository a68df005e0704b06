"""`natkit bench stun`: Binding responses/s of natkit vs coturn and a bare C reflector."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import print_json, progress_printer, verb_parser

HELP = "Binding responses/s of natkit vs coturn and a bare C reflector, per core"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = verb_parser(
        sub, "stun", HELP,
        HELP + ": the servers on loopback, alternating, each pinned to one core "
        "(taskset) with natkit's batching C load generator on another core. The bare "
        "reflector (the ceiling) is what one core answers through the same syscalls.",
        [
            "natkit bench stun --seconds 3 --rounds 1",
            "natkit bench stun --fast-path python --no-coturn --json",
        ],
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all servers (2)")
    parser.add_argument(
        "--server-cpu", type=int, default=1, help="core the server is pinned to (1)"
    )
    parser.add_argument(
        "--generator-cpu", type=int, default=0, help="core the generator is pinned to (0)"
    )
    parser.add_argument("--sockets", type=int, default=16, help="generator sockets (16)")
    parser.add_argument("--window", type=int, default=32, help="requests in flight per socket (32)")
    parser.add_argument(
        "--fast-path", choices=("auto", "c", "python"), default="auto",
        help="natkit's UDP path: the C extension (auto/c) or pure Python (NATKIT_NO_CEXT=1)",
    )  # fmt: skip
    parser.add_argument("--no-coturn", action="store_true", help="do not measure coturn")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="do not measure the bare C reflector"
    )
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
        fast_path=args.fast_path,
        with_coturn=not args.no_coturn,
        with_ceiling=not args.no_ceiling,
        progress=progress_printer(args.json),
    )
    if args.json:
        print_json(report)
        return 0
    n = report["natkit"]
    print()
    print(f"natkit   {n['rate']:>10,} Binding responses/s  ({n['udp_path']})")
    if "coturn" in report:
        print(f"coturn   {report['coturn']['rate']:>10,} Binding responses/s  "
              f"({report['coturn']['version']})")  # fmt: skip
    if "ceiling" in report:
        print(f"ceiling  {report['ceiling']['rate']:>10,} Binding responses/s  "
              "(bare C reflector, same core)")  # fmt: skip
    for key, label in (("ratio", "natkit/coturn"), ("ceiling_ratio", "natkit/ceiling")):
        if report.get(key) is None:
            continue
        rounds = ", ".join(f"{r:.2f}" for r in report[f"{key}_per_round"] if r is not None)
        line = f"{label:<15} {report[key]:>5.2f}x per core (rounds: {rounds})"
        per_cpu = report.get(f"{key}_per_cpu_second")
        if per_cpu:
            line += f"; {per_cpu:.2f}x per CPU-second of the server"
        print(line)
    g = report["generator"]
    print(f"generator: {g['sockets']} sockets x {g['window']} in flight, "
          f"{'UDP GSO' if g['gso'] else 'sendmmsg'}, at most {g['max_cpu']:.0%} of core {g['cpu']}")  # fmt: skip
    return 0
