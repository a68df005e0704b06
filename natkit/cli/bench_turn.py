"""`natkit bench turn`: natkit's TURN relay vs coturn, same client, same run, per core."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import print_json, progress_printer, verb_parser
from natkit.errors import UsageError

HELP = "TURN relay throughput and allocations, natkit vs coturn"
TARGET_KEYS = ("channel_data.relayed_per_s", "send_indication.relayed_per_s", "allocations.per_s")
NULL_KEY = "channel_data.relayed_per_s"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"

ROWS = (  # (label, section, key, format)
    ("ChannelData relayed packets/s", "channel_data", "relayed_per_s", "{:,}"),
    ("  per server CPU-second", "channel_data", "per_cpu_second", "{:,}"),
    ("  loss", "channel_data", "loss", "{:.3%}"),
    ("  server / driver CPU", "channel_data", None, ""),
    ("Send/Data indications relayed/s", "send_indication", "relayed_per_s", "{:,}"),
    ("  per server CPU-second", "send_indication", "per_cpu_second", "{:,}"),
    ("  loss", "send_indication", "loss", "{:.3%}"),
    ("  server / driver CPU", "send_indication", None, ""),
    ("allocations/s", "allocations", "per_s", "{:,}"),
    ("memory per idle allocation (bytes)", "allocations", "bytes_per_allocation", "{:,}"),
    ("allocations held after refresh", "allocations", "refreshed", "{:,}"),
)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = verb_parser(
        sub, "turn", HELP,
        HELP + ": each engine on loopback pinned to one core (taskset), the C "
        "driver turnload on another: ChannelData and Send-indication relay rates and loss, "
        "allocations/s, memory per idle allocation; each figure for both and the ratio.",
        [
            "natkit bench turn --seconds 3 --rounds 1",
            "natkit bench turn --engines natkit --allocations 100 --json",
        ],
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each traffic run (5)")
    parser.add_argument(
        "--engines", default="natkit,coturn", help="comma-separated: natkit,coturn (both)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per engine (1)")
    parser.add_argument(
        "--allocations", type=int, default=10_000, help="allocations for the memory figure (10000)"
    )
    parser.add_argument("--clients", type=int, default=16, help="allocations carrying traffic (16)")
    parser.add_argument(
        "--window", type=int, default=32, help="packets in flight per allocation (32)"
    )
    parser.add_argument("--payload", type=int, default=100, help="payload bytes per packet (100)")
    parser.add_argument(
        "--server-cpu", type=int, default=1, help="core the server is pinned to (1)"
    )
    parser.add_argument(
        "--driver-cpu", type=int, default=0, help="core the driver is pinned to (0)"
    )
    parser.add_argument(
        "--no-self-test",
        action="store_true",
        help="skip the driver self-test (the same traffic against the driver's C null relay)",
    )
    parser.add_argument(
        "--no-gro",
        action="store_true",
        help="run natkit with --no-gro (its C path reads every datagram on its own)",
    )
    parser.add_argument(
        "--no-c-allocate",
        action="store_true",
        help="run natkit with --no-c-allocate (every authenticated Allocate in its engine)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="also run ChannelData against natkit with 1 and with N processes (serve turn "
        "--workers N) each round: relayed/s per busy server core and the efficiency",
    )
    parser.add_argument(
        "--worker-cpus",
        metavar="LIST",
        help="taskset CPU list for those runs (default: the server's core; on 2 cores keep "
        "the driver's core out of it)",
    )
    parser.add_argument(
        "--transport",
        choices=("udp", "tcp", "tls"),
        default="udp",
        help="udp: every figure with the C driver (default); tcp or tls: ChannelData over "
        "TURN-over-TCP/TLS only (driver natkit.bench.turn_stream: over TCP a C loop that is "
        "its own UDP peer, over TLS a Python loop with turnutils_peer)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.bench.turn import run as bench

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines:
        raise UsageError("--engines is empty: give natkit, coturn or natkit,coturn")

    if args.transport != "udp":
        from natkit.bench.turn import run_stream

        report = run_stream(
            transport=args.transport, seconds=args.seconds, engines=engines, rounds=args.rounds,
            clients=args.clients, window=args.window, payload=args.payload,
            server_cpu=args.server_cpu, driver_cpu=args.driver_cpu,
            progress=progress_printer(args.json),
        )  # fmt: skip
        if args.json:
            print_json(report)
        else:
            print()
            print(format_stream_report(report))
        return 0
    report = bench(
        seconds=args.seconds,
        engines=engines,
        rounds=args.rounds,
        allocations=args.allocations,
        clients=args.clients,
        window=args.window,
        payload=args.payload,
        server_cpu=args.server_cpu,
        driver_cpu=args.driver_cpu,
        self_test=not args.no_self_test,
        gro=not args.no_gro,
        c_allocate=not args.no_c_allocate,
        workers=args.workers,
        worker_cpus=args.worker_cpus,
        progress=progress_printer(args.json),
    )
    if args.json:
        print_json(report)
        return 0
    print()
    print(format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    """The report as a table: one row per figure, a column per engine, and the ratio."""
    engines = list(report["engines"])
    ratios = report.get("ratios", {})
    head = f"{'figure':<36}" + "".join(f"{e:>14}" for e in engines)
    head += f"{'natkit/coturn':>15}" if ratios else ""
    lines = [head, "-" * len(head)]
    for label, section, key, fmt in ROWS:
        cells = []
        for e in engines:
            fig = report["engines"][e][section]
            if key is None:
                cells.append(f"{fig['server_cpu']:.0%} / {fig['driver_cpu']:.0%}")
            elif key == "refreshed":
                cells.append(f"{fig['refreshed']:,}/{fig['allocated']:,}")
            else:
                value = fig.get(key)
                cells.append("-" if value is None else fmt.format(value))
        row = f"{label:<36}" + "".join(f"{c:>14}" for c in cells)
        ratio = ratios.get(f"{section}.{key}") if key else None
        if ratio is not None:
            row += f"{ratio:>14.2f}x"
        lines.append(row)
    s = report["settings"]
    lines.append("")
    lines.append(
        f"server on CPU {s['server_cpu']}, driver on CPU {s['driver_cpu']}; {s['clients']} "
        f"allocations x {s['window']} packets in flight, {s['payload']}-byte payloads, "
        f"{s['seconds']:g} s per traffic run, {s['allocations']:,} allocations for memory"
    )
    lines.append("limited by: " + ", ".join(f"{k} {v}" for k, v in report["limits"].items()))
    load = s["load_average"]
    lines.append(
        f"load average (1 min) before/after the runs: {load[0]} / {load[1]} "
        "(the bench itself adds about 2)"
    )
    if load[0] > 0.5:  # before: none of the bench's own processes were running yet
        lines.append(
            "  other work was running: the pinned cores were shared and the figures are noisy; "
            "'per server CPU-second' is the steadier comparison"
        )
    lines.append(
        f"driver process: at most {report['driver_max_cpu']:.0%} of its core in any run "
        "(the verdicts above count whole-core busy time, softirq included)"
    )
    if "self_test" in report:
        st = report["self_test"]
        ch, sd = st["channel_data"], st["send_indication"]
        lines.append(
            f"the driver's C null relay on the server's core (the ceiling), median: ChannelData "
            f"{ch['relayed_per_s']:,}/s, Send {sd['relayed_per_s']:,}/s"
        )
    per_round = report.get("ratios_per_round", [])
    null_round = report.get("null_ratios_per_round", [])
    for i in range(max(len(per_round), len(null_round))):
        parts = []
        if i < len(per_round):
            r = per_round[i]
            parts.append(
                "vs coturn: ChannelData {}, Send {}, allocations {}".format(
                    *(_x(r.get(k)) for k in TARGET_KEYS)
                )
            )
        if i < len(null_round):
            parts.append(f"vs null relay: ChannelData {_x(null_round[i].get(NULL_KEY))}")
        lines.append(f"round {i + 1}: " + "; ".join(parts))
    if "target" in report:
        t = report["target"]
        for name, f in t["floors"].items():
            verdict = "met" if f["met"] else "NOT met"
            lines.append(
                f"floor {name} >= {f['floor']}: {verdict} (median {_x(f['median'])}, "
                f"{f['rounds_met']}/{len(f['rounds'])} rounds)"
            )
        lines.append(f"natkit ChannelData loss: {t['channel_data_loss']:.3%}")
    if "workers" in report:
        lines += _format_workers(report["workers"])
    if "coturn" in report["engines"]:
        lines.append(f"coturn: {report['engines']['coturn'].get('version', 'unknown')}")
    return "\n".join(lines)


def _format_workers(w: dict[str, Any]) -> list[str]:
    n = str(w["workers"])
    one, many = w["median"]["1"], w["median"][n]
    lines = [f"natkit --workers {n} on CPU(s) {w['cpus']}, ChannelData (median):"]
    for label, fig in (("1 worker", one), (f"{n} workers", many)):
        lines.append(
            f"  {label:<10} {fig['relayed_per_s'] or 0:>10,.0f} relayed/s, "
            f"{fig['per_cpu_second'] or 0:>10,.0f} per busy server core "
            f"(server processes {fig['server_cpu'] or 0:.0%} of a core)"
        )
    rounds = ", ".join(_x(e) for e in w["efficiency_per_round"])
    lines.append(f"  per-worker efficiency {_x(w['efficiency'])} (rounds {rounds}): relayed "
                 "per server CPU-second with N workers over 1; with every worker on one core "
                 "this is the cost of N processes, not a scaling figure")
    return lines


def format_stream_report(report: dict[str, Any]) -> str:
    """The TCP/TLS report: ChannelData per engine, the ratio per round and the floor."""
    s = report["settings"]
    lines = [f"ChannelData over TURN-over-{s['transport'].upper()}:"]
    for engine, figures in report["engines"].items():
        f = figures["channel_data"]
        lines.append(
            f"  {engine:<7} {f['relayed_per_s']:>10,} relayed/s, loss {f['loss']:.3%}, "
            f"{f['per_cpu_second'] or 0:>10,} per server CPU-second (server "
            f"{f['server_cpu']:.0%} / driver {f['driver_cpu']:.0%} of a core)"
        )
    for i, r in enumerate(report.get("ratios_per_round", []), 1):
        lines.append(
            f"round {i}: natkit/coturn {_x(r['channel_data.relayed_per_s'])} "
            f"({_x(r['channel_data.per_cpu_second'])} per CPU-second)"
        )
    for name, f in report.get("target", {}).get("floors", {}).items():
        verdict = "met" if f["met"] else "NOT met"
        lines.append(f"floor {name} >= {f['floor']}: {verdict} (median {_x(f['median'])})")
    lines.append("limited by: " + ", ".join(f"{k} {v}" for k, v in report["limits"].items()))
    lines.append(f"load average (1 min) before/after: {s['load_average'][0]} / {s['load_average'][1]}")
    return "\n".join(lines)
