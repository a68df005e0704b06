"""`natkit candidates [FILE|-]`: parse, classify and validate ICE candidates.

Input: candidate lines (with or without ``a=``/``candidate:``), a whole SDP, or browser JSON
(RTCIceCandidateInit objects, a list of them, ``{"candidates": [...]}``, or ``{"sdp": ...}``).
Exit 0 when every candidate is valid (and an SDP's media sections carry ice-ufrag/ice-pwd), 1
when one breaks the rules, 2 for unreadable input. The JSON shape is in docs/json.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import add_json_option, emit_json, verb_parser
from natkit.errors import UsageError

SCHEMA_VERSION = 1
# Findings that make the input itself invalid (not just a weak configuration).
INVALID_FINDINGS = ("no-ice-ufrag", "no-ice-pwd", "malformed-lines", "invalid-candidates")


def register(sub: Any, verb: str, help_text: str) -> None:
    parser = verb_parser(sub, verb, help_text, help_text + ". Exit status: 0 valid, 1 a "
                         "candidate or an SDP section breaks the rules, 2 unreadable input.", (
                             "natkit candidates offer.sdp",
                             "pbpaste | natkit candidates --json",
                             "natkit candidates trickle.json --json report.json",
                         ))
    parser.add_argument("file", nargs="?", default="-", metavar="FILE",
                        help="candidate lines, an SDP or browser JSON; '-' or nothing: stdin")
    add_json_option(parser)
    parser.set_defaults(func=run)


def read_input(name: str) -> str:
    from natkit.ice.jsonsafe import read_text_input

    return read_text_input(name, "candidates, an SDP or RTCIceCandidateInit JSON")[0]


def run(args: argparse.Namespace) -> int:
    from natkit.ice.diagnose import diagnose
    from natkit.ice.pasted import parse_candidates

    text = read_input(args.file)
    source = "<stdin>" if args.file == "-" else args.file
    parsed = parse_candidates(text, source)
    if not parsed.candidates and not parsed.malformed:
        raise UsageError(
            f"{'stdin' if args.file == '-' else args.file}: no candidates found "
            "(expected candidate lines, an SDP with a=candidate lines, or RTCIceCandidateInit JSON)"
        )
    findings = diagnose(parsed.candidates, parsed=parsed)
    items = [c.as_dict() for c in parsed.candidates]
    ok = (not parsed.malformed and all(item["valid"] for item in items)
          and not any(f.code in INVALID_FINDINGS for f in findings))
    if args.json:
        emit_json(args.json, {
            "schema_version": SCHEMA_VERSION,
            "kind": "candidates",
            "pass": ok,
            "source": source,
            "format": parsed.format,
            "candidates": items,
            "malformed": [m.as_dict() for m in parsed.malformed],
            "sections": [s.as_dict() for s in parsed.sections],
            "end_of_candidates": parsed.end_of_candidates,
            "diagnosis": [f.as_dict() for f in findings],
        }, [args.file if args.file != "-" else None])
    if args.json != "-":
        print(format_table(items, parsed, findings))
        if not ok and any(f.code in ("no-ice-ufrag", "no-ice-pwd") for f in findings):
            print("not valid: an SDP media section without ice-ufrag/ice-pwd cannot start ICE")
    return 0 if ok else 1


def format_table(items: list[dict[str, Any]], parsed: Any, findings: list[Any]) -> str:
    rows = [("TYPE", "PROTO", "ADDRESS", "PORT", "SCOPE", "PRIORITY (type/local/comp)",
             "RELATED", "MID", "EXTENSIONS")]
    for c in items:
        parts = c["priority_parts"]
        proto = c["transport"] + (f"/{c['tcptype']}" if c["tcptype"] else "")
        if c["type"] == "relay" and c["relay_protocol"]:
            # The peer side of a relay is UDP; what matters is how the client reaches TURN.
            guessed = "?" if c["relay_protocol_source"] == "priority" else ""
            proto = f"{proto} via TURN/{c['relay_protocol'].upper()}{guessed}"
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
