"""The stack dimension of a lab report, from its JSON cases (for the terminal, the HTML page
and ``natkit lab merge``): one row per (caller stack, callee stack)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["pair_order", "stack_pairs"]


def pair_order(cases: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The (caller, callee) stack pairs of ``cases`` in order of first appearance."""
    seen: dict[tuple[str, str], None] = {}
    for c in cases:
        seen.setdefault((str(c.get("caller_stack")), str(c.get("callee_stack"))), None)
    return list(seen)


def stack_pairs(cases: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per stack pair: ``cases``, ``as_expected`` (passed), ``connected`` (observed),
    ``expected_connected``, ``unexpected`` (outcome differs), ``suspect`` (outcome as expected
    but route or evidence not), ``by_stacks`` (cases whose expectation the stacks decided),
    ``pass``."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for c in cases:
        key = (str(c.get("caller_stack")), str(c.get("callee_stack")))
        row = rows.setdefault(key, {
            "caller_stack": key[0], "callee_stack": key[1], "cases": 0, "as_expected": 0, "connected": 0,
            "expected_connected": 0, "unexpected": 0, "suspect": 0, "by_stacks": 0,
        })
        row["cases"] += 1
        row["as_expected"] += bool(c.get("pass"))
        row["connected"] += c.get("observed") == "connected"
        row["expected_connected"] += c.get("expected") == "connected"
        differs = c.get("observed") != c.get("expected")
        row["unexpected"] += differs
        row["suspect"] += not differs and not c.get("pass")
        row["by_stacks"] += c.get("decided_by") == "stacks"
    for row in rows.values():
        row["pass"] = row["as_expected"] == row["cases"]
    return list(rows.values())
