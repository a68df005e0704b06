"""`natkit serve stun`: run the STUN responder until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from natkit.cli._common import SERVE_SCHEMA_VERSION, not_a_file, parse_hostport, verb_parser
from natkit.errors import UsageError

HELP = "run the STUN responder (RFC 8489, RFC 5780 mode with --alternate-ip)"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = verb_parser(
        sub, "stun", HELP,
        HELP + ". Default: UDP and TCP on 0.0.0.0:3478 and [::]:3478, TLS on 5349 "
        "when a certificate is given. Stops cleanly on SIGTERM or Ctrl-C.",
        [
            "natkit serve stun --listen 127.0.0.1:3478",
            "natkit serve stun --listen 192.0.2.10:3478 --alternate-ip 192.0.2.11   # RFC 5780 mode",
            "natkit serve stun --tls-cert cert.pem --tls-key key.pem --metrics 127.0.0.1:9100",
        ],
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDR:PORT",
        help="address to serve UDP and TCP on (repeatable; [v6]:PORT for IPv6; port 0 picks one)",
    )
    parser.add_argument(
        "--alternate-ip",
        metavar="IP",
        help="RFC 5780 mode: second IP of the same family as a --listen address "
        "(OTHER-ADDRESS, CHANGE-REQUEST); needs specific --listen addresses",
    )
    parser.add_argument(
        "--alternate-port",
        type=int,
        metavar="PORT",
        help="RFC 5780 alternate port (default: port + 1)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve TLS too")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--tls-port", type=int, default=5349, metavar="PORT", help="TLS port (5349)"
    )
    parser.add_argument("--no-tcp", action="store_true", help="serve UDP (and TLS) only")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes sharing the ports (SO_REUSEPORT)",
    )
    parser.add_argument(
        "--software", metavar="TEXT", help="send a SOFTWARE attribute (off by default)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close a TCP/TLS connection after S seconds without a complete message (30)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="TCP/TLS connections in all (10000)",
    )
    parser.add_argument(
        "--max-connections-per-source",
        type=int,
        default=256,
        metavar="N",
        help="TCP/TLS connections per source IP (256)",
    )
    parser.add_argument(
        "--first-message-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a TCP/TLS connection without a complete message after S seconds (10)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/ (with --workers, the first "
        "process's counters)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the addresses and the final counters as JSON"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natkit.server._workers import serve
    from natkit.server.stun import StunServer

    listen = [parse_hostport(text) for text in args.listen] if args.listen else None
    if not 1 <= args.workers <= 256:
        raise UsageError(f"bad --workers {args.workers}: give 1-256 processes")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: {not_a_file(path)}")
    if args.idle_timeout <= 0:
        raise UsageError(f"bad --idle-timeout {args.idle_timeout}: must be > 0 seconds")
    options = {
        "listen": listen,
        "alternate_ip": args.alternate_ip,
        "alternate_port": args.alternate_port,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_port": args.tls_port,
        "tcp": not args.no_tcp,
        "software": args.software,
        "idle_timeout": args.idle_timeout,
        "max_connections": args.max_connections,
        "max_connections_per_source": args.max_connections_per_source,
        "first_message_timeout": args.first_message_timeout,
    }
    if args.metrics is not None:
        options["metrics"] = parse_hostport(args.metrics)

    def ready(server: Any) -> None:
        if args.json:
            _json_line(
                {
                    "schema_version": SERVE_SCHEMA_VERSION,
                    "kind": "serve-stun",
                    "event": "ready",
                    "addresses": [
                        {"transport": t, "ip": ip, "port": port}
                        for t, (ip, port) in server.addresses
                    ],
                    "rfc5780": server.rfc5780,
                    "fast_path": server.fast_path_kind,
                    "udp_path": server.fast_path_line,
                    "workers": args.workers,
                }
            )
        else:
            mode = "RFC 5780 mode" if server.rfc5780 else "plain mode"
            print(f"natkit STUN responder ({mode}, {args.workers} worker(s)) on:")
            print(f"  UDP path: {server.fast_path_line}", flush=True)
            for t, (ip, port) in server.addresses:
                host = f"[{ip}]" if ":" in ip else ip
                print(f"  {t:4} {host}:{port}")
            print("Ctrl-C or SIGTERM stops it.")
        sys.stdout.flush()

    def done(server: Any) -> None:
        stats = server.stats()
        if args.json:
            _json_line(
                {
                    "schema_version": SERVE_SCHEMA_VERSION,
                    "kind": "serve-stun",
                    "event": "stopped",
                    "stopped": True,
                    "stats": stats,
                }
            )
        else:
            udp, stream = stats["udp"], stats["stream"]
            print(
                f"stopped (this process: {udp['responses']} UDP responses, {udp['garbage']} garbage "
                f"datagrams dropped, {stream['responses']} TCP/TLS responses)",
                flush=True,
            )

    server = StunServer(reuse_port=args.workers > 1, **options)
    serve(server, workers=args.workers, name="natkit-stun-worker", ready=ready, done=done)
    return 0


def _json_line(data: dict[str, Any]) -> None:
    """One JSON document per line: a long-running command's output stays machine-readable."""
    print(json.dumps(data, separators=(",", ":")), flush=True)
