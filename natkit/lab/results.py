"""The results of a lab run as typed objects; JSON is made only at the edge (:meth:`to_json`).

:class:`LabResult` holds a run: its :class:`CaseResult` per case (expected vs observed, both
peers' :class:`~natkit.lab.stacks.base.PeerResult`, the route, the packet :class:`Evidence`),
its :class:`ProbeResult` per NAT, timings and errors. ``LabResult.to_json()`` is the document
``natkit lab run --json`` writes; its keys are documented in ``docs/lab-json.md`` and versioned
by :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass, field
from typing import Any

from natkit.lab.expect import Expectation
from natkit.lab.stacks.base import PeerResult
from natkit.lab.topology import DEFAULT_STACKS, Case, Plan, Topology

__all__ = ["SCHEMA_VERSION", "CaseResult", "Evidence", "LabResult", "ProbeResult", "describe_lab"]

SCHEMA_VERSION = 1


@dataclass
class Evidence:
    """What the capture on the internet segment shows of one connected case.

    ``route``: relay | direct | none (nothing crossed the segment); ``claimed``: the route the
    caller's selected pair implies; ``consistent``: whether the two agree.
    """

    route: str | None
    claimed: str | None
    packets: int
    consistent: bool
    detail: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        return cls(data.get("route"), data.get("claimed"), int(data.get("packets") or 0),
                   bool(data.get("consistent")), str(data.get("detail", "")))

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "claimed": self.claimed, "packets": self.packets,
                "consistent": self.consistent, "detail": self.detail}


@dataclass
class CaseResult:
    """One case: the expectation, both peers' reports and the verdict.

    ``routers`` are the caller's and the callee's router ids (for the evidence); ``route`` the
    route the caller's selected pair implies. ``passed`` is set by :meth:`judge`.
    """

    case: Case
    expectation: Expectation
    caller: PeerResult
    callee: PeerResult
    routers: tuple[str, str]
    route: str | None = None
    evidence: Evidence | None = None
    passed: bool = False
    # A case expected to connect that failed is run once more after the others
    # (natkit.lab.orchestrate, RETRIES): this is the second attempt, and why the first failed.
    attempts: int = 1
    first_error: str | None = None
    # What was done between the attempts: the browsers started again because the first
    # attempt showed them at fault (natkit.lab.retry), one line each.
    restarted: list[str] = field(default_factory=list)

    @property
    def observed(self) -> str:
        return "connected" if self.caller.connected and self.callee.connected else "failed"

    @property
    def expected(self) -> str:
        return self.expectation.outcome

    @property
    def as_expected(self) -> bool:
        return self.observed == self.expected

    @property
    def error(self) -> str | None:
        return self.caller.error or self.callee.error

    def judge(self, capture: bool) -> bool:
        """Set and return :attr:`passed`: the outcome as expected and, for a connection, the
        expected route, and evidence that agrees when there was a capture."""
        ok = self.as_expected
        if ok and self.observed == "connected":
            evidence_ok = not capture or (self.evidence is not None and self.evidence.consistent)
            ok = evidence_ok and self.route == self.expectation.route
        self.passed = ok
        return ok

    def to_json(self) -> dict[str, Any]:
        connected = self.observed == "connected"
        out: dict[str, Any] = {
            "nats": list(self.case.nats),
            "path": self.case.path,
            "same_lan": self.case.same_lan,
            "caller_stack": self.case.stacks[0],
            "callee_stack": self.case.stacks[1],
            "expected": self.expected,
            "observed": self.observed,
            "expected_route": self.expectation.route,
            "route": self.route if connected else None,
            "reason": self.expectation.reason,
            "selected": self.caller.selected if connected else None,
            "callee_selected": self.callee.selected if connected else None,
            "t_connect_ms": self.caller.t_connect_ms if connected else None,
            "rtt_ms": self.caller.rtt_ms if connected else None,
            "error": self.error,
            "evidence": self.evidence.to_json() if self.evidence is not None else None,
            "pass": self.passed,
            "family": self.case.family,
            "selected_family": _family_of(self.caller.selected) if connected else None,
            # Both sides, as each stack reports itself (getStats summary, a peer program's
            # exit status, result line and stderr tail), whatever the stacks.
            "id": self.case.id,
            "decided_by": self.expectation.decided_by,
            "callee_t_connect_ms": self.callee.t_connect_ms if connected else None,
            "caller_error": self.caller.error,
            "callee_error": self.callee.error,
            "caller_report": self.caller.report,
            "callee_report": self.callee.report,
        }
        if self.attempts > 1:
            out["attempts"] = self.attempts
            out["first_error"] = self.first_error
            if self.restarted:
                out["restarted"] = list(self.restarted)
        if self.case.stacks[0] == "chromium":
            out["browser"] = self.caller.report  # Chromium's own getStats summary (older key)
        return out


@dataclass
class ProbeResult:
    """``natkit probe`` inside one NAT, against the lab's RFC 5780 responder."""

    nat: str
    type: str
    expected: dict[str, Any]
    observed: dict[str, Any]
    passed: bool
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        err = data.get("error")
        return cls(str(data["nat"]), str(data["type"]), dict(data["expected"]), dict(data["observed"]),
                   bool(data["pass"]), None if err is None else str(err))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nat": self.nat, "type": self.type, "expected": self.expected,
                               "observed": self.observed, "pass": self.passed}
        if self.error is not None:
            out["error"] = self.error
        return out


def _family_of(selected: dict[str, Any] | None) -> str | None:
    """ipv4 | ipv6: the family of a selected pair's remote address."""
    addr = ((selected or {}).get("remote") or {}).get("address")
    if not isinstance(addr, str):
        return None
    return "ipv6" if ":" in addr else "ipv4"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _version() -> str:
    from natkit import __version__

    return __version__


@dataclass
class LabResult:
    """A whole run. ``engine`` built the lab (netns | compose), ``turn_engine`` relayed."""

    topology: str
    turn_engine: str
    cases: list[CaseResult]
    probes: list[ProbeResult]
    duration_s: float
    timings: dict[str, float]
    errors: list[str] = field(default_factory=list)
    lab: dict[str, Any] = field(default_factory=dict)
    engine: str = "netns"
    browser: bool = False  # whether browser cases were asked for (``--browser``)
    plan: dict[str, Any] | None = None  # the Selection (natkit.lab.matrix) the cases come from
    shard: dict[str, int] | None = None  # {"index", "count"} of a --shard run
    case_index: dict[str, int] = field(default_factory=dict)  # case id -> index in the plan
    stacks: list[dict[str, Any]] = field(default_factory=list)  # each stack and its capabilities
    started_at: str = field(default_factory=_now)
    host: str = field(default_factory=socket.gethostname)
    natkit_version: str = field(default_factory=_version)
    compose: dict[str, Any] | None = None  # the Compose engine's run: tool, project, image, bridges

    @property
    def matrix_cases(self) -> list[CaseResult]:
        """The aiortc x aiortc cases: the matrix."""
        return [c for c in self.cases if c.case.stacks == DEFAULT_STACKS]

    @property
    def browser_cases(self) -> list[CaseResult]:
        """The cases whose caller is another stack (Chromium)."""
        return [c for c in self.cases if c.case.stacks != DEFAULT_STACKS]

    @property
    def passed(self) -> bool:
        return not self.errors and all(c.passed for c in self.cases) and all(p.passed for p in self.probes)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def _case_json(self, i: int, case: CaseResult) -> dict[str, Any]:
        data = case.to_json()
        data["index"] = self.case_index.get(case.case.id, i)
        return data

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "natkit_version": self.natkit_version,
            "started_at": self.started_at,
            "host": self.host,
            "engine": self.engine,
            "topology": self.topology,
            "turn_engine": self.turn_engine,
            "pass": self.passed,
            "duration_s": round(self.duration_s, 2),
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "lab": self.lab,
            "cases": [self._case_json(i, c) for i, c in enumerate(self.cases)],
            "probes": [p.to_json() for p in self.probes],
            "errors": list(self.errors),
            "plan": self.plan,
            "shard": self.shard,
            "stacks": self.stacks,
        }
        from natkit.lab.summary import stack_pairs

        out["stack_pairs"] = stack_pairs(out["cases"])
        if self.browser:
            out["browser_cases"] = [c.to_json() for c in self.cases if c.case.stacks == ("chromium", "aiortc")]
        if self.compose is not None:
            out["compose"] = dict(self.compose)
        return out


def describe_lab(topo: Topology, plan: Plan) -> dict[str, Any]:
    """The topology as the results JSON carries it (engine-independent: for reports)."""
    srv = topo.servers
    return {
        "name": topo.name,
        "internet": topo.internet_net,
        "case_deadline_s": topo.case_deadline_s,
        "servers": {
            "stun": [f"{srv.stun_addresses[0]}:{srv.stun_port}", f"{srv.stun_addresses[1]}:{srv.stun_alt_port}"],
            "turn": f"{srv.turn_address}:{srv.turn_port}",
            "turn_transports": list(srv.turn_transports),
            "signaling": f"ws://{srv.signaling_address}:{srv.signaling_port}/ws",
        },
        "nats": [
            {
                "name": n.name,
                "type": n.type,
                "mapping": n.behaviour.mapping.value if n.behaviour.mapping else "none",
                "filtering": n.behaviour.filtering.value if n.behaviour.filtering else "none",
                "block_udp": n.behaviour.block_udp,
                "egress_tcp_ports": list(n.behaviour.egress_tcp_ports) if n.behaviour.egress_tcp_ports is not None else None,
                "families": [f"ipv{f}" for f in n.behaviour.families],
                "hairpin": n.behaviour.hairpinning,
                "udp_timeout_s": n.behaviour.udp_timeout,
                "same_lan": n.same_lan,
                "wan": {"delay_ms": n.wan.delay_ms, "loss_pct": n.wan.loss_pct},
                "lan": {"delay_ms": n.lan.delay_ms, "loss_pct": n.lan.loss_pct},
            }
            for n in topo.nats
        ],
        "routers": [
            {"id": r.id, "nat": r.nat.name, "public_ip": r.public_ip, "lan": r.lan_net, "peers": [p.ip for p in r.peers]}
            for r in plan.routers
        ],
    }
