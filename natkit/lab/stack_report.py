"""The stack dimension in the terminal report: a caller stack × callee stack grid of how many
cases went as expected, and, per stack pair, what the stacks themselves decided (a DTLS that
cannot meet, a candidate a stack does not signal), so that a reader sees why a pair fails
before reading any NAT grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from natkit.lab.summary import stack_pairs

__all__ = ["pair_key", "render_stack_summary", "stack_cell", "stack_reasons"]


def pair_key(case: Mapping[str, Any]) -> tuple[str, str]:
    return str(case.get("caller_stack", "aiortc")), str(case.get("callee_stack", "aiortc"))


def stack_cell(row: Mapping[str, Any]) -> str:
    """``14/14`` when every case went as expected, ``!12/14`` when not."""
    mark = "" if row["pass"] else "!"
    return f"{mark}{row['as_expected']}/{row['cases']}"


def stack_reasons(cases: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """The reasons the stacks decided (``decided_by == "stacks"``), each with its count."""
    out: dict[str, int] = {}
    for c in cases:
        if c.get("decided_by") == "stacks":
            reason = str(c.get("reason") or "")
            out[reason] = out.get(reason, 0) + 1
    return sorted(out.items(), key=lambda kv: -kv[1])


def render_stack_summary(result: Mapping[str, Any], groups: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]], out: TextIO) -> None:
    w = out.write
    rows = {(r["caller_stack"], r["callee_stack"]): r for r in stack_pairs(result["cases"])}
    order = [s["name"] for s in result.get("stacks") or [] if isinstance(s, Mapping) and "name" in s]
    for a, b in rows:
        for n in (a, b):
            if n not in order:
                order.append(n)
    callers = [n for n in order if any(k[0] == n for k in rows)]
    callees = [n for n in order if any(k[1] == n for k in rows)]
    width = max(len("caller \\ callee"), *(len(n) for n in callers))
    col = max(8, *(len(n) + 2 for n in callees))
    w("\nstacks (rows: caller's stack, columns: callee's stack; cases as expected / cases, ! when not all)\n")
    w("  " + "caller \\ callee".ljust(width) + "".join(n.rjust(col) for n in callees) + "\n")
    for a in callers:
        cells = [stack_cell(rows[(a, b)]) if (a, b) in rows else "" for b in callees]
        w("  " + a.ljust(width) + "".join(c.rjust(col) for c in cells) + "\n")
    w("\n")
    for key, row in rows.items():
        cases = groups.get(key, [])
        paths = sorted({str(c.get("path")) for c in cases if c.get("observed") == "connected"})
        line = (f"  {key[0]} -> {key[1]}: {row['connected']} of {row['cases']} connected "
                f"({row['expected_connected']} expected to)" + (f" over {', '.join(paths)}" if paths else ""))
        if row["unexpected"] or row["suspect"]:
            line += f"; {row['unexpected']} unexpected, {row['suspect']} with route or evidence amiss"
        w(line + "\n")
        for reason, n in stack_reasons(cases)[:3]:
            w(f"      {n} x {reason}\n")
    w("\n")
