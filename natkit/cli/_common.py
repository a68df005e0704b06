"""Small helpers shared by the CLI verb modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from natkit.errors import UsageError


def not_built(verb: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise UsageError(f"'{verb}' is not built yet in this version of natkit")

    return run


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def progress_printer(json_output: bool) -> Callable[[str], None]:
    """Where long commands report progress: stdout, or stderr when stdout carries JSON."""

    def progress(line: str) -> None:
        print(line, file=sys.stderr if json_output else sys.stdout, flush=True)

    return progress


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``ADDR:PORT``, ``[v6]:PORT``, ``ADDR`` (with a default port). UsageError if bad."""
    import ipaddress

    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"bad address '{text}': missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"bad address '{text}': expected [IPv6]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if port_text is None:
        if default_port is None:
            raise UsageError(f"bad address '{text}': expected ADDR:PORT")
        port = default_port
    else:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise UsageError(f"bad port in '{text}': expected a number 0-65535")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"bad address '{text}': '{host}' is not an IP address") from None
    return host, port
