"""`natkit serve turn`: run the TURN relay (natkit.TurnServer, or coturn) until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from natkit.cli._common import (
    SERVE_SCHEMA_VERSION,
    not_a_file,
    parse_hostport,
    print_json,
    verb_parser,
)
from natkit.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from natkit.server.service import TurnOptions, TurnService

HELP = "run the TURN relay (RFC 8656), safe by default"



def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = verb_parser(
        sub, "turn", HELP,
        HELP + ": peers in special-purpose ranges (loopback, private, link-local, "
        "cloud metadata, CGNAT, ULA, multicast, documentation...) are refused unless "
        "--allow-peer opens them. Default: UDP and TCP on 0.0.0.0:3478. Without --user, "
        "--users-file or --auth-secret a random user is generated and printed.",
        [
            "natkit serve turn --listen 127.0.0.1:3478 --user alice:s3cret",
            "natkit serve turn --auth-secret S --external-ip 203.0.113.5 --min-port 49152 --max-port 65535",
            "natkit serve turn --user alice:s3cret --tls-cert cert.pem --tls-key key.pem --engine coturn",
        ],
    )
    add = parser.add_argument
    add(
        "--listen",
        action="append",
        metavar="ADDR:PORT",
        help="client address served over UDP and TCP (repeatable; [v6]:PORT; port 0 picks one)",
    )
    add("--realm", default="natkit", metavar="R", help="authentication realm (natkit)")
    add(
        "--user",
        dest="users",
        action="append",
        default=[],
        metavar="NAME:PASS",
        help="a long-term credential (repeatable)",
    )
    add("--users-file", metavar="F", help="file of NAME:PASSWORD lines")
    add(
        "--auth-secret",
        dest="auth_secrets",
        action="append",
        default=[],
        metavar="S",
        help="TURN REST API shared secret (repeatable: several are accepted, for rotation)",
    )
    add(
        "--relay-ip",
        action="append",
        default=[],
        metavar="IP",
        help="address relay sockets bind to (default: the listen address); repeatable, also "
        "within a family: allocations are spread over them, each IP holding one per relay "
        "port (beyond ~64,000 allocations a family needs several)",
    )
    add(
        "--external-ip",
        action="append",
        default=[],
        metavar="IP",
        help="address advertised in XOR-RELAYED-ADDRESS when behind a 1:1 NAT",
    )
    add("--min-port", type=int, default=0, metavar="N", help="lowest relay port")
    add("--max-port", type=int, default=0, metavar="N", help="highest relay port")
    add(
        "--allow-peer",
        dest="allow_peers",
        action="append",
        default=[],
        metavar="CIDR",
        help="open a peer range the default policy refuses (repeatable), e.g. 10.0.0.0/8",
    )
    add(
        "--deny-peer",
        dest="deny_peers",
        action="append",
        default=[],
        metavar="CIDR",
        help="refuse one more peer range (repeatable; wins over --allow-peer)",
    )
    add(
        "--no-auth",
        action="store_true",
        help="no authentication: an OPEN RELAY, for closed labs only",
    )
    add("--tls-cert", metavar="F", help="PEM certificate: serve TLS (turns:) too")
    add("--tls-key", metavar="F", help="PEM private key for --tls-cert")
    add("--tls-port", type=int, default=5349, metavar="PORT", help="TLS port (5349)")
    add("--no-tcp", action="store_true", help="serve UDP (and TLS) only")
    add(
        "--no-gro",
        dest="udp_gro",
        action="store_false",
        help="the C data path reads one datagram at a time instead of asking the kernel for "
        "UDP GRO (datagrams of one client that arrive together read as one)",
    )
    add(
        "--no-c-allocate",
        dest="c_allocate",
        action="store_false",
        help="every authenticated Allocate goes to the engine (by default the C data path's "
        "thread answers a static user's plain UDP Allocate itself)",
    )
    add(
        "--no-relay-to-relay",
        dest="relay_to_relay",
        action="store_false",
        help="refuse this relay's own relayed addresses as peers too (by default two clients "
        "it relays may reach each other, as WebRTC needs when both sides are relay-only)",
    )
    add(
        "--user-quota",
        type=int,
        metavar="N",
        help="allocations per user at once, 486 beyond (default: half the relay ports once "
        "there are several users; 0: no limit)",
    )
    add("--max-allocations", type=int, metavar="N", help="allocations in total (486 beyond)")
    add(
        "--max-permissions",
        type=int,
        metavar="N",
        help="permissions per allocation (1000; 508 beyond)",
    )
    add(
        "--max-channels",
        type=int,
        metavar="N",
        help="channel bindings per allocation (500; 508 beyond)",
    )
    add("--bandwidth", type=int, metavar="BYTES_PER_S", help="cap per allocation, both ways")
    add(
        "--rest-max-ttl",
        type=int,
        metavar="S",
        help="refuse REST credentials expiring more than S seconds ahead (86400; 0: no limit)",
    )
    add(
        "--error-rate",
        type=float,
        metavar="N",
        help="error responses per second to one unauthenticated UDP source (50; 0: no limit)",
    )
    add("--error-burst", type=int, metavar="N", help="burst of --error-rate (100)")
    add("--max-connections", type=int, metavar="N", help="TCP/TLS connections in all (10000)")
    add(
        "--max-connections-per-source",
        type=int,
        metavar="N",
        help="TCP/TLS connections per source IP (256)",
    )
    add(
        "--first-message-timeout",
        type=float,
        metavar="S",
        help="close a TCP/TLS connection without a complete message after S seconds (10)",
    )
    add(
        "--allocate-timeout",
        type=float,
        metavar="S",
        help="close a TCP/TLS connection without an allocation after S seconds (30)",
    )
    add(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="close a TCP/TLS connection without an allocation after S seconds without a "
        "complete message (60)",
    )
    add("--max-lifetime", type=int, default=3600, metavar="S", help="longest allocation (3600)")
    add("--software", metavar="TEXT", help="send a SOFTWARE attribute (off by default)")
    add(
        "--strict-channels",
        action="store_true",
        help="accept only RFC 8656 channel numbers 0x4000-0x4FFF (default: up to 0x7FFE as "
        "RFC 5766 clients such as turnutils_uclient use)",
    )
    add(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/ (with --workers, the first "
        "process's counters)",
    )
    add(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes on the same listeners (SO_REUSEPORT), each with its own share of "
        "the relay ports (--min-port/--max-port, default 49152-65535 split N ways); natkit's "
        "engine only",
    )
    add(
        "--engine",
        choices=("natkit", "coturn"),
        default="natkit",
        help="natkit's relay (default) or coturn started with the same options",
    )
    add(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level on stderr (info: a summary line every 10 s; debug: each allocation's events)",
    )
    add("--json", action="store_true", help="print addresses, URLs and final counters as JSON")
    parser.set_defaults(func=run)


def _users(args: argparse.Namespace) -> dict[str, str]:
    users: dict[str, str] = {}
    for text in args.users:
        name, sep, password = text.partition(":")
        if not sep or not name or not password:
            raise ConfigError(f"bad value '{text}': expected NAME:PASSWORD", param="users")
        users[name] = password
    return users


def options_from_args(args: argparse.Namespace) -> TurnOptions:
    """The TurnOptions (for either engine) of the parsed command line."""
    from natkit.server.service import TurnOptions

    for param, path in (
        ("tls_cert", args.tls_cert),
        ("tls_key", args.tls_key),
        ("users_file", args.users_file),
    ):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{path}: {not_a_file(path)}", param=param)
    if not 600 <= args.max_lifetime <= 86400:
        raise ConfigError(f"give 600-86400 seconds, not {args.max_lifetime}", param="max_lifetime")
    changes: dict[str, Any] = {
        "listen": [parse_hostport(t) for t in args.listen] if args.listen else None,
        "realm": args.realm,
        "users": _users(args),
        "users_file": args.users_file,
        "auth_secrets": tuple(args.auth_secrets),
        "relay_ip": args.relay_ip or None,
        "external_ip": args.external_ip or None,
        "min_port": args.min_port,
        "max_port": args.max_port,
        "allow_peers": tuple(args.allow_peers),
        "deny_peers": tuple(args.deny_peers),
        "no_auth": args.no_auth,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_port": args.tls_port,
        "tcp": not args.no_tcp,
        "user_quota": "auto" if args.user_quota is None else (args.user_quota or None),
        "relay_to_relay": args.relay_to_relay,
        "udp_gro": args.udp_gro,
        "c_allocate": args.c_allocate,
        "max_allocations": args.max_allocations,
        "bandwidth": args.bandwidth,
        "max_lifetime": args.max_lifetime,
        "software": args.software,
        "strict_channels": args.strict_channels,
        "metrics": parse_hostport(args.metrics) if args.metrics is not None else None,
    }
    if args.max_permissions is not None:
        changes["max_permissions"] = args.max_permissions
    for name in ("rest_max_ttl", "error_rate"):  # 0: no limit
        value = getattr(args, name)
        if value is not None:
            changes[name] = value or None
    for name in (
        "max_channels",
        "error_burst",
        "max_connections",
        "max_connections_per_source",
        "first_message_timeout",
        "allocate_timeout",
        "idle_timeout",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    options = TurnOptions().replace(**changes)
    options.check()
    return options


def _announce(server: TurnService, args: argparse.Namespace) -> None:
    engine = server.engine_name
    # natkit's engine says which UDP data path it runs (C extension or pure Python) and why
    data_path: str | None = getattr(server, "fast_path_line", None)
    username, credential = ("", "") if args.no_auth else server.credentials()
    generated = server.generated_user
    if args.json:
        print_json(
            {
                "schema_version": SERVE_SCHEMA_VERSION,
                "kind": "serve-turn",
                "event": "ready",
                "engine": engine,
                "addresses": [
                    {"transport": t, "ip": ip, "port": port} for t, (ip, port) in server.addresses
                ],
                "urls": server.urls,
                "username": username,
                "credential": credential if generated else None,
                "auth": not args.no_auth,
                "data_path": data_path,
                "workers": args.workers,
            }
        )
    else:
        workers = f", {args.workers} workers" if args.workers > 1 else ""
        print(f"natkit TURN relay (engine: {engine}{workers}) on:")
        if data_path is not None:
            print(f"  data path: {data_path}")
        for url in server.urls:
            print(f"  {url}")
        if args.no_auth:
            print("WARNING: --no-auth: this is an OPEN RELAY; anyone who reaches it can use it.")
        elif generated:
            print(f"generated credentials: username {username}  password {credential}")
        print("Ctrl-C or SIGTERM stops it.")
    sys.stdout.flush()


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve(options: TurnOptions, args: argparse.Namespace) -> dict[str, Any]:
    server: TurnService
    if args.engine == "coturn":
        from natkit.server.coturn import CoturnServer

        server = CoturnServer(options=options)
    else:
        from natkit.server.turn import TurnServer

        server = TurnServer(options=options)
    async with server:
        _announce(server, args)
        await _wait_for_signal()
    return server.stats()


def _serve_workers(options: TurnOptions, args: argparse.Namespace) -> dict[str, Any]:
    """natkit's engine as ``args.workers`` processes (natkit/server/_workers.py): the stats
    returned are the first process's."""
    from natkit.server._workers import serve
    from natkit.server.turn import TurnServer

    server = TurnServer(options=options, workers=args.workers)
    stats: dict[str, Any] = {}

    def done(srv: TurnServer) -> None:
        stats.update(srv.stats())

    serve(
        server,
        workers=args.workers,
        name="natkit-turn-worker",
        ready=lambda srv: _announce(srv, args),
        done=done,
    )
    return stats


def run(args: argparse.Namespace) -> int:
    from natkit.server._workers import raise_fd_limit

    raise_fd_limit()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not 1 <= args.workers <= 256:
        raise UsageError(f"bad --workers {args.workers}: give 1-256 processes")
    if args.workers > 1 and args.engine == "coturn":
        raise UsageError(
            "--workers is natkit's engine only (coturn runs its own relay threads): "
            "drop --workers or --engine coturn"
        )
    options = options_from_args(args)
    if args.workers > 1:
        stats = _serve_workers(options, args)
    else:
        try:
            import uvloop

            stats = uvloop.run(_serve(options, args))
        except ImportError:
            stats = asyncio.run(_serve(options, args))
    if args.json:
        print_json(
            {
                "schema_version": SERVE_SCHEMA_VERSION,
                "kind": "serve-turn",
                "event": "stopped",
                "stopped": True,
                "stats": stats,
            }
        )
    else:
        if "allocations_created" in stats:
            print(
                f"stopped ({stats['allocations_created']} allocations served, "
                f"{stats['to_peer_packets']} packets to peers, "
                f"{stats['to_client_packets']} to clients)"
            )
        else:
            print("stopped")
    return 0
