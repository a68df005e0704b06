"""The `--json` keys docs/bench_turn.md documents, to hold reports against."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "bench_turn.md"


def documented_keys() -> set[str]:
    """Every `name` in the doc's JSON keys section (dotted names split into their parts)."""
    text = DOC.read_text()
    section = text.split("## JSON keys", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for quoted in re.findall(r"`([^`]+)`", section):
        for part in re.split(r"[.<>|]", quoted):
            names.add(part.strip('"'))
    return names


def undocumented(report: dict, sections: tuple[str, ...]) -> set[str]:
    """Keys of ``report`` (top level, settings, each engine's ``sections``) the doc lacks."""
    keys = set(report) | set(report["settings"])
    for engine in report["engines"].values():
        for section in sections:
            keys |= set(engine[section])
    return keys - documented_keys()
