"""Whatever a user pastes, as candidates: bare candidate lines, a whole SDP, or browser JSON
(``RTCIceCandidateInit``, a list of them, ``{"candidates": [...]}``, ``{"sdp": ...}``)."""

from __future__ import annotations

import re
from typing import Any

from natkit.errors import UsageError
from natkit.ice.candidates import CandidateSet, Section
from natkit.ice.jsonsafe import loads_strict
from natkit.ice.sdp import parse_sdp

__all__ = ["parse_candidates"]

_EXPECTED = "RTCIceCandidateInit object(s) or a session description"


def parse_candidates(text: str, source: str = "<input>") -> CandidateSet:
    """Parse bare candidate lines, an SDP, or browser JSON. Raises UsageError when the input
    is none of these (e.g. invalid JSON: ``source:line:col: invalid JSON: ...``)."""
    stripped = text.lstrip("\ufeff").strip()
    if stripped.startswith(("{", "[")):
        return _parse_json(stripped, source)
    if re.search(r"^(v=0|m=)", stripped, re.MULTILINE) and re.search(
        r"^[vmo]=", stripped, re.MULTILINE
    ):
        return parse_sdp(stripped)
    return _parse_lines(stripped)


def _parse_lines(text: str) -> CandidateSet:
    result = CandidateSet("lines")
    section = Section(index=None)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() in ("a=end-of-candidates", "end-of-candidates"):
            section.end_of_candidates = result.end_of_candidates = True
            continue
        result.add_line(section, line, number)
    result.sections.append(section)
    return result


def _parse_json(text: str, source: str) -> CandidateSet:
    data = loads_strict(text, source, _EXPECTED)
    if isinstance(data, dict) and isinstance(data.get("sdp"), str):
        return parse_sdp(data["sdp"])
    if isinstance(data, dict) and isinstance(data.get("candidates"), list):
        items: list[Any] = data["candidates"]
        where = "candidates"
    elif isinstance(data, list):
        items, where = data, ""
    else:
        items, where = [data], None
    result = CandidateSet("json")
    sections: dict[tuple[Any, Any], Section] = {}
    for i, item in enumerate(items):
        path = f"{where}[{i}]" if where is not None else "$"
        if isinstance(item, str):
            item = {"candidate": item}
        if not isinstance(item, dict) or not isinstance(item.get("candidate"), str):
            raise UsageError(
                f"{source}: {path}: expected an RTCIceCandidateInit object with a string "
                "'candidate'"
            )
        mid = item.get("sdpMid")
        index = item.get("sdpMLineIndex")
        if mid is not None and not isinstance(mid, str):
            raise UsageError(f"{source}: {path}.sdpMid: expected a string or null")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise UsageError(f"{source}: {path}.sdpMLineIndex: expected an integer or null")
        key = (mid, index)
        section = sections.get(key)
        if section is None:
            section = sections[key] = Section(index=index, mid=mid)
            result.sections.append(section)
        ufrag = item.get("usernameFragment")
        line = item.get("candidate", "").strip()
        if not line:  # an empty candidate is the browser's end-of-candidates
            section.end_of_candidates = result.end_of_candidates = True
            continue
        section.ufrag = ufrag if isinstance(ufrag, str) else None
        cand = result.add_line(section, line, None)
        if cand is not None:
            cand.source_line = i
            relay = item.get("relayProtocol")
            if isinstance(relay, str) and relay.lower() in ("udp", "tcp", "tls"):
                cand.relay_protocol = relay.lower()
        elif result.malformed:
            result.malformed[-1].source_line = i
    return result
