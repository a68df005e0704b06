"""``natkit lab run``: build the lab, probe every NAT, run every case, judge, report.

The run, step by step (each step in the module that does it):

1. **Cases** (:mod:`natkit.lab.cases`): the topology's matrix, a ``--only`` subset, and with
   ``browser`` the Chromium cases; every stack they name is checked (:mod:`natkit.lab.stacks`).
2. **Build** (:mod:`natkit.lab.engines.netns`): namespaces, links and each router's NAT recipe
   (:mod:`natkit.lab.nats`); the capture on the internet bridge (:mod:`natkit.lab.capture`);
   one agent per peer plus one for the servers.
3. **Orchestrate** (:mod:`natkit.lab.orchestrate`): the servers, the probes and the cases on
   those agents (:mod:`natkit.lab.agents`), each case against its derived expectation
   (:mod:`natkit.lab.expect`).
4. **Finish** (:func:`finish`, shared by every engine): stop the agents, close the capture, read
   the packet evidence (:mod:`natkit.lab.evidence`), judge each case; a typed
   :class:`~natkit.lab.results.LabResult`. Then the engine tears everything down.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab.cases import browser_cases, select_cases
from natkit.lab.engines import BuiltLab
from natkit.lab.matrix import Selection
from natkit.lab.orchestrate import Orchestration, Progress, check_stacks, orchestrate
from natkit.lab.results import CaseResult, Evidence, LabResult, describe_lab
from natkit.lab.shard import Shard
from natkit.lab.topology import TURN_ENGINES, Case, Plan, Topology

__all__ = ["attach_evidence", "check_turn_engine", "describe_run", "finish", "run", "run_cases", "select_cases"]


def check_turn_engine(topo: Topology, turn_engine: str | None) -> str:
    """The TURN engine to run (``turn_engine`` or the topology's), checked to be installed."""
    engine = turn_engine or topo.servers.turn_engine
    if engine not in TURN_ENGINES:
        raise ConfigError(f"{engine}: choose {' or '.join(TURN_ENGINES)}", param="turn_engine")
    if engine == "coturn" and shutil.which("turnserver") is None:
        raise PrerequisiteError("the coturn TURN engine needs coturn: apt-get install coturn")
    return engine


def run(
    topo: Topology,
    *,
    cases: list[Case] | None = None,
    turn_engine: str | None = None,
    parallel: int | None = None,
    capture: bool = True,
    progress: Progress | None = None,
    keep_capture: str | None = None,
    browser: bool = False,
    selection: Selection | None = None,
    shard: Shard | None = None,
) -> LabResult:
    """Build the lab of ``topo`` with the netns engine, run ``cases`` (all by default), the
    Chromium cases with ``browser``, and the probes; tear down; the typed result.

    ``selection`` (:func:`natkit.lab.matrix.select`): the plan the cases come from, recorded in
    the result (``cases`` default to its cases); with ``shard`` only that shard of it runs. (The
    Compose engine's counterpart: :func:`natkit.lab.engines.compose_lab.run`.)"""
    from natkit.lab.engines import netns

    t0 = time.monotonic()
    engine = check_turn_engine(topo, turn_engine)
    netns.check(capture=capture)
    from natkit.lab.prereqs import check_kinds

    check_kinds(topo)  # before anything is built
    netns.NOT_APPLIED.clear()
    cases = run_cases(topo, cases, selection, shard, browser=browser)
    check_stacks(cases)  # also imports them once, before the agents fork
    plan = topo.plan(cases)
    notify = progress or (lambda kind, info: None)
    timings: dict[str, float] = {}
    with netns.open_lab(topo, plan, capture=capture, progress=notify) as built:
        timings["build_s"] = time.monotonic() - t0
        orch = asyncio.run(orchestrate(topo, plan, cases, built.agents, turn_engine=engine, parallel=parallel, progress=notify))
        result = finish(built, topo, plan, orch, turn_engine=engine, started=t0, progress=notify,
                        keep_capture=keep_capture, browser=browser)
        t2 = time.monotonic()
    result.timings = {**timings, **result.timings, "teardown_s": time.monotonic() - t2}
    result.lab["not_applied"] = list(netns.NOT_APPLIED)  # impairments the kernel could not apply
    result.duration_s = time.monotonic() - t0
    describe_run(result, selection, shard)
    return result


def run_cases(
    topo: Topology, cases: Sequence[Case] | None, selection: Selection | None, shard: Shard | None, *,
    browser: bool = False,
) -> list[Case]:
    """The cases a run holds, for every engine: ``cases`` (default: the selection's, else the
    topology's), the Chromium cases with ``browser``, then only ``shard`` of them."""
    if cases is None:
        cases = list(selection.cases) if selection is not None else topo.cases()
    out = list(cases)
    if browser:
        out += browser_cases(topo, within=out)
    if selection is not None and shard is not None:
        from natkit.lab.shard import shard_cases

        out = [c for _, c in shard_cases(out, shard)]
        if not out:
            raise ConfigError(f"shard {shard} of {selection.id} holds no case ({len(selection.cases)} in the plan)", param="shard")
    return out


def describe_run(result: LabResult, selection: Selection | None, shard: Shard | None = None) -> None:
    """Record in ``result`` the plan its cases come from, the shard, and every stack used."""
    from natkit.lab import stacks

    if selection is not None:
        result.plan = selection.to_json()
        result.case_index = dict(selection.index)
    result.shard = shard.to_json() if shard is not None else None
    names = list(dict.fromkeys(s for c in result.cases for s in c.case.stacks))
    if selection is not None:
        names = list(dict.fromkeys([*selection.stacks, *names]))
    result.stacks = [{"name": n, "capabilities": stacks.capabilities_of(n).to_json()} for n in names]


def finish(
    built: BuiltLab,
    topo: Topology,
    plan: Plan,
    orch: Orchestration,
    *,
    turn_engine: str,
    started: float,
    progress: Progress | None = None,
    keep_capture: str | None = None,
    browser: bool = False,
) -> LabResult:
    """After :func:`~natkit.lab.orchestrate.orchestrate`: stop the agents, finish the capture
    (kept in ``keep_capture`` if given), attach the packet evidence, judge every case."""
    notify = progress or (lambda kind, info: None)
    built.stop_agents()
    errors = list(orch.errors)
    timings = dict(orch.timings)
    if built.capture is not None:
        t1 = time.monotonic()
        errors += built.capture.finish()
        if keep_capture:
            built.capture.keep(keep_capture)
        notify("stage", {"text": "reading packet evidence"})
        attach_evidence(built.capture.path, topo, plan, orch.cases)
        timings["evidence_s"] = time.monotonic() - t1
    for c in orch.cases:
        c.judge(built.capture is not None)
    return LabResult(
        topo.source, turn_engine, orch.cases, orch.probes, time.monotonic() - started, timings, errors,
        describe_lab(topo, plan), engine=built.engine, browser=browser,
    )


def _global6(ip6: str, lan6: str | None, out6: str | None) -> str:
    """A peer's IPv6 address as the internet sees it (prefix-translated behind NPTv6)."""
    import ipaddress

    if not lan6 or not out6:
        return ip6
    host = int(ipaddress.IPv6Address(ip6)) - int(ipaddress.IPv6Network(lan6).network_address)
    return str(ipaddress.IPv6Network(out6).network_address + host)


def attach_evidence(pcap: str | Path, topo: Topology, plan: Plan, cases: Sequence[CaseResult]) -> None:
    """Set ``evidence`` of every connected case from the capture at ``pcap``."""
    from natkit.lab.evidence import judge_peers, read_capture

    srv = topo.servers
    turn = (srv.turn_address, srv.turn_port)
    also = ((srv.turn_address6, srv.turn_port),) if srv.turn_address6 else ()
    flows = read_capture(pcap, turn, (srv.turn_address, srv.turn_tls_port) if srv.turn_tls_port else None, also)
    for c in cases:
        if c.observed != "connected":
            c.evidence = None
            continue
        ra = plan.router(c.routers[0])
        public, lan = ra.public_ip, ra.peer_lan
        if c.case.family == "ipv6" and ra.peers[0].ip6:  # the caller's global address and IPv6 LAN
            public = _global6(ra.peers[0].ip6, ra.lan_net6, ra.outside_net6)
            lan = ra.lan_net6 or lan
        c.evidence = Evidence.from_json(judge_peers(
            flows, caller=c.caller.to_json(), callee=c.callee.to_json(),
            caller_lan=lan, caller_public=public, turn=turn,
        ))
