"""Pull the ICE parts out of an SDP: candidates per m-line and mid, ice-ufrag/pwd,
end-of-candidates (RFC 8839 §5). Other SDP lines are ignored."""

from __future__ import annotations

from natkit.ice.candidates import CandidateSet, Section


def parse_sdp(text: str) -> CandidateSet:
    result = CandidateSet("sdp")
    session = Section(index=None)  # session level: ice-ufrag/pwd inherited by media sections
    current = session
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("m="):
            current = Section(
                index=len(result.sections),
                media=line[2:].split(" ", 1)[0],
                ufrag=session.ufrag,
                pwd=session.pwd,
            )
            result.sections.append(current)
            continue
        if not line.startswith("a="):
            continue
        name, _, value = line[2:].partition(":")
        if name == "mid":
            current.mid = value
            for cand in current.candidates:
                cand.mid = value
        elif name == "ice-ufrag":
            current.ufrag = value
            for cand in current.candidates:
                cand.ufrag = value
        elif name == "ice-pwd":
            current.pwd = value
        elif name == "end-of-candidates":
            current.end_of_candidates = True
            result.end_of_candidates = True
        elif name == "candidate":
            result.add_line(current, line, number)
    if session.candidates:
        result.sections.insert(0, session)
    return result
