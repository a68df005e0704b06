"""The orchestration API over the agent wire protocol, with agents faked on socketpairs: what an
engine must provide (one connected socket per node) and what it gets back. No root needed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from natkit.lab.orchestrate import (
    FAILED_PEER_GRACE_S,
    Tally,
    expectation_of,
    orchestrate,
    probe_inconclusive,
)
from natkit.lab.topology import load

pytestmark = pytest.mark.timeout(60)


class FakeAgent:
    """Speaks the agent side of natkit.lab.agents: answers as the expectation model predicts."""

    def __init__(self, name: str, sock: socket.socket, topo: Any, plan: Any, hang: set[str],
                 lifetime: tuple[float | None, float | None] | None = None,
                 cases: list[Any] | None = None, broken: set[str] | None = None,
                 undecided: bool = False) -> None:
        self.name, self.sock, self.topo, self.plan, self.hang = name, sock, topo, plan, hang
        self.undecided = undecided  # its first probe leaves hairpinning undecided (a loaded box)
        self.lifetime = lifetime  # what a lifetime measurement answers (None: the bracket asked)
        self.cases = cases if cases is not None else topo.cases()
        # stacks whose browser in this node gathers nothing, until the node restarts it
        self.broken = set(broken or ())
        self.seen: list[dict[str, Any]] = []
        self.cancelled: list[int] = []
        self.restarted: list[str] = []

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection(sock=self.sock)
        stop = asyncio.Event()
        waiting: dict[int, asyncio.Future[None]] = {}

        def answer(cid: int, result: dict[str, Any]) -> None:
            writer.write((json.dumps({"id": cid, "result": result}) + "\n").encode())

        async def case(cmd: dict[str, Any]) -> None:
            cfg = cmd["config"]
            head, _, n = cfg["room"].rpartition("~")
            base = head if n.isdigit() else cfg["room"]  # a second attempt's room: "<id>~2"
            c = next(c for c in self.cases if c.id == base)
            if cmd["stack"] in self.broken:  # the page's report of a browser that gathers nothing
                answer(cmd["id"], {"role": cmd["role"], "path": c.path, "stack": cmd["stack"], "outcome": "failed",
                                   "relays": None, "error": "the data channel's opening did not happen before the deadline",
                                   "report": {"connected": False, "local_types": [], "signaled": [],
                                              "candidates": {"kept": 0, "dropped": 0, "mdns": 0}}})
                return
            if cfg["room"] in self.hang and cmd["role"] == "callee":
                waiting[cmd["id"]] = fut = asyncio.get_running_loop().create_future()
                await fut  # until the orchestrator cancels it
                answer(cmd["id"], {"error": "cancelled by the orchestrator"})
                return
            if cfg["room"] in self.hang:
                answer(cmd["id"], {"role": "caller", "outcome": "failed", "error": "gave up at once"})
                return
            exp = expectation_of(self.topo, self.plan, c)
            sel = {"local": {"type": c.path, "address": "x", "port": 1}, "remote": {"type": c.path, "address": "y", "port": 2}}
            answer(cmd["id"], {"role": cmd["role"], "path": c.path, "outcome": exp.outcome,
                               "selected": sel if exp.connected else None, "rtt_ms": 1.0, "t_connect_ms": 5.0})

        async def stop_later(cid: int) -> None:
            await stop.wait()
            answer(cid, {"stopped": True})

        tasks = []
        while line := await reader.readline():
            cmd = json.loads(line)
            self.seen.append(cmd)
            op = cmd["op"]
            if op == "servers":
                writer.write((json.dumps({"id": cmd["id"], "ready": True}) + "\n").encode())
                tasks.append(asyncio.ensure_future(stop_later(cmd["id"])))
            elif op == "stop-servers":
                stop.set()
            elif op == "probe":
                nat = next(r.nat for r in self.plan.routers if any(p.id == self.name for p in r.peers))
                from natkit.lab.expect import expected_probe

                got = dict(expected_probe(nat.behaviour))
                if self.undecided:
                    self.undecided, got["hairpinning"] = False, None
                answer(cmd["id"], got)
            elif op == "lifetime":
                lo, hi = self.lifetime or cmd["schedule"]
                answer(cmd["id"], {"min": lo, "max": hi})
            elif op == "case":
                tasks.append(asyncio.ensure_future(case(cmd)))
            elif op == "prepare":
                answer(cmd["id"], {"seconds": 0.1})
            elif op == "restart":
                self.restarted.append(cmd["stack"])
                self.broken.discard(cmd["stack"])
                answer(cmd["id"], {"seconds": 0.2, "before": "a new tab of it gathered 0 host candidates"})
            elif op == "cancel":
                self.cancelled.append(cmd["target"])
                fut = waiting.pop(cmd["target"], None)
                if fut is not None:
                    fut.set_result(None)
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run(only: list[str], hang: set[str], lifetime: tuple[float | None, float | None] | None = None,
               retries: int = 1, stacks: tuple[str, str] | None = None,
               broken: dict[str, set[str]] | None = None,
               undecided: bool = False) -> tuple[Any, dict[str, FakeAgent], float, list[tuple[str, Any]]]:
    import dataclasses

    from natkit.lab.cases import select_cases

    topo = load()
    cases = select_cases(topo, only)
    if stacks is not None:
        cases = [dataclasses.replace(c, stacks=stacks) for c in cases]
    plan = topo.plan(cases)
    names = ["srv", *(p.id for r in plan.routers for p in r.peers)]
    ours: dict[str, socket.socket] = {}
    fakes: dict[str, FakeAgent] = {}
    for n in names:
        a, b = socket.socketpair()
        ours[n] = a
        fakes[n] = FakeAgent(n, b, topo, plan, hang, lifetime, cases, (broken or {}).get(n), undecided)
    events: list[tuple[str, Any]] = []
    runs = [asyncio.ensure_future(f.run()) for f in fakes.values()]
    t0 = time.monotonic()
    orch = await orchestrate(topo, plan, cases, ours, turn_engine="natkit", progress=lambda k, i: events.append((k, i)),
                             retries=retries)
    took = time.monotonic() - t0
    for s in ours.values():
        s.close()
    await asyncio.wait_for(asyncio.gather(*runs), 5)
    return orch, fakes, took, events


async def test_orchestrate_runs_servers_probes_and_cases_on_the_agents_it_is_given() -> None:
    orch, fakes, _, events = await _run(["symmetric:full-cone,udp-blocked:open,same-lan"], set())
    from natkit.lab.cases import select_cases

    want = select_cases(load(), ["symmetric:full-cone,udp-blocked:open,same-lan"])
    assert [c.case for c in orch.cases] == want  # in the order given
    assert all(c.as_expected for c in orch.cases) and not orch.errors
    assert {p.nat for p in orch.probes} == {"symmetric", "full-cone", "udp-blocked", "open", "same-lan"}
    assert all(p.passed for p in orch.probes)
    # the servers' agent got the servers and was told to stop; peers got only probes and cases
    assert [c["op"] for c in fakes["srv"].seen] == ["servers", "stop-servers"]
    assert fakes["srv"].seen[0]["spec"]["turn"] == "203.0.113.4"
    for name, f in fakes.items():
        if name != "srv":
            assert {c["op"] for c in f.seen} <= {"probe", "case", "lifetime"} and f.seen
    # each side of a case ran in the agent of its peer, with its role and stack
    lan = next(c for c in orch.cases if c.case.same_lan and c.case.path == "host")
    roles = {(n, c["role"]) for n, f in fakes.items() for c in f.seen if c["op"] == "case" and c["config"]["room"] == lan.case.id}
    assert roles == {("same-lan-1-p1", "caller"), ("same-lan-1-p2", "callee")}
    tally = [i["tally"] for k, i in events if k == "case"][-1]
    assert isinstance(tally, Tally) and tally.unexpected == 0
    assert tally.connected + tally.failed_as_expected == len(orch.cases)
    assert {k for k, _ in events} == {"stage", "probe", "case"}


async def test_a_probe_that_left_hairpinning_undecided_is_asked_again() -> None:
    orch, fakes, _, _ = await _run(["full-cone:full-cone"], set(), undecided=True)
    assert [p.observed["hairpinning"] for p in orch.probes] == [False]
    assert all(p.passed for p in orch.probes)
    assert sum(c["op"] == "probe" for f in fakes.values() for c in f.seen) == 2


def test_only_a_verdict_the_nat_kind_names_makes_a_probe_inconclusive() -> None:
    want = {"mapping": "endpoint-independent", "hairpinning": False}
    assert probe_inconclusive(want, {"mapping": "unknown", "hairpinning": False})
    assert probe_inconclusive(want, {"mapping": "endpoint-independent", "hairpinning": None})
    assert not probe_inconclusive(want, {"mapping": "endpoint-dependent", "hairpinning": True})
    assert not probe_inconclusive({"mapping": "endpoint-independent"}, {"mapping": "endpoint-independent"})


async def test_an_orchestration_travels_as_json_and_comes_back_typed() -> None:
    """The Compose engine's runner container sends its orchestration to the host this way."""
    from natkit.lab.cases import select_cases
    from natkit.lab.orchestrate import Orchestration

    orch, _, _, _ = await _run(["symmetric:full-cone,same-lan"], set())
    topo = load()
    cases = select_cases(topo, ["symmetric:full-cone,same-lan"])
    doc = json.loads(json.dumps(orch.to_json()))
    back = Orchestration.from_json(doc, topo, topo.plan(cases), cases)
    assert [c.to_json() for c in back.cases] == [c.to_json() for c in orch.cases]
    assert [p.to_json() for p in back.probes] == [p.to_json() for p in orch.probes]
    assert back.errors == orch.errors and back.timings == orch.timings
    # a case the document lacks is a failed one, with the reason
    doc["cases"] = doc["cases"][1:]
    short = Orchestration.from_json(doc, topo, topo.plan(cases), cases)
    assert short.cases[0].observed == "failed" and "no result" in (short.cases[0].error or "")
    with pytest.raises(ValueError, match="not an orchestration document"):
        Orchestration.from_json({"cases": 3}, topo, topo.plan(cases), cases)


async def test_when_one_side_fails_the_other_is_cancelled_after_a_grace() -> None:
    room = "open~symmetric/host"  # expected to connect; here the caller gives up at once
    orch, fakes, took, _ = await _run(["open:symmetric"], {room}, retries=0)
    case = next(c for c in orch.cases if c.case.id == room)
    assert case.observed == "failed" and not case.as_expected
    assert case.error == "gave up at once"
    assert case.callee.error == "cancelled by the orchestrator"
    callee_agent = fakes[case.routers[1] + "-p1"]
    assert len(callee_agent.cancelled) == 1
    assert took < FAILED_PEER_GRACE_S + 3, took  # not the callee's whole deadline


async def test_a_case_expected_to_connect_that_failed_runs_again_in_a_room_of_its_own() -> None:
    from natkit.lab.orchestrate import Orchestration

    room = "open~symmetric/host"  # the fake fails it in this room only: the retry connects
    orch, fakes, _, events = await _run(["open:symmetric"], {room})
    case = next(c for c in orch.cases if c.case.id == room)
    assert case.passed is False and case.as_expected and case.attempts == 2  # judged later, with evidence
    assert case.first_error == "gave up at once"
    rooms = [c["config"]["room"] for f in fakes.values() for c in f.seen if c["op"] == "case" and c["role"] == "caller"]
    assert rooms.count(room) == 1 and rooms.count(f"{room}~2") == 1
    assert all(c.attempts == 1 for c in orch.cases if c.case.id != room)  # only the failed one
    assert [i["case"].case.id for k, i in events if k == "retry"] == [room]
    assert "retry_s" in orch.timings
    # the report and the Compose engine's document keep both attempts
    doc = case.to_json()
    assert doc["attempts"] == 2 and doc["first_error"] == "gave up at once"
    from natkit.lab.cases import select_cases

    topo = load()
    cases = select_cases(topo, ["open:symmetric"])
    back = Orchestration.from_json(json.loads(json.dumps(orch.to_json())), topo, topo.plan(cases), cases)
    again = next(c for c in back.cases if c.case.id == room)
    assert (again.attempts, again.first_error) == (2, "gave up at once")


async def test_a_browser_that_gathered_nothing_is_started_again_before_the_second_attempt() -> None:
    """Shard 3 of --full: the Firefox of one node signaled no candidate in any case, the
    second attempts included. Now that node's browser starts afresh first, once, and says so."""
    from natkit.lab.orchestrate import Orchestration

    node = "symmetric-1-p1"  # the callee of every open x symmetric case
    orch, fakes, _, events = await _run(["open:symmetric"], set(), stacks=("aiortc", "firefox"),
                                        broken={node: {"firefox"}})
    again = [c for c in orch.cases if c.attempts == 2 and c.expectation.connected]
    assert again and all(c.observed == "connected" for c in again)  # the fresh browser connected them
    assert fakes[node].restarted == ["firefox"]  # once, whatever the number of its cases
    assert not any(f.restarted for n, f in fakes.items() if n != node)
    for c in again:
        assert len(c.restarted) == 1 and c.restarted[0].startswith(f"firefox in {node} started again")
        assert "no candidate" in c.restarted[0] and c.restarted[0].endswith("gathered 0 host candidates"), c.restarted
        assert "no candidate" not in (c.first_error or "")  # that stays the first attempt's own error
        assert c.to_json()["restarted"] == c.restarted
    # the restart comes before any second attempt, and the orchestration document keeps it
    ops = [(cmd["op"], cmd.get("config", {}).get("room", "")) for cmd in fakes[node].seen]
    first_retry = next(i for i, (op, room) in enumerate(ops) if op == "case" and room.endswith("~2"))
    assert ops.index(("restart", "prepare")) < first_retry
    assert "restart_s" in orch.timings
    assert any(k == "stage" and "again before the second attempts" in i["text"] for k, i in events)
    topo = load()
    cases = [c.case for c in orch.cases]
    back = Orchestration.from_json(json.loads(json.dumps(orch.to_json())), topo, topo.plan(cases), cases)
    assert [c.restarted for c in back.cases] == [c.restarted for c in orch.cases]


async def test_expected_failures_that_met_a_broken_browser_run_again_after_its_restart() -> None:
    """Only expected failures here (symmetric x symmetric over srflx): without a second look
    they would pass as "failed as expected" although the browser signaled nothing."""
    orch, fakes, _, events = await _run(["symmetric:symmetric", "srflx"], set(), stacks=("aiortc", "firefox"),
                                        broken={"symmetric-2-p1": {"firefox"}})
    assert orch.cases and not any(c.expectation.connected for c in orch.cases)
    assert fakes["symmetric-2-p1"].restarted == ["firefox"]
    for c in orch.cases:
        assert c.attempts == 2 and c.as_expected and c.observed == "failed", c
        assert len(c.restarted) == 1 and "no candidate" in c.restarted[0]
        assert c.first_error == "the data channel's opening did not happen before the deadline"
    assert any(k == "stage" and "1 expected failures met a browser at fault" in i["text"] for k, i in events)


async def test_healthy_expected_failures_run_once() -> None:
    orch, fakes, _, _ = await _run(["symmetric:symmetric", "srflx"], set(), stacks=("aiortc", "firefox"))
    assert orch.cases and all(c.attempts == 1 and c.as_expected for c in orch.cases)
    assert not any(f.restarted for f in fakes.values()) and "restart_s" not in orch.timings


def test_a_relay_only_expected_failure_shows_no_browser_fault() -> None:
    from natkit.lab.retry import shows_a_browser_fault

    assert [shows_a_browser_fault(p) for p in ("host", "srflx", "longevity", "relay", "relay-tls")] == \
        [True, True, True, False, False]


async def test_a_failure_that_is_not_the_browsers_restarts_nothing() -> None:
    room = "aiortc-firefox:open~symmetric/host"
    orch, fakes, _, _ = await _run(["open:symmetric"], {room}, stacks=("aiortc", "firefox"))
    case = next(c for c in orch.cases if c.case.id == room)
    assert case.attempts == 2 and case.restarted == [] and "restarted" not in case.to_json()
    assert not any(f.restarted for f in fakes.values())


async def test_the_short_mapping_lifetime_is_measured_not_trusted() -> None:
    from natkit.lab.orchestrate import lifetime_agrees

    orch, fakes, _, _ = await _run(["port-restricted:open"], set())
    timed = {p.nat: p for p in orch.probes if "udp_lifetime_s" in p.expected}
    assert set(timed) == {"port-restricted"}  # the 20 s NAT; the others' lifetimes are minutes
    probe = timed["port-restricted"]
    assert probe.expected["udp_lifetime_s"] == 20 and probe.passed
    assert probe.observed["udp_lifetime_s"] == {"min": 15.0, "max": 25.0}
    asked = [c for f in fakes.values() for c in f.seen if c["op"] == "lifetime"]
    assert [c["schedule"] for c in asked] == [[15.0, 25.0]]  # bracketing the claimed lifetime
    # a mapping that outlived both checkpoints (or died before the first) fails the probe
    orch, _, _, _ = await _run(["port-restricted:open"], set(), lifetime=(25.0, None))
    assert not next(p for p in orch.probes if p.nat == "port-restricted").passed
    assert lifetime_agrees(20, {"min": 15.0, "max": 25.0})
    assert not lifetime_agrees(20, {"min": None, "max": 15.0}) and not lifetime_agrees(20, None)


def test_browser_windows_are_bounded_and_taken_whole() -> None:
    import asyncio

    from natkit.lab.orchestrate import Windows

    async def main() -> int:
        w = Windows(3)
        now = {"n": 0, "max": 0}

        async def case(n: int) -> None:
            async with w.take(n):
                now["n"] += n
                now["max"] = max(now["max"], now["n"])
                await asyncio.sleep(0.01)
                now["n"] -= n

        await asyncio.wait_for(asyncio.gather(*(case(2 if i % 2 else 1) for i in range(12))), 5)
        return now["max"]

    assert asyncio.run(main()) <= 3
