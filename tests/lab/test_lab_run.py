"""`natkit lab run` end to end (the aiortc matrix of the default run, as root), its JSON, and
its cleanup after a failure and after ``kill -9``; plus the runner's and report's logic on
their own."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from natkit.errors import UsageError
from natkit.lab import report, runner
from natkit.lab.expect import Expectation
from natkit.lab.results import CaseResult, Evidence, LabResult, ProbeResult
from natkit.lab.stacks import PeerResult
from natkit.lab.topology import Case, load
from tests.lab.conftest import DEFAULT_RUN_TEST_TIMEOUT, LabRun

pytestmark = pytest.mark.timeout(120)

needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("dumpcap") is None,
    reason="needs root on Linux (namespaces, nftables) and dumpcap",
)
NATKIT = [sys.executable, "-m", "natkit"]


def _namespaces(tag: str | None = None) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return {n for n in names if tag is None or n.startswith(tag + "-")}


# -- without root ----------------------------------------------------------------------------


def test_select_cases() -> None:
    topo = load()
    assert len(runner.select_cases(topo, ["srflx"])) == 38  # 36 NAT pairs + 2 same-LAN NATs
    cases = runner.select_cases(topo, ["symmetric,port-restricted", "host,relay"])
    assert {c.nats for c in cases} == {
        ("port-restricted", "port-restricted"), ("port-restricted", "symmetric"), ("symmetric", "symmetric")
    }
    assert {c.path for c in cases} == {"host", "relay"}
    cases = runner.select_cases(topo, ["symmetric:open"])
    assert [c.nats for c in cases] == [("open", "symmetric")] * 4
    for bad in (["nope"], ["open:nope"]):
        with pytest.raises(UsageError, match="nope") as err:
            runner.select_cases(topo, bad)
        assert err.value.param == "only"  # type: ignore[attr-defined]  # the CLI names --only


def _case(expected: str, observed: str, route: str | None = "direct", consistent: bool = True) -> dict[str, Any]:
    return {
        "nats": ["a", "b"], "path": "srflx", "same_lan": False, "expected": expected, "observed": observed,
        "expected_route": "direct" if expected == "connected" else None,
        "route": route if observed == "connected" else None,
        "evidence": {"consistent": consistent, "detail": "x"} if observed == "connected" else None,
    }


def _result(expected: str, observed: str, route: str | None = "direct", consistent: bool | None = True) -> CaseResult:
    """A typed case as the orchestrator makes it (evidence as the runner attaches it)."""
    up = observed == "connected"
    exp = Expectation(expected == "connected", "direct" if expected == "connected" else None, "why")
    peer = {"outcome": observed, "selected": {"local": {"type": "srflx"}, "remote": {"type": "srflx"}} if up else None}
    c = CaseResult(
        Case(("a", "b"), "srflx"), exp, PeerResult.from_json(peer, role="caller", path="srflx"),
        PeerResult.from_json(peer, role="callee", path="srflx"), ("a-1", "b-1"), route=route if up else None,
    )
    if up and consistent is not None:
        c.evidence = Evidence(route, route, 3, consistent, "x")
    return c


def test_cells_and_case_verdicts() -> None:
    assert report.cell(_case("connected", "connected")) == "D"
    assert report.cell(_case("failed", "failed")) == "."
    assert report.cell(_case("failed", "connected")) == "!C"
    assert report.cell(_case("connected", "failed")) == "!F"
    assert report.cell(_case("connected", "connected", consistent=False)) == "!E"
    assert report.cell(_case("connected", "connected", route="relay")) == "!R"
    assert _result("connected", "connected").judge(capture=True)
    assert _result("failed", "failed").judge(capture=True)
    assert not _result("connected", "failed").judge(capture=True)
    assert not _result("failed", "connected").judge(capture=True)
    assert not _result("connected", "connected", consistent=False).judge(capture=True)
    assert not _result("connected", "connected", consistent=None).judge(capture=True)  # no evidence
    assert _result("connected", "connected", consistent=None).judge(capture=False)
    assert not _result("connected", "connected", route="lan").judge(capture=True)
    # the typed case serialises to the documented keys, and the cell reads them back
    data = _result("connected", "connected").to_json()
    assert report.cell({**data, "pass": True}) == "D"
    assert {"caller_stack", "callee_stack", "evidence", "selected", "pass"} <= set(data)


def test_the_case_keys_name_their_units_as_the_docs_say() -> None:
    """Every time in a case is in milliseconds under a key ending ``_ms`` and docs/lab-json.md
    says milliseconds for each; docs/json.md gives the rule for ``_s`` and ``_ms``."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| (.+) \|$",
                                                         (docs / "lab-json.md").read_text(), re.M)}
    data = _result("connected", "connected").to_json()
    timed = [k for k in data if k.endswith("_ms")]
    assert set(timed) == {"t_connect_ms", "callee_t_connect_ms", "rtt_ms"}, timed
    for key in timed:
        assert "millisecond" in rows[key], (key, rows.get(key))
    assert not [k for k in data if k.endswith(("_sec", "_seconds", "_millis"))]
    rule = (docs / "json.md").read_text()
    assert "ending `_s` is seconds" in rule and "ending `_ms` milliseconds" in rule


def test_exit_code_follows_the_cases_and_probes() -> None:
    good = ProbeResult("x", "open", {}, {}, True)
    ok_case = _result("failed", "failed")
    ok_case.judge(capture=True)
    ok = LabResult("t", "natkit", [ok_case], [good], 1.0, {})
    assert ok.exit_code == 0 and ok.to_json()["pass"] is True
    assert ok.to_json()["schema_version"] == 1
    bad_probe = LabResult("t", "natkit", ok.cases, [ProbeResult("x", "open", {}, {}, False)], 1.0, {})
    assert bad_probe.exit_code == 1
    bad = _result("connected", "failed")
    bad.judge(capture=True)
    assert LabResult("t", "natkit", [bad], [good], 1.0, {}).exit_code == 1
    assert LabResult("t", "natkit", [ok_case], [good], 1.0, {}, errors=["boom"]).exit_code == 1


def test_the_progress_line_counts_expected_failures_as_expected() -> None:
    import io

    from natkit.lab.orchestrate import Tally

    tally = Tally()
    lines = []
    out = io.StringIO()
    progress = report.Progress(out)
    for i, case in enumerate([_result("connected", "connected"), _result("failed", "failed"), _result("connected", "failed")]):
        tally.add(case)
        progress("case", {"case": case, "done": i + 1, "total": 3, "tally": tally})
    lines = out.getvalue().splitlines()
    assert lines[1] == "[2/3] a x b srflx: failed as expected  (1 connected, 1 failed as expected, 0 unexpected)"
    assert lines[2].endswith("failed, UNEXPECTED (expected connected)  (1 connected, 1 failed as expected, 1 unexpected)")
    assert "failures" not in out.getvalue()


def test_browser_case_evidence_is_judged_and_a_contradiction_fails_it(tmp_path: Path) -> None:
    """The evidence step on a Chromium case (a capture written here): its relay pair with DTLS
    inside its own allocation agrees; one whose packets went direct fails."""
    import io

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    from natkit.lab.cases import browser_cases
    from natkit.lab.orchestrate import expectation_of
    from natkit.stun import Attr, Class, Message, Method, encode_channel_data

    topo = load()
    case = next(c for c in browser_cases(topo) if c.nats[0] == "symmetric" and c.path == "relay")
    assert case.stacks == ("chromium", "aiortc")
    plan = topo.plan([case])
    (ra, _), (rb, _) = plan.peers_of(case)
    turn = (topo.servers.turn_address, topo.servers.turn_port)
    client, relayed, peer = (ra.public_ip, 40000), (turn[0], 50000), (rb.public_ip, 41000)
    alloc = Message(Method.ALLOCATE, Class.SUCCESS).add(Attr.XOR_RELAYED_ADDRESS, relayed).encode()
    dtls = bytes([23, 0xFE, 0xFD]) + bytes(20)

    def udp(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> Ether:
        return Ether() / IP(src=src[0], dst=dst[0]) / UDP(sport=src[1], dport=dst[1]) / data

    sel = {"local": {"type": "relay", "address": relayed[0], "port": relayed[1], "relay_protocol": "udp"},
           "remote": {"type": "relay", "address": turn[0], "port": 50001}}
    report_ = {"connected": True, "selected": sel, "rtt_ms": 1.0, "t_connect_ms": 300.0}
    chromium = PeerResult("caller", "relay", "chromium", "connected", selected=sel, relays=None, report=report_)
    callee = PeerResult("callee", "relay", "aiortc", "connected",
                        selected={"remote": {"address": relayed[0], "port": relayed[1]}})
    verdicts = []
    for inner in (udp(client, turn, encode_channel_data(0x4000, dtls)), udp(client, peer, dtls)):
        pcap = tmp_path / "internet.pcap"
        wrpcap(str(pcap), [udp(turn, client, alloc), inner, inner])
        rec = CaseResult(case, expectation_of(topo, plan, case), chromium, callee, (ra.id, rb.id), route="relay")
        runner.attach_evidence(pcap, topo, plan, [rec])
        rec.judge(capture=True)
        verdicts.append(rec)
    good, bad = verdicts
    assert good.evidence and good.evidence.consistent and good.evidence.route == "relay" and good.passed
    assert f"{client[0]}:{client[1]}" in good.evidence.detail
    assert bad.evidence and not bad.evidence.consistent and bad.evidence.route == "none" and not bad.passed
    result = LabResult("t", "natkit", [good, bad], [], 1.0, {}, browser=True)
    data = result.to_json()
    assert result.exit_code == 1 and len(data["cases"]) == 2 and len(data["browser_cases"]) == 2
    assert data["cases"][0]["caller_report"] == report_ and data["cases"][0]["index"] == 0
    assert data["browser_cases"][0]["browser"] == report_ and data["browser_cases"][0]["caller_stack"] == "chromium"
    out = io.StringIO()
    report.render(data, out)
    assert "evidence agrees: 2 DTLS records inside TURN" in out.getvalue()
    assert "BAD symmetric -> full-cone relay" in out.getvalue()
    assert "evidence CONTRADICTS getStats: 0 DTLS records inside TURN" in out.getvalue()


# -- as root -----------------------------------------------------------------------------------


@pytest.mark.root
@needs_root
@pytest.mark.timeout(DEFAULT_RUN_TEST_TIMEOUT)
def test_the_aiortc_matrix_end_to_end(default_run: LabRun) -> None:
    """The aiortc x aiortc matrix of the session's default run (tests/lab/conftest.py), looked
    at on four NAT pairs that have every kind of outcome: direct (hole punching with
    peer-reflexive learning), no direct path (symmetric x port-restricted), relay over UDP,
    TCP (the UDP-blocking firewall) and TLS, LAN and hairpin; its JSON, its text, and nothing
    of the run left behind."""
    proc, data = default_run.proc, default_run.data
    assert proc.returncode == 0, default_run.explain()
    assert data["pass"] is True and data["duration_s"] < default_run.took
    assert set(data) >= {"cases", "probes", "pass", "duration_s"}
    pairs = {("full-cone", "symmetric"), ("port-restricted", "symmetric"), ("open", "udp-blocked"), ("same-lan", "same-lan")}
    mine = [c for c in data["cases"] if (c["caller_stack"], c["callee_stack"]) == ("aiortc", "aiortc")]
    by = {(tuple(c["nats"]), c["path"]): c for c in mine if tuple(c["nats"]) in pairs}
    assert len(by) == 16  # 4 pairs x host, srflx, relay, relay-tls (TURN/TLS on 443)
    assert [c["id"] for c in mine if c["expected"] != c["observed"]] == []
    for c in by.values():
        assert set(c) >= {"nats", "path", "expected", "observed", "selected", "t_connect_ms", "rtt_ms", "evidence"}
        assert c["expected"] == c["observed"], c
        if c["observed"] == "connected":
            assert c["evidence"]["consistent"], c["evidence"]
            assert c["rtt_ms"] is not None and c["t_connect_ms"] is not None
    assert by[(("full-cone", "symmetric"), "srflx")]["observed"] == "connected"
    assert by[(("full-cone", "symmetric"), "srflx")]["evidence"]["route"] == "direct"
    assert by[(("port-restricted", "symmetric"), "srflx")]["observed"] == "failed"
    relay = by[(("open", "udp-blocked"), "relay")]
    assert relay["observed"] == "connected" and relay["evidence"]["route"] == "relay"
    tcp = relay["callee_selected"]["local"]
    assert tcp["type"] == "relay" and tcp["relay_transport"] == "tcp"
    tls = by[(("open", "udp-blocked"), "relay-tls")]
    assert tls["observed"] == "connected" and tls["evidence"]["route"] == "relay", tls
    assert tls["selected"]["local"]["relay_transport"] == "tls" and tls["family"] == "ipv4"
    assert by[(("same-lan", "same-lan"), "host")]["route"] == "lan"
    assert by[(("same-lan", "same-lan"), "host")]["evidence"]["route"] == "none"
    assert by[(("same-lan", "same-lan"), "srflx")]["route"] == "hairpin"
    probes = {p["nat"]: p for p in data["probes"]}
    assert set(probes) >= {"full-cone", "port-restricted", "symmetric", "open", "udp-blocked", "same-lan"}
    assert all(p["pass"] for p in probes.values())
    assert probes["symmetric"]["observed"]["mapping"] == "address-and-port-dependent"
    # The grid and the summary are on stdout; nothing of the run is left behind.
    n = len(data["cases"])
    assert "srflx" in proc.stdout and "relay-tls" in proc.stdout and f"PASS: {n} cases" in proc.stdout
    tag = re.search(r"building \d+ routers \((nk[0-9a-f]{6})\)", proc.stderr)
    assert tag is not None, proc.stderr
    assert not _namespaces(tag.group(1))


@pytest.mark.root
@needs_root
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_browser_cases_carry_packet_evidence_that_agrees_with_getstats(tmp_path: Path) -> None:
    out, page = tmp_path / "lab.json", tmp_path / "lab.html"
    proc = subprocess.run(
        [*NATKIT, "lab", "run", "--stacks", "aiortc", "--browser", "--only", "symmetric,full-cone", "--deadline", "6",
         "--json", str(out), "--html", str(page)],
        capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["pass"] is True and len([c for c in data["cases"] if c["caller_stack"] == "aiortc"]) == 12  # 3 pairs x 4 paths
    assert len(data["cases"]) == 16 and len(data["browser_cases"]) == 4
    publics = {}  # NAT name -> its routers' public addresses
    for r in data["lab"]["routers"]:
        publics.setdefault(r["nat"], set()).add(r["public_ip"])
    by = {(tuple(c["nats"]), c["path"]): c for c in data["browser_cases"]}
    assert set(by) == {(("symmetric", "full-cone"), p) for p in ("srflx", "relay")} | {
        (("full-cone", "full-cone"), p) for p in ("srflx", "relay")
    }
    for (nats, path), c in by.items():
        assert not [k for k in c if k.startswith("_")], c.keys()
        assert c["observed"] == "connected" and c["pass"], c
        ev, local, remote = c["evidence"], c["selected"]["local"], c["selected"]["remote"]
        assert ev is not None and ev["consistent"] and ev["packets"] > 0, ev
        # The packets show the route Chromium's getStats claims, between the addresses it names.
        assert ev["claimed"] == ev["route"] == c["route"] == ("relay" if path == "relay" else "direct"), ev
        if path == "relay":
            assert local["type"] == "relay" and f"gave {local['address']}:{local['port']} to " in ev["detail"]
            client = re.search(r"between ([\d.]+):\d+ and ", ev["detail"])
            assert client is not None and client.group(1) in publics[nats[0]], (ev, publics)
        else:
            assert local["address"] in publics[nats[0]], local  # srflx or prflx: Chromium's NAT
            assert f"{local['address']}:{local['port']}" in ev["detail"], (ev, local)
            assert f"{remote['address']}:{remote['port']}" in ev["detail"], (ev, remote)
    assert proc.stdout.count("evidence agrees: ") == 4, proc.stdout
    html = page.read_text()
    assert "packet evidence</th>" in html and html.count("agrees: ") >= 4


@pytest.mark.root
@needs_root
def test_cleanup_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    topo = load()
    seen: dict[str, Any] = {}

    async def broken(*args: Any, **kwargs: Any) -> Any:
        assert set(args[3]) == {"srv", "open-1-p1", "symmetric-1-p1"}  # the agents' sockets
        seen["pids"] = _pids_in(seen["tag"])
        seen["ns"] = _namespaces(seen["tag"])
        raise RuntimeError("boom in the middle of a run")

    def progress(kind: str, info: dict[str, Any]) -> None:
        seen.setdefault("tag", info.get("tag"))

    monkeypatch.setattr(runner, "orchestrate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run(topo, cases=runner.select_cases(topo, ["symmetric:open"]), progress=progress)
    assert len(seen["ns"]) >= 6 and len(seen["pids"]) >= 4  # inet, srv, two routers, two peers; agents, dumpcap
    assert not _namespaces(seen["tag"])
    for pid in seen["pids"]:  # the agents were reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.root
@needs_root
def test_cleanup_after_kill_9(tmp_path: Path) -> None:
    from natkit.lab.netns import STATE_DIR

    known = set(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else set()
    proc = subprocess.Popen(
        [*NATKIT, "lab", "run", "--stacks", "aiortc", "--only", "symmetric:open", "--deadline", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    tag = None
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and tag is None:
            for path in set(STATE_DIR.glob("nk*.json")) - known:
                try:
                    state = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if state.get("pid") == proc.pid:
                    tag = path.stem
            time.sleep(0.05)
        assert tag is not None, "the run never recorded its state"
        # Wait until the peers' agents run inside the namespaces, then kill the run outright.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            pids = _pids_in(tag)
            if len(pids) >= 4:  # dumpcap, the servers' agent, two peers' agents
                break
            time.sleep(0.05)
        assert _namespaces(tag)
        scratch = list(Path(tempfile.gettempdir()).glob(f"natkit-lab-{tag}-*"))
        assert scratch, "the run's scratch directory (packet capture) is named after its tag"
        # the servers' TLS certificate and key are written inside it, not beside it in /tmp
        end = time.monotonic() + 30
        while time.monotonic() < end and not any(p.glob("natkit-lab-tls-*/key.pem") for p in scratch):
            time.sleep(0.05)
        assert any(p.glob("natkit-lab-tls-*/key.pem") for p in scratch), [list(p.iterdir()) for p in scratch]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # The agents die with their parent (PR_SET_PDEATHSIG), whoever cleans the namespaces.
    end = time.monotonic() + 10
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]
    # The namespaces stay until `natkit lab clean` (or the next run: another test running at
    # the same time may get there first).
    left = _namespaces(tag)
    clean = subprocess.run([*NATKIT, "lab", "clean"], capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stderr
    if left:
        assert tag in clean.stdout
    assert not _namespaces(tag)
    assert not (STATE_DIR / f"{tag}.json").exists()
    assert not [p for p in scratch if p.exists()], "the killed run's scratch directory is left"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pids_in(tag: str) -> list[int]:
    pids: list[int] = []
    for ns in _namespaces(tag):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    return pids




def test_render_draws_a_grid_per_path_and_names_mismatches() -> None:
    import io

    cases = []
    for path in ("host", "srflx"):
        for nats in (("a", "a"), ("a", "b"), ("b", "b")):
            c = _case("connected", "connected" if nats != ("b", "b") or path == "host" else "failed")
            c.update(nats=list(nats), path=path)
            c["pass"] = c["observed"] == c["expected"]
            cases.append(c)
    lan = {**_case("connected", "connected", route="lan"), "nats": ["l", "l"], "same_lan": True, "path": "host", "pass": True}
    lan["expected_route"] = "lan"
    cases.append(lan)
    probes = [{"nat": "a", "expected": {"nat_type": "udp-blocked"}, "observed": {"nat_type": "udp-blocked"}, "pass": True}]
    result = {"cases": cases, "probes": probes, "pass": False, "duration_s": 3.2, "turn_engine": "natkit", "errors": []}
    out = io.StringIO()
    report.render(result, out)
    text = out.getvalue()
    lines = text.splitlines()
    grid = lines[lines.index("  srflx") + 1 : lines.index("  srflx") + 4]
    assert grid[1].split() == ["a", "D", "D"]
    assert grid[2].split() == ["b", "!F"]
    assert "l (two peers, one LAN): L" in text
    assert "MISMATCH b x b srflx: expected connected via direct, observed failed" in text
    assert text.rstrip().splitlines()[-1].startswith("FAIL: 7 cases: 6 connected, 0 failed as expected, 1 unexpected;")
    assert "ran again" not in text  # no case needed a second attempt
    # a case that connected only on its second attempt is named with its first error
    cases[0].update(attempts=2, first_error="not connected within 10 s", caller_stack="pion", callee_stack="libnice")
    out = io.StringIO()
    report.render(result, out)
    text = out.getvalue()
    assert "1 cases expected to connect failed and ran again: 1 passed on the second attempt" in text
    assert "ok  a x a host [pion -> libnice]: first not connected within 10 s" in text
    # ... and with the browser it started again before that attempt
    cases[0]["restarted"] = ["firefox in a-1-p1 started again (2.5 s) before this attempt: it gathered none"]
    out = io.StringIO()
    report.render(result, out)
    assert "first not connected within 10 s; firefox in a-1-p1 started again (2.5 s)" in out.getvalue()


@pytest.mark.root
@needs_root
def test_ctrl_c_tears_everything_down() -> None:
    proc = subprocess.Popen(
        [*NATKIT, "lab", "run", "--stacks", "aiortc", "--only", "symmetric:port-restricted", "--deadline", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    tag = None
    end = time.monotonic() + 30
    while time.monotonic() < end and tag is None:  # until the cases run
        line = proc.stderr.readline()
        m = re.search(r"\((nk[0-9a-f]{6})\)", line)
        if m:
            tag = m.group(1)
    assert tag is not None
    while time.monotonic() < end and len(_pids_in(tag)) < 4:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not _namespaces(tag)


@pytest.mark.root
@needs_root
@pytest.mark.coturn
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn's turnserver")
def test_relay_column_with_coturn_as_the_relay(tmp_path: Path) -> None:
    out = tmp_path / "lab.json"
    proc = subprocess.run(
        [*NATKIT, "lab", "run", "--stacks", "aiortc", "--turn-engine", "coturn", "--only", "relay",
         "--only", "udp-blocked:open,symmetric:symmetric", "--json", str(out)],
        capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["turn_engine"] == "coturn" and data["pass"]
    assert [c["observed"] for c in data["cases"]] == ["connected", "connected"]
    assert all(c["evidence"]["route"] == "relay" for c in data["cases"])


@pytest.mark.root
@needs_root
@pytest.mark.coturn
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn's turnserver")
def test_the_servers_stop_cleanly_before_the_namespaces_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from natkit.server import coturn

    record = tmp_path / "workdirs"
    spawn = coturn.CoturnServer._spawn

    def recording_spawn(self: coturn.CoturnServer) -> None:  # runs in the forked servers' agent
        spawn(self)
        with open(record, "a") as fh:
            fh.write(f"{self.workdir}\n")

    monkeypatch.setattr(coturn.CoturnServer, "_spawn", recording_spawn)
    topo = load()
    result = runner.run(topo, cases=runner.select_cases(topo, ["relay", "open:open"]), turn_engine="coturn", capture=False)
    assert result.passed, (result.errors, result.cases)
    workdirs = record.read_text().split()
    assert len(workdirs) == 1
    assert not Path(workdirs[0]).exists()  # coturn stopped and removed its files (not killed)
