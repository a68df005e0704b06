"""Diagnose a set of candidates (an SDP, a trickle log, a gathering result): what is missing
and what it means for connectivity."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from natkit.ice.candidates import Candidate, CandidateSet
from natkit.ice.classify import NON_ROUTABLE


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # "error" | "warning" | "info"
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message}


def diagnose(
    candidates: Sequence[Candidate],
    *,
    parsed: CandidateSet | None = None,
    private_servers: Collection[str] = (),
) -> list[Finding]:
    """Findings for a set of candidates, most serious first. Relay candidates from a TURN
    server at a non-routable address (``private_servers``: their URLs, e.g. a lab server on
    loopback) may have private relay addresses without that being a mistake."""
    out: list[Finding] = []
    if not candidates:
        out.append(Finding("no-candidates", "error", "no candidates at all"))
        return out
    by_type: dict[str, list[Candidate]] = {}
    for cand in candidates:
        by_type.setdefault(cand.type, []).append(cand)
    hosts = by_type.get("host", [])
    srflx = by_type.get("srflx", [])
    relays = by_type.get("relay", [])

    for cand in relays:
        if cand.scope in NON_ROUTABLE and cand.url not in private_servers:
            out.append(Finding(
                "private-relay", "error",
                f"relay candidate {cand.address}:{cand.port} is a {cand.scope} address: peers "
                "elsewhere cannot reach it; the TURN server is behind NAT without its public "
                "address configured (coturn: external-ip=PUBLIC/PRIVATE)",
            ))
    if not relays:
        out.append(Finding(
            "no-relay", "warning",
            "no relay candidate: TURN is not configured, failed (credentials, reachability), or "
            "only UDP was tried where UDP is blocked; peers behind symmetric NATs or strict "
            "firewalls will fail to connect",
        ))
    elif all(c.relay_transport in ("tcp", "tls") for c in relays):
        out.append(Finding(
            "relay-tcp-only", "warning",
            "relay candidates only over TURN/TCP or TLS: UDP to the TURN server failed or is "
            "not configured; media works but with more latency",
        ))
    if not srflx and not by_type.get("prflx"):
        if any(c.scope == "public" for c in hosts):
            out.append(Finding(
                "no-srflx", "info",
                "no server-reflexive candidate, but a host candidate is public (no NAT)",
            ))
        else:
            out.append(Finding(
                "no-srflx", "warning",
                "no server-reflexive (srflx) candidate: STUN is not configured or unreachable "
                "(UDP blocked?); direct connections across NATs will not work",
            ))
    if hosts and all(c.scope == "mdns" for c in hosts):
        out.append(Finding(
            "mdns-only", "info",
            "host addresses are hidden behind mDNS .local names (browser privacy): only peers "
            "on the same link can resolve them",
        ))
    if not hosts:
        out.append(Finding(
            "no-host", "info",
            "no host candidates (relay-only policy, or host candidates filtered)",
        ))
    literal = [c for c in candidates if c.scope not in ("mdns", "hostname")]
    if literal and all(c.scope in NON_ROUTABLE for c in literal):
        out.append(Finding(
            "no-routable", "warning",
            "every candidate address is private, loopback or link-local: only peers on the "
            "same network can connect",
        ))
    if {c.ip_version for c in candidates} == {6}:
        out.append(Finding("ipv6-only", "info", "only IPv6 candidates"))
    invalid = [c for c in candidates if c.validate()[0]]
    if invalid:
        out.append(Finding(
            "invalid-candidates", "error",
            f"{len(invalid)} candidate(s) break the grammar rules; a browser may reject them",
        ))
    if parsed is not None:
        if parsed.malformed:
            out.append(Finding(
                "malformed-lines", "error",
                f"{len(parsed.malformed)} line(s) are not candidates a browser would accept",
            ))
        if parsed.format == "sdp":
            for section in parsed.sections:
                if section.index is None:
                    continue
                label = f"m-line {section.index} (mid {section.mid})"
                if section.ufrag is None:
                    out.append(Finding(
                        "no-ice-ufrag", "error", f"{label} has no a=ice-ufrag"
                    ))
                if section.pwd is None:
                    out.append(Finding("no-ice-pwd", "error", f"{label} has no a=ice-pwd"))
        ufrags = {
            c.extensions.get("ufrag") for c in candidates if c.extensions.get("ufrag")
        }
        for cand in candidates:
            own = cand.extensions.get("ufrag")
            if own and cand.ufrag and own != cand.ufrag:
                out.append(Finding(
                    "ufrag-mismatch", "warning",
                    f"candidate {cand.foundation} carries ufrag {own} but its section uses "
                    f"{cand.ufrag} (stale candidate from an earlier ICE generation?)",
                ))
                break
        if len(ufrags) > 1:
            out.append(Finding(
                "several-ufrags", "info",
                f"candidates from {len(ufrags)} ICE generations (ufrags)",
            ))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda f: order[f.severity])
