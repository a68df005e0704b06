"""`natkit serve turn`: run the TURN relay (natkit.TurnServer, or coturn) until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import signal
import sys
from typing import Any

from natkit.cli._common import parse_hostport, print_json
from natkit.errors import UsageError

HELP = "run the TURN relay (RFC 8656), safe by default"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "turn",
        help=HELP,
        description=HELP + ": peers in special-purpose ranges (loopback, private, link-local, "
        "cloud metadata, CGNAT, ULA, multicast, documentation...) are refused unless "
        "--allow-peer opens them. Default: UDP and TCP on 0.0.0.0:3478. Without --user, "
        "--users-file or --auth-secret a random user is generated and printed.",
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
        action="append",
        default=[],
        metavar="NAME:PASS",
        help="a long-term credential (repeatable)",
    )
    add("--users-file", metavar="F", help="file of NAME:PASSWORD lines")
    add(
        "--auth-secret",
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
        help="address relay sockets bind to (one per family; default: the listen address)",
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
        action="append",
        default=[],
        metavar="CIDR",
        help="open a peer range the default policy refuses (repeatable), e.g. 10.0.0.0/8",
    )
    add(
        "--deny-peer",
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
    add("--user-quota", type=int, metavar="N", help="allocations per user at once (486 beyond)")
    add("--max-allocations", type=int, metavar="N", help="allocations in total (486 beyond)")
    add(
        "--max-permissions",
        type=int,
        metavar="N",
        help="permissions per allocation (1000; 508 beyond)",
    )
    add("--bandwidth", type=int, metavar="BYTES_PER_S", help="cap per allocation, both ways")
    add("--max-lifetime", type=int, default=3600, metavar="S", help="longest allocation (3600)")
    add("--software", metavar="TEXT", help="send a SOFTWARE attribute (off by default)")
    add(
        "--strict-channels",
        action="store_true",
        help="accept only RFC 8656 channel numbers 0x4000-0x4FFF (default: up to 0x7FFE as "
        "RFC 5766 clients such as turnutils_uclient use)",
    )
    add("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/")
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
    for text in args.user:
        name, sep, password = text.partition(":")
        if not sep or not name or not password:
            raise UsageError(f"bad --user '{text}': expected NAME:PASSWORD")
        users[name] = password
    return users


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """TurnServer/CoturnServer keyword arguments for the parsed command line."""
    for flag, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--users-file", args.users_file),
    ):
        if path and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    if (args.min_port or args.max_port) and not 1 <= args.min_port <= args.max_port <= 65535:
        raise UsageError(
            f"bad relay port range --min-port {args.min_port} --max-port "
            f"{args.max_port}: need 1 <= min <= max <= 65535"
        )
    for flag in ("user_quota", "max_allocations", "max_permissions", "bandwidth"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"bad --{flag.replace('_', '-')} {value}: must be at least 1")
    if not 600 <= args.max_lifetime <= 86400:
        raise UsageError(f"bad --max-lifetime {args.max_lifetime}: give 600-86400 seconds")
    options: dict[str, Any] = {
        "listen": [parse_hostport(t) for t in args.listen] if args.listen else None,
        "realm": args.realm,
        "users": _users(args),
        "users_file": args.users_file,
        "auth_secrets": args.auth_secret,
        "relay_ip": args.relay_ip or None,
        "external_ip": args.external_ip or None,
        "min_port": args.min_port,
        "max_port": args.max_port,
        "allow_peers": args.allow_peer,
        "deny_peers": args.deny_peer,
        "no_auth": args.no_auth,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_port": args.tls_port,
        "tcp": not args.no_tcp,
        "user_quota": args.user_quota,
        "max_allocations": args.max_allocations,
        "bandwidth": args.bandwidth,
        "max_lifetime": args.max_lifetime,
    }
    if args.max_permissions is not None:
        options["max_permissions"] = args.max_permissions
    if args.software is not None:
        options["software"] = args.software
    if args.strict_channels:
        options["strict_channels"] = True
    if args.metrics is not None:
        options["metrics"] = parse_hostport(args.metrics)
    return options


def _coturn_class() -> Any:
    try:
        from natkit.server.coturn import CoturnServer
    except ImportError as exc:  # pragma: no cover - depends on the installed tree
        raise UsageError(f"--engine coturn is not available in this natkit: {exc}") from None
    return CoturnServer


def _for_coturn(options: dict[str, Any]) -> dict[str, Any]:
    cls = _coturn_class()
    accepted = set(inspect.signature(cls).parameters)
    unsupported = [k for k, v in options.items() if k not in accepted and v is not None]
    if unsupported:
        flags = ", ".join("--" + k.replace("_", "-") for k in unsupported)
        raise UsageError(f"--engine coturn does not take {flags}: drop it or use --engine natkit")
    return {k: v for k, v in options.items() if k in accepted}


def _announce(server: Any, args: argparse.Namespace, engine: str) -> None:
    username, credential = ("", "") if args.no_auth else server.credentials()
    generated = getattr(server, "generated_user", False) or (
        engine == "coturn"
        and not (args.user or args.users_file or args.auth_secret or args.no_auth)
    )
    if args.json:
        print_json(
            {
                "engine": engine,
                "addresses": [
                    {"transport": t, "ip": ip, "port": port} for t, (ip, port) in server.addresses
                ],
                "urls": server.urls,
                "username": username,
                "credential": credential if generated else None,
                "auth": not args.no_auth,
                "data_path": server.fast_path_line if engine == "natkit" else None,
            }
        )
    else:
        print(f"natkit TURN relay (engine: {engine}) on:")
        if engine == "natkit":
            print(f"  data path: {server.fast_path_line}")
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


async def _serve_natkit(options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from natkit.server.turn import TurnServer

    async with TurnServer(**options) as server:
        _announce(server, args, "natkit")
        await _wait_for_signal()
    return server.stats()


async def _serve_coturn(options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    server = _coturn_class()(**_for_coturn(options))
    server.start()
    try:
        _announce(server, args, "coturn")
        await _wait_for_signal()
    finally:
        server.stop()
    return {}


def _raise_fd_limit() -> None:
    """Each allocation holds a relay socket: let the process open as many as it may."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(hard, 1 << 16), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
            return
        except (ValueError, OSError):
            continue


def run(args: argparse.Namespace) -> int:
    _raise_fd_limit()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    options = options_from_args(args)
    serve = _serve_coturn if args.engine == "coturn" else _serve_natkit
    try:
        import uvloop

        stats = uvloop.run(serve(options, args))
    except ImportError:
        stats = asyncio.run(serve(options, args))
    if args.json:
        print_json({"stopped": True, "stats": stats})
    else:
        if stats:
            print(
                f"stopped ({stats['allocations_created']} allocations served, "
                f"{stats['to_peer_packets']} packets to peers, "
                f"{stats['to_client_packets']} to clients)"
            )
        else:
            print("stopped")
    return 0
