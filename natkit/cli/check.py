"""`natkit check FILE`: validate an iceServers configuration, statically and live.

Exit 0 when nothing failed (untestable addresses included), 1 when a live check failed, 2 for
an invalid configuration or usage. The JSON shape is in docs/json.md ("check").
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
    parse_hostport,
    verb_parser,
    write_output,
)
from natkit.errors import UsageError

EXAMPLES = (
    "natkit check iceServers.json",
    "natkit check iceServers.json --json report.json --timeout 3",
    "natkit check iceServers.json --browser            # and what headless Chromium gathers",
    "natkit check ice.json --auth-secret \"$TURN_SECRET\" --user ci   # mint REST credentials",
    "natkit check ice.json --prometheus /var/lib/node_exporter/textfile/turn.prom",
    "natkit check ice.json --serve 127.0.0.1:9470      # probe on every scrape of /metrics",
    "curl -s https://api.example.com/ice | natkit check -",
)


def register(sub: Any, verb: str, help_text: str) -> None:
    parser = verb_parser(
        sub, verb, help_text,
        help_text + ". Every URL is checked at every address its name resolves to (A and "
        "AAAA), each step within its share of --timeout. Exit status: 0 nothing failed, 1 a "
        "live check failed, 2 invalid configuration or usage.", EXAMPLES)
    parser.add_argument("file", metavar="FILE",
                        help="RTCConfiguration JSON ({\"iceServers\": [...]}), a list of "
                        "RTCIceServer, or a provider's envelope ({\"v\": {\"iceServers\": ...}}); "
                        "'-' reads stdin")
    add_json_option(parser)
    add_timeout_option(parser, 5.0, "seconds allowed per URL, all URLs in parallel")
    add_tls_options(parser)
    parser.add_argument("--static-only", action="store_true",
                        help="only validate the configuration as a browser would; no traffic")
    add_family_options(parser, "check")
    parser.add_argument("--browser", dest="browsers", action="append", nargs="?",
                        const="chromium", metavar="NAME",
                        help="also gather from every URL in that headless browser: chromium "
                        "(the default) or firefox (Firefox ESR); repeat for both. Shows what it "
                        "produced beside natkit's verdict")
    rest = parser.add_argument_group("TURN REST credentials (minted as a backend would)")
    rest.add_argument("--auth-secret", dest="rest_secret", metavar="SECRET",
                      help="the TURN server's shared REST secret (coturn static-auth-secret): "
                      "every TURN server in FILE gets username EXPIRY:USER and its HMAC")
    rest.add_argument("--user", dest="rest_user", default="natkit-check", metavar="NAME",
                      help="the user part of the minted username (default natkit-check)")
    rest.add_argument("--ttl", dest="rest_ttl", type=float, default=3600.0, metavar="S",
                      help="lifetime of the minted credentials (default 3600)")
    monitor = parser.add_argument_group("monitoring")
    monitor.add_argument("--prometheus", metavar="FILE",
                         help="also write the result as Prometheus gauges (node-exporter "
                         "textfile format, written atomically); '-': to stdout instead of "
                         "the text")
    monitor.add_argument("--serve", metavar="HOST:PORT",
                         help="serve /metrics and run the check on every scrape "
                         "(blackbox_exporter style) until interrupted")
    monitor.add_argument("--concurrency", type=int, default=8, metavar="N",
                         help="with --serve: URLs checked at once (default 8)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.ice.config import IceConfigError, config_from_data, load_json

    check_timeout(args.timeout)
    if args.rest_secret is None and args.rest_user != "natkit-check":
        raise UsageError("--user names the user of minted credentials: give --auth-secret too")
    if args.serve and (args.json or args.prometheus or args.static_only or args.browsers):
        raise UsageError("--serve runs until interrupted: it takes no --json, --prometheus, "
                         "--static-only or --browser")
    if args.prometheus == "-" and args.json == "-":
        raise UsageError("--json - and --prometheus - both want stdout: give one of them a file")
    if args.prometheus and args.static_only:
        raise UsageError("--prometheus reports the live checks: drop --static-only")
    if not 1 <= args.concurrency <= 256:
        raise UsageError(f"--concurrency {args.concurrency}: expected 1-256")
    inputs = [args.file if args.file != "-" else None]
    check_output("--json", args.json, inputs)
    prom_path = check_output("--prometheus", args.prometheus, inputs, kind="prom")
    rest = {"rest_secret": args.rest_secret, "rest_user": args.rest_user,
            "rest_ttl": args.rest_ttl}

    def load() -> Any:
        data, source = load_json(args.file)
        return config_from_data(data, source, **rest)

    try:
        config = load()
    except IceConfigError as exc:
        if args.json:
            emit_json(args.json, {"schema_version": _schema(), "kind": "check", "pass": False,
                                  "source": exc.source,
                                  "errors": [p.as_dict() for p in exc.problems]}, inputs)
        for problem in exc.problems:
            print(f"natkit check: error: {exc.source}: {problem}", file=sys.stderr)
        return 2
    except UsageError as exc:  # unreadable file, invalid JSON: one line, and JSON if asked
        if args.json:
            emit_json(args.json, {"schema_version": _schema(), "kind": "check", "pass": False,
                                  "source": args.file,
                                  "errors": [{"path": None, "error": "UsageError",
                                              "message": str(exc)}]}, inputs)
        raise
    if args.serve:
        if args.file == "-":
            raise UsageError("--serve re-reads FILE on every scrape: give a file, not stdin")
        return _serve(args, load)
    if args.static_only:
        return _static(args, config, inputs)
    from natkit.ice.check import check

    report = asyncio.run(check(config, timeout=args.timeout, insecure=args.insecure,
                               ca_file=args.ca_file, families=args.families,
                               browsers=args.browsers or ()))
    if args.json:
        emit_json(args.json, report.as_dict(), inputs)
    if "-" not in (args.json, args.prometheus):  # a FILE keeps the text on stdout
        print(format_report(report))
    if args.prometheus:
        from natkit.ice.monitor import prometheus_text

        if prom_path is None:  # '-'
            sys.stdout.write(prometheus_text(report))
        else:
            write_output(prom_path, prometheus_text(report))
    return report.exit_code


def _schema() -> int:
    from natkit.ice.check import SCHEMA_VERSION

    return SCHEMA_VERSION


def _static(args: argparse.Namespace, config: Any, inputs: list[str | None]) -> int:
    from natkit.ice.browsers.knowledge import browser_notes

    notes = browser_notes(config)
    if args.json:
        emit_json(args.json, {
            "schema_version": _schema(), "kind": "check", "static_only": True, "pass": True,
            "source": config.source, "warnings": config.warnings,
            "browser_notes": [n.as_dict() for n in notes],
            "urls": [{"url": u.url, "path": u.path} for _, u in config.urls()]}, inputs)
        if args.json == "-":
            return 0
    for warning in config.warnings:
        print(f"warning: {warning}")
    for note in notes:
        print(f"{'warning' if note.severity != 'info' else 'note'}: {note}")
    print(f"{config.source}: {len(config.urls())} URL(s), valid for a browser")
    return 0


def _serve(args: argparse.Namespace, load: Any) -> int:
    import math

    from natkit.ice.check import check
    from natkit.ice.monitor import serve_metrics

    host, port = parse_hostport(args.serve)

    async def one_scrape(budget: float) -> Any:
        config = load()
        waves = max(1, math.ceil(len(config.urls()) / args.concurrency))
        return await check(config, timeout=max(0.2, budget / waves), insecure=args.insecure,
                           ca_file=args.ca_file, families=args.families,
                           concurrency=args.concurrency)

    def started(addr: tuple[str, int]) -> None:
        where = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        print(f"natkit check: serving http://{where}/metrics (a check of {args.file} on "
              "every scrape); Ctrl-C stops", flush=True)

    try:
        asyncio.run(serve_metrics(host, port, one_scrape, timeout=args.timeout,
                                  started=started))
    except OSError as exc:
        raise UsageError(f"--serve {args.serve}: cannot listen: {exc.strerror or exc}") from None
    return 0


_MARK = {"pass": "PASS", "fail": "FAIL", "untestable": "SKIP"}
_STEP_MARK = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}


def format_report(report: Any) -> str:
    lines: list[str] = []
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    for note in report.browser_notes:
        lines.append(f"{'warning' if note.severity != 'info' else 'note'}: {note}")
    if lines:
        lines.append("")
    for server in report.servers:
        verdict = _MARK[server.status]
        if server.address:
            addr = f"[{server.address}]" if ":" in server.address else server.address
            where = f"{server.protocol} -> {addr}:{server.port}"
        else:
            where = server.protocol
        lines.append(f"{verdict}  {server.url}  ({where})  [{server.path}]")
        width = max((len(s.name) for s in server.checks), default=4)
        for step in server.checks:
            ms = "" if step.duration_s is None else f"{step.duration_s * 1000:7.1f} ms"
            lines.append(f"  {_STEP_MARK[step.status]} {step.name:<{width}} {ms:>10}  "
                         f"{step.detail}")
        if server.hint:
            lines.append(f"  hint: {server.hint}")
        lines.append("")
    for summary in report.urls:
        if len(summary.targets) > 1 and summary.failing_addresses:
            lines.append(f"{summary.host} ({summary.url}): {len(summary.failing_addresses)} of "
                         f"{len(summary.targets)} addresses fail: "
                         f"{', '.join(summary.failing_addresses)}")
    for gathering in report.browsers:
        lines += _browser_lines(report, gathering)
    urls = report.urls
    passed = sum(1 for u in urls if u.status == "pass")
    untestable = sum(1 for u in urls if u.status == "untestable")
    failed_targets = sum(1 for s in report.servers if s.status == "fail")
    tail = f"{passed} of {len(urls)} URL(s) pass"
    if untestable:
        tail += f", {untestable} not testable from here"
    if failed_targets:
        tail += f"; {failed_targets} of {len(report.servers)} address(es) fail"
    lines.append(f"{tail} ({report.duration_s:.2f} s)"
                 + (" -- TLS not verified (--insecure)" if report.insecure else ""))
    return "\n".join(lines)


def _browser_lines(report: Any, gathering: Any) -> list[str]:
    name = gathering.browser + (f" {gathering.version}" if gathering.version else "")
    lines = [f"{name} (beside natkit's verdict):"]
    if gathering.error:
        return [*lines, f"  not run: {gathering.error}", ""]
    if gathering.config_exception:
        lines.append(f"  the whole configuration throws: {gathering.config_exception}")
    verdicts = {u.path: u.status for u in report.urls}
    for url in gathering.urls:
        natkit = _MARK.get(verdicts.get(url.path, ""), "?")
        if url.verdict == "produced":
            got = ", ".join(url.produced)
        elif url.verdict == "rejected":
            got = f"rejected: {url.exception}"
        elif url.verdict == "error":
            got = "; ".join(f"icecandidateerror {e.get('errorCode')} {e.get('errorText')}".strip()
                            for e in url.errors[:3])
        else:
            got = f"no {url.expected} candidate and no icecandidateerror"
        lines.append(f"  natkit {natkit}  {gathering.browser}: {got:<40}  {url.url}  "
                     f"[{url.path}]")
    lines.append("")
    return lines
