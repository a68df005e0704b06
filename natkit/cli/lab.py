"""`natkit lab`: run the NAT lab (run), keep it up to explore by hand (up / down / shell),
remove what a killed run left behind (clean)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from natkit.errors import UsageError


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(verb, help=help_text, description=help_text)
    cmds = parser.add_subparsers(dest="lab_cmd", metavar="COMMAND", parser_class=type(parser))
    cmds.required = True

    run = cmds.add_parser(
        "run",
        help="build the lab, probe every NAT, run every case, print the matrix (exit 0: all as expected)",
        description="Build the lab (network namespaces + nftables NATs), probe every NAT, connect "
        "aiortc peers for every pair of NATs over host, srflx and relay candidates, and compare "
        "with what the NAT behaviours predict. Exit 0 when everything matches, 1 when any case "
        "or probe differs, 2 for bad input or missing prerequisites. Needs root.",
    )
    run.add_argument("topology", nargs="?", help="topology file (default: configs/lab/default.toml)")
    run.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the results as JSON to FILE (no FILE or '-': to stdout, the grid then goes to stderr)",
    )
    run.add_argument("--turn-engine", choices=("natkit", "coturn"), help="TURN relay engine (default: the topology's)")
    run.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="FILTER",
        help="run a subset: comma-separated paths (host,srflx,relay), NAT names (cases among them) "
        "or pairs A:B; repeatable, e.g. --only srflx --only symmetric,port-restricted",
    )
    run.add_argument("--parallel", type=int, metavar="N", help="cases expected to connect at once (default: 4 x CPUs)")
    run.add_argument("--deadline", type=float, metavar="S", help="seconds before a case counts as failed (default: the topology's)")
    run.add_argument("--no-capture", action="store_true", help="skip the packet capture and its evidence")
    run.add_argument("--pcap", metavar="FILE", help="keep the internet segment's capture in FILE")
    run.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML file")
    run.add_argument(
        "--browser",
        action="store_true",
        help="add cases with headless Chromium (behind every NAT) calling an aiortc peer behind a "
        "full-cone NAT, over srflx and relay (needs chromium)",
    )
    run.set_defaults(func=_run)

    compose = cmds.add_parser(
        "compose",
        help="print (or write) the Docker Compose file of a topology",
        description="Generate the Compose file of a topology: routers apply the netns engine's "
        "nftables rules; peers, servers and a runner service run the same lab "
        "(docker compose up --build --exit-code-from runner).",
    )
    compose.add_argument("topology", nargs="?", help="topology file (default: configs/lab/default.toml)")
    compose.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    compose.add_argument("--turn-engine", choices=("natkit", "coturn"), help="TURN relay engine (default: the topology's)")
    compose.set_defaults(func=_compose)

    up = cmds.add_parser("up", help="build the lab with its servers and keep it up until Ctrl-C or 'natkit lab down'")
    up.add_argument("topology", nargs="?", help="topology file (default: configs/lab/default.toml)")
    up.add_argument("--turn-engine", choices=("natkit", "coturn"))
    up.set_defaults(func=_up)

    down = cmds.add_parser("down", help="stop the lab that 'natkit lab up' keeps")
    down.set_defaults(func=_down)

    shell = cmds.add_parser("shell", help="a shell (or COMMAND) inside a node of the lab that is up")
    shell.add_argument("node", help="node name as 'natkit lab up' lists it, e.g. symmetric-1-p1, full-cone-1, srv")
    shell.add_argument("command", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    shell.set_defaults(func=_shell)

    clean = cmds.add_parser("clean", help="remove namespaces, processes and state left by killed runs")
    clean.add_argument("--force", action="store_true", help="also remove labs whose owner is still running")
    clean.set_defaults(func=_clean)


def _load(path: str | None) -> Any:
    from natkit.lab.topology import load

    return load(path)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from natkit.lab import report, runner

    topo = _load(args.topology)
    if args.deadline is not None:
        if not 2 <= args.deadline <= 120:
            raise UsageError(f"--deadline {args.deadline:g}: give 2..120 seconds")
        topo = replace(topo, case_deadline_s=args.deadline)
    if args.parallel is not None and not 1 <= args.parallel <= 256:
        raise UsageError(f"--parallel {args.parallel}: give 1..256")
    cases = runner.select_cases(topo, args.only) if args.only else None
    for flag, path in (("--json", args.json), ("--html", args.html)):
        if path and path != "-":
            try:
                with open(path, "a"):
                    pass
            except OSError as exc:
                raise UsageError(f"{flag} {path}: cannot write: {exc.strerror}") from None
    progress = report.Progress(sys.stderr)
    result = runner.run(
        topo,
        cases=cases,
        turn_engine=args.turn_engine,
        parallel=args.parallel,
        capture=not args.no_capture,
        progress=progress,
        keep_capture=args.pcap,
        browser=args.browser,
    )
    progress.close()
    data = result.to_json()
    to_stdout = args.json == "-"
    report.render(data, sys.stderr if to_stdout else sys.stdout)
    if args.json:
        text = json.dumps(data, indent=2) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            with open(args.json, "w") as fh:
                fh.write(text)
    if args.html:
        from natkit.lab.html import write_html

        write_html(args.html, data, topo)
    return result.exit_code


def _compose(args: argparse.Namespace) -> int:
    from natkit.lab.compose import write_compose

    text = write_compose(_load(args.topology), args.output, turn_engine=args.turn_engine)
    if not args.output or args.output == "-":
        sys.stdout.write(text)
    return 0


def _up(args: argparse.Namespace) -> int:
    from natkit.lab import runner

    topo = _load(args.topology)
    with runner.up(topo, turn_engine=args.turn_engine) as lab:
        width = max(len(n) for n, _, _ in lab.describe())
        print(f"lab {lab.tag} is up ({topo.source}):")
        for node, ns, what in lab.describe():
            print(f"  {node.ljust(width)}  {ns:<16} {what}")
        print("explore with 'natkit lab shell NODE'; stop with Ctrl-C or 'natkit lab down'", flush=True)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            pass
    print("lab is down")
    return 0


def _down(args: argparse.Namespace) -> int:
    from natkit.lab.runner import read_up_state

    state = read_up_state()
    if state is None:
        raise UsageError("no lab is up (start one with 'natkit lab up')")
    os.kill(state["pid"], signal.SIGTERM)
    end = time.monotonic() + 15
    while time.monotonic() < end and read_up_state() is not None:
        time.sleep(0.1)
    if read_up_state() is not None:
        raise UsageError(f"the lab's process {state['pid']} did not stop; try 'natkit lab clean --force'")
    print(f"lab {state['tag']} is down")
    return 0


def _shell(args: argparse.Namespace) -> int:
    from natkit.lab.runner import read_up_state

    state = read_up_state()
    if state is None:
        raise UsageError("no lab is up (start one with 'natkit lab up')")
    nodes = state["nodes"]
    if args.node not in nodes:
        raise UsageError(f"no node {args.node!r} in the lab; nodes: {', '.join(nodes)}")
    command = args.command or [os.environ.get("SHELL", "/bin/sh")]
    if command and command[0] == "--":
        command = command[1:]
    os.execvp("ip", ["ip", "netns", "exec", nodes[args.node], *command])
    return 0  # not reached


def _clean(args: argparse.Namespace) -> int:
    from natkit.lab.netns import cleanup_leftovers

    removed = cleanup_leftovers(force=args.force)
    print(f"removed {len(removed)} namespace(s)" + (": " + ", ".join(removed) if removed else ""))
    return 0
