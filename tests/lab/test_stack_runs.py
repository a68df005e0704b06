"""`natkit lab run` with several stacks, as root: shards merged equal the unsharded run's cells;
`--peer` commands behind the NATs (the reference peer, and peers that misbehave: each case
fails with a clear error and the run ends); `--stacks` errors; a Go peer written from the
contract; the default run. Each run is the session's, from tests/lab/conftest.py: started in the
background when the session starts, read here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from natkit.lab.matrix import BUILTIN
from tests.lab.background import QUEUE_WAIT_S
from tests.lab.conftest import (
    DEFAULT_RUN_TEST_TIMEOUT,
    GO_PEER_RUN_TIMEOUT,
    STACK_RUN_TIMEOUT,
    LabRun,
)

# A test here may wait for its run (tests/lab/conftest.py) behind others in the background.
pytestmark = [pytest.mark.timeout(240), pytest.mark.root]
RUN_TEST_TIMEOUT = 3 * STACK_RUN_TIMEOUT + 60 + QUEUE_WAIT_S

needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("dumpcap") is None,
    reason="needs root on Linux (namespaces, nftables) and dumpcap",
)
NATKIT = [sys.executable, "-m", "natkit"]


def _cells(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(c["index"], c["caller_stack"], c["callee_stack"], tuple(c["nats"]), c["path"], c["same_lan"],
             c["expected"], c["observed"], c["expected_route"], c["route"], c["reason"], c["pass"]) for c in data["cases"]]


@needs_root
@pytest.mark.timeout(RUN_TEST_TIMEOUT)
def test_a_merge_of_shards_equals_the_unsharded_run(tmp_path: Path, shard_runs: dict[str, LabRun]) -> None:
    """The small aiortc x pion plan whole and in two shards (tests/lab/conftest.py), merged."""
    whole_proc, whole = shard_runs["whole"].proc, shard_runs["whole"].data
    assert whole_proc.returncode == 0, shard_runs["whole"].explain()
    shards = []
    for k in (1, 2):
        run = shard_runs[f"s{k}"]
        proc, data = run.proc, run.data
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert data["shard"] == {"index": k, "count": 2} and data["plan"]["id"] == whole["plan"]["id"]
        assert 0 < len(data["cases"]) < len(whole["cases"])
        shards.append(str(run.json_path))
    stacks = {(c["caller_stack"], c["callee_stack"]) for c in whole["cases"]}
    assert stacks == {("aiortc", "aiortc"), ("aiortc", "pion"), ("pion", "aiortc"), ("pion", "pion")}, stacks
    assert {c["observed"] for c in whole["cases"]} == {"connected", "failed"}
    merged_file = tmp_path / "merged.json"
    proc = subprocess.run([*NATKIT, "lab", "merge", *shards, "--json", str(merged_file), "--html", str(tmp_path / "m.html")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    merged = json.loads(merged_file.read_text())
    assert _cells(merged) == _cells(whole)
    assert merged["pass"] is whole["pass"] is True
    assert {p["nat"] for p in merged["probes"]} == {p["nat"] for p in whole["probes"]}
    assert merged["stack_pairs"] == whole["stack_pairs"]
    # every case names both stacks and carries both sides' reports; pion's is its program's
    pion = [c for c in whole["cases"] if "pion" in (c["caller_stack"], c["callee_stack"])]
    assert pion and all(c["caller_report"] or c["callee_report"] for c in pion)
    up = [c for c in pion if c["observed"] == "connected"]
    assert up and all(c["selected"] and c["callee_selected"] and c["rtt_ms"] and c["evidence"]["consistent"] for c in up)


@needs_root
@pytest.mark.timeout(RUN_TEST_TIMEOUT)
def test_peer_commands_behind_every_nat_and_peers_that_misbehave(peer_commands_run: LabRun) -> None:
    """The reference peer connects where the NATs say; a peer that exits at once, hangs, or
    prints garbage fails each of its cases with one clear line, and the run still ends
    (the run: tests/lab/conftest.py; ``took`` is the run's own time)."""
    proc, data, took = peer_commands_run.proc, peer_commands_run.data, peer_commands_run.took
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert took < 120, took
    by: dict[str, list[dict[str, Any]]] = {}
    for c in data["cases"]:
        for side in ("caller", "callee"):
            by.setdefault(c[f"{side}_stack"], []).append({**c, "_side": side})
    ref = [c for c in data["cases"] if "ref" in (c["caller_stack"], c["callee_stack"])
           and not {"dies", "hangs", "garbage"} & {c["caller_stack"], c["callee_stack"]}]
    assert ref and all(c["pass"] for c in ref), [(c["id"], c["error"]) for c in ref if not c["pass"]]
    assert any(c["observed"] == "connected" for c in ref)
    for c in ref:  # the reference peer reports its pair and its own version
        for side in ("caller", "callee"):
            if c[f"{side}_stack"] == "ref" and c["observed"] == "connected":
                report = c[f"{side}_report"]
                assert report["exit_status"] == 0 and report["result"]["natkit_peer"] == 1
                assert c["selected" if side == "caller" else "callee_selected"]["local"]["type"] in ("srflx", "host", "prflx")
        assert "nothing is known of ref" in c["reason"]

    def errors(name: str) -> set[str]:
        return {str(c[f"{c['_side']}_error"]) for c in by[name]}

    assert all(c["observed"] == "failed" for n in ("dies", "hangs", "garbage") for c in by[n])
    assert all(e.startswith("peer error: exit status 3") and "dying" in e for e in errors("dies")), errors("dies")
    assert all("peer did not exit by its deadline" in e for e in errors("hangs")), errors("hangs")
    assert all(e.startswith("not connected (exit status 1)") for e in errors("garbage")), errors("garbage")
    notes = [c[f"{c['_side']}_report"]["notes"] for c in by["garbage"]]
    assert all(any("not JSON" in n for n in ns) for ns in notes), notes
    assert "MISMATCH" in proc.stdout and "stacks (rows" in proc.stdout


@needs_root
def test_stack_and_peer_errors_are_one_line(tmp_path: Path) -> None:
    for args, what in (
        (["--stacks", "aiortc,nope"], "nope: not a stack"),
        (["--peer", "pion=true"], "built-in stack"),
        (["--peer", "mine=/no/such/program"], "not an executable file"),
        (["--peer", "mine=true", "--stacks", "aiortc,pion"], "--stacks: peer mine is not among the stacks"),
        (["--shard", "3/2"], "K must be 1..N"),
        (["--stacks", "aiortc,pion", "--with", "libnice"], "--with: libnice is not among the run's stacks (aiortc,pion)"),
        (["--stacks", "aiortc,pion", "--only", "longevity", "--with", "pion"], "--with: no case of the plan has pion"),
    ):
        proc = subprocess.run([*NATKIT, "lab", "run", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and what in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert proc.stderr.count("--peer") <= 1, proc.stderr  # the flag named once, by the CLI


@needs_root
@pytest.mark.timeout(600 + GO_PEER_RUN_TIMEOUT + QUEUE_WAIT_S)  # the build's budget, the run's, the queue
def test_a_go_peer_written_from_the_contract_alone_behind_every_nat(go_peer_run: LabRun) -> None:
    """examples/lab-peer-go (pion, written from docs/lab-peers.md) as --peer: as caller and as
    callee behind every NAT, against aiortc and itself, with what it declares (--peer-caps):
    TURN over TLS trusting the lab CA, idling on the longevity path; every case as expected.
    (``--with gopeer``: the cross product's cases of aiortc with itself say nothing of the peer.)
    (The longevity case idles past port-restricted's 20 s lifetime, so the lifetime
    measurement runs alongside and costs nothing extra.)"""
    proc, data = go_peer_run.proc, go_peer_run.data  # built and run in tests/lab/conftest.py
    mine = [c for c in data.get("cases", []) if "gopeer" in (c["caller_stack"], c["callee_stack"])]
    assert mine, proc.stdout[-2000:] + proc.stderr[-2000:]
    bad = [(c["id"], c["caller_error"], c["callee_error"]) for c in mine if not c["pass"]]
    assert not bad and proc.returncode == 0, bad
    nats = {c["nats"][i] for c in mine for i in (0, 1) if (c["caller_stack"], c["callee_stack"])[i] == "gopeer"}
    assert nats >= {n for n in ("open", "full-cone", "restricted-cone", "port-restricted", "symmetric", "udp-blocked")}
    up = [c for c in mine if c["observed"] == "connected"]
    assert {c["path"] for c in up} == {"srflx", "relay", "relay-tls", "longevity"}
    assert all("nothing is known" not in c["reason"] for c in mine)  # derived from --peer-caps
    for c in up:
        side = "caller" if c["caller_stack"] == "gopeer" else "callee"
        report = c[f"{side}_report"]
        assert report["result"]["stack"].startswith("go-peer") and report["exit_status"] == 0
        sel = c["selected" if side == "caller" else "callee_selected"]
        assert sel["local"]["type"] in ("host", "srflx", "prflx", "relay")
        if c["path"] == "relay" and side == "caller":
            assert sel["local"]["type"] == "relay" and sel["local"].get("relay_protocol") in ("udp", "tcp")
        if c["path"] == "relay-tls" and side == "caller":
            assert sel["local"]["type"] == "relay" and sel["local"].get("relay_protocol") == "tls"


@needs_root
@pytest.mark.timeout(DEFAULT_RUN_TEST_TIMEOUT)
def test_the_default_run_has_every_stack_as_caller_and_callee(default_run: LabRun) -> None:
    """`natkit lab run` as a new user runs it: every built-in stack, as caller and as callee,
    with connected srflx and relay cases, every case as expected, the reports both written."""
    proc, data, page = default_run.proc, default_run.data, default_run.html_path
    bad = [(c["id"], c["caller_error"], c["callee_error"]) for c in data.get("cases", []) if not c["pass"]]
    assert proc.returncode == 0 and not bad, (bad, proc.stdout[-2000:], proc.stderr[-2000:])
    assert data["plan"]["kind"] == "default" and set(data["plan"]["stacks"]) == set(BUILTIN)
    assert data["plan"]["skipped"] == []  # bootstrap installs every stack
    for name in BUILTIN:
        for side in ("caller", "callee"):
            mine = [c for c in data["cases"] if c[f"{side}_stack"] == name and c["observed"] == "connected"]
            assert {"srflx", "relay"} <= {c["path"] for c in mine}, (name, side)
    # expectations the stacks decide, with their reasons
    dtls = [c for c in data["cases"] if c["caller_stack"] == "libnice" and c["callee_stack"] == "aiortc"
            and c["decided_by"] == "stacks"]
    assert dtls and all("no shared cipher" in c["reason"] for c in dtls if "DTLS" in c["reason"])
    assert any("RFC 8445" in c["reason"] for c in data["cases"] if c["callee_stack"] == "firefox")
    assert {r["caller_stack"] for r in data["stack_pairs"]} == set(BUILTIN) and all(r["pass"] for r in data["stack_pairs"])
    html = page.read_text()
    assert 'id="stacks"' in html and 'id="pair-libnice--aiortc"' in html
    assert "stacks (rows" in proc.stdout
    print(f"\ndefault run: {len(data['cases'])} cases in {default_run.took:.1f} s ({data['timings']})")
