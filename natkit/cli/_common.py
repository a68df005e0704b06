"""Small helpers shared by the CLI verb modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from natkit.errors import UsageError

# the JSON lines of `natkit serve stun|turn --json` (docs/json.md)
SERVE_SCHEMA_VERSION = 1


def not_built(verb: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise UsageError(f"'{verb}' is not built yet in this version of natkit")

    return run


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# -- output files: one rule for every verb ---------------------------------------------------
#
# ``--json`` alone means stdout; ``--json FILE`` (or ``--json=FILE``) writes FILE. An output
# option never writes over a file that is not natkit's own output of the same kind: so
# ``natkit lab run --json victim.toml`` (FILE swallowed the topology argument) stops with one
# line instead of replacing the topology, and no option can overwrite an input file.

HTML_MARKER = '<meta name="generator" content="natkit">'
PROM_MARKER = "# natkit check metrics"
# Other kinds of output file a verb writes: kind -> test of the file's first 64 KiB that says
# whether it is natkit's own output of that kind (so it may be replaced).
OUTPUT_KINDS: dict[str, Callable[[bytes], bool]] = {
    "html": lambda head: HTML_MARKER.encode() in head,
    "pcap": lambda head: head[:4] in (b"\x0a\x0d\x0d\x0a", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"),
    "prom": lambda head: head.startswith(PROM_MARKER.encode()),
}


def add_json_option(parser: argparse.ArgumentParser, what: str = "the report") -> None:
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help=f"write {what} as JSON to FILE; alone or with '-', to stdout instead of the text",
    )


def _is_natkit_output(path: Path, kind: str) -> bool:
    try:
        if path.stat().st_size > 512 * 1024 * 1024:
            return False
        with path.open("rb") as f:
            head = f.read(64 * 1024)
        if kind in OUTPUT_KINDS:
            return OUTPUT_KINDS[kind](head)
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and "schema_version" in doc


# Outputs that may go to stdout with '-': JSON, Prometheus text, the Compose YAML; an HTML
# page or a pcapng capture goes to a file only.
STDOUT_KINDS = frozenset({"json", "prom", "compose"})


def check_output(
    flag: str, target: str | None, inputs: Iterable[str | os.PathLike[str] | None] = (), kind: str = "json"
) -> Path | None:
    """Validate an output file of ``flag`` before any work starts; None for stdout/unset.

    Refuses (UsageError) a target that is one of ``inputs``, that exists and is not natkit's
    own output of ``kind`` ("json": an object with ``schema_version``; "html": natkit's
    marker), or that cannot be written; '-' (stdout) only for the kinds that can go there.
    """
    to_stdout = kind in STDOUT_KINDS
    if target == "-" and not to_stdout:
        raise UsageError(f"{flag} -: {flag} writes a file, not stdout; give a file name")
    if not target or target == "-":
        return None
    path = Path(target)
    for given in inputs:
        if given is None:
            continue
        try:
            if path.exists() and os.path.samefile(path, given):
                raise UsageError(f"{flag} {target}: that is an input of this command; give another file")
        except OSError:
            continue
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise UsageError(f"{flag} {target}: not a regular file; give a file to write")
        if not _is_natkit_output(path, kind):
            instead = f", or '{flag} -' for stdout" if to_stdout else ""
            raise UsageError(
                f"{flag} {target}: exists and is not a natkit {kind.upper()} report; refusing to "
                f"overwrite it (choose a new file{instead})"
            )
    parent = path.parent if str(path.parent) else Path(".")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {target}: cannot write in {parent}")
    return path


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a report)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def emit_json(target: str | None, doc: Any, inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """Print ``doc`` to stdout (target None or '-') or write it to the file ``target``."""
    text = json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n"
    path = check_output("--json", target, inputs)
    if path is None:
        sys.stdout.write(text)
    else:
        write_output(path, text)


def add_family_options(parser: argparse.ArgumentParser, what: str = "resolve and probe") -> None:
    """``-4/--ipv4`` and ``-6/--ipv6``: only that address family (``args.families``); neither:
    both. The same meaning on every verb."""
    fam = parser.add_mutually_exclusive_group()
    fam.add_argument("-4", "--ipv4", dest="families", action="store_const", const=(4,),
                     default=(4, 6), help=f"{what} IPv4 only")
    fam.add_argument("-6", "--ipv6", dest="families", action="store_const", const=(6,),
                     help=f"{what} IPv6 only (default: both families)")


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """``--insecure`` and ``--ca-file`` for every verb that speaks TLS (stuns:, turns:)."""
    parser.add_argument("--insecure", action="store_true",
                        help="accept TLS certificates that do not verify (self-signed, wrong "
                        "name); the report says so")
    parser.add_argument("--ca-file", metavar="PEM", help="trust these CA certificates for TLS")


def add_timeout_option(parser: argparse.ArgumentParser, default: float, what: str) -> None:
    parser.add_argument("--timeout", type=float, default=default, metavar="S",
                        help=f"{what} (default {default:g})")


def check_timeout(value: float, flag: str = "--timeout") -> float:
    if not 0 < value <= 600:
        raise UsageError(f"{flag} {value:g}: expected seconds between 0 and 600")
    return value


def not_a_file(path: str) -> str:
    """Why ``path``, which is no regular file, cannot be read: missing, or a device, FIFO or
    directory (``/dev/zero`` is there, but no certificate)."""
    return "not a regular file (a directory, device or FIFO)" if os.path.exists(path) else "no such file"


def examples(*lines: str) -> str:
    """An ``--help`` epilog of examples (use with RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def verb_parser(sub: Any, verb: str, help_text: str, description: str,
                example_lines: Iterable[str]) -> argparse.ArgumentParser:
    """A verb's sub-parser with a description and an epilog of examples."""
    import textwrap

    parser: argparse.ArgumentParser = sub.add_parser(
        verb, help=help_text, description=textwrap.fill(description, 79),
        epilog=examples(*example_lines), formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


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
