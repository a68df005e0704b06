"""`natkit candidates [FILE|-]`: parse, classify and validate ICE candidates.

Input: candidate lines (with or without ``a=``/``candidate:``), a whole SDP, or browser JSON
(RTCIceCandidateInit objects, a list of them, ``{"candidates": [...]}``, or ``{"sdp": ...}``).
Exit 0 when every candidate is valid, 1 when one breaks the grammar, 2 for unreadable input.
``--json`` keys: ok, format, candidates[] (foundation, component, transport, priority, address,
port, type, related_address, related_port, tcptype, scope, ip_version, priority_parts,
relay_protocol, extensions, mid, mline_index, ufrag, url, line, valid, errors, warnings),
malformed[] (line, error, source_line, mid), sections[], end_of_candidates, diagnosis[] (code,
severity, message).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from natkit.cli._common import print_json
from natkit.errors import UsageError


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(verb, help=help_text, description=help_text)
    parser.add_argument("file", nargs="?", default="-", metavar="FILE",
                        help="candidate lines, an SDP or browser JSON; '-' or nothing: stdin")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def read_input(name: str) -> str:
    if name == "-":
        if sys.stdin.isatty():
            raise UsageError("no input: give a FILE or pipe candidates/SDP/JSON into stdin")
        return sys.stdin.read()
    from natkit.ice.config import read_text_file

    return read_text_file(name)


def run(args: argparse.Namespace) -> int:
    from natkit.ice.candidates import parse_candidates
    from natkit.ice.diagnose import diagnose

    text = read_input(args.file)
    try:
        parsed = parse_candidates(text)
    except UsageError as exc:
        source = "<stdin>" if args.file == "-" else args.file
        raise UsageError(f"{source}: {exc}") from None
    if not parsed.candidates and not parsed.malformed:
        raise UsageError(
            f"{'stdin' if args.file == '-' else args.file}: no candidates found "
            "(expected candidate lines, an SDP with a=candidate lines, or RTCIceCandidateInit JSON)"
        )
    findings = diagnose(parsed.candidates, parsed=parsed)
    items = [c.as_dict() for c in parsed.candidates]
    ok = not parsed.malformed and all(item["valid"] for item in items)
    if args.json:
        print_json({
            "ok": ok,
            "format": parsed.format,
            "candidates": items,
            "malformed": [m.as_dict() for m in parsed.malformed],
            "sections": [s.as_dict() for s in parsed.sections],
            "end_of_candidates": parsed.end_of_candidates,
            "diagnosis": [f.as_dict() for f in findings],
        })
    else:
        print(format_table(items, parsed, findings))
    return 0 if ok else 1


def format_table(items: list[dict[str, Any]], parsed: Any, findings: list[Any]) -> str:
    rows = [("TYPE", "PROTO", "ADDRESS", "PORT", "SCOPE", "PRIORITY (type/local/comp)",
             "RELATED", "MID", "EXTENSIONS")]
    for c in items:
        parts = c["priority_parts"]
        proto = c["transport"] + (f"/{c['tcptype']}" if c["tcptype"] else "")
        related = (f"{c['related_address']}:{c['related_port']}"
                   if c["related_address"] is not None else "")
        ext = " ".join(f"{k}={v}" for k, v in c["extensions"].items())
        rows.append((
            c["type"], proto, c["address"], str(c["port"]),
            c["scope"] + (f"/v{c['ip_version']}" if c["ip_version"] else ""),
            f"{c['priority']} ({parts['type_preference']}/{parts['local_preference']}/"
            f"{parts['component']})",
            related, "" if c["mid"] is None else str(c["mid"]), ext,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1]
             for r in rows]
    for c in items:
        for err in c["errors"]:
            lines.append(f"invalid: {c['line']}: {err}")
        for warn in c["warnings"]:
            lines.append(f"warning: {c['line']}: {warn}")
    for bad in parsed.malformed:
        where = f"line {bad.source_line}: " if bad.source_line is not None else ""
        lines.append(f"malformed: {where}{bad.text}: {bad.error}")
    if findings:
        lines.append("")
        for f in findings:
            lines.append(f"{f.severity}: {f.message}")
    return "\n".join(lines)
